"""Ali-CCP's text formats (``aliccp``) and tf.Example encoding (``examples``)."""
