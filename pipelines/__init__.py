"""Apache Beam pipelines that turn Ali-CCP logs into TFRecords."""

import escm2_tf  # noqa: F401  Selects tf-keras before TensorFlow loads.
