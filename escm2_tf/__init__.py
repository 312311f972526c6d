"""escm2-tf: ESCM2 post-click conversion rate estimation in TensorFlow 2.

Importing this package selects legacy Keras 2 (``tf-keras``) for ``tf.keras``,
which TensorFlow Recommenders needs. The switch only works before TensorFlow is
first imported, so it happens here, before any submodule imports TensorFlow.
"""

import os
import sys

__version__ = "0.1.0"
# A log level the user chose; escm2_tf.console keeps it.
USER_TF_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "")


def _select_legacy_keras() -> None:
  """Sets TF_USE_LEGACY_KERAS=1, or explains why it is too late to."""
  if "tensorflow" not in sys.modules:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    # TensorFlow's INFO lines (oneDNN, CUDA probing) drown the CLIs' output.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    return
  if os.environ.get("TF_USE_LEGACY_KERAS") not in ("1", "true", "True"):
    raise ImportError(
        "escm2_tf needs legacy Keras 2 (tf-keras), but TensorFlow was imported "
        "before escm2_tf without TF_USE_LEGACY_KERAS=1, so tf.keras is Keras 3. "
        "Import escm2_tf before tensorflow, or set TF_USE_LEGACY_KERAS=1 in the "
        "environment before starting Python.")


_select_legacy_keras()
if os.environ.get("ESCM2_QUIET_TENSORFLOW") == "1":
  # A process a quiet tool started (escm2_tf.console.QUIET_ENV).
  from escm2_tf import console  # pylint: disable=g-import-not-at-top
  console.quiet_child()
