"""Ali-CCP's text formats and tf.Example encoding.

``aliccp`` (the raw Tianchi release) and ``paddlerec`` (PaddleRec's text
format) parse and write the text; ``examples`` is the tf.Example encoding.
"""
