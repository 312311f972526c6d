"""Tests for escm2_tf.console: quiet logs, interruptible, the interrupt check."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import signal
import subprocess
import sys

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import tf_keras as keras

import testing

from escm2_tf import console


def _swallowed_ctrl_c() -> None:
  """Ctrl-C landing where the exception is ignored, as in a ``__del__``."""
  try:
    # raise_signal runs the Python handler before it returns.
    signal.raise_signal(signal.SIGINT)
  except KeyboardInterrupt:
    pass


_LOG_SCRIPT = """
import logging
import escm2_tf
from escm2_tf import console
logging.basicConfig(format="%(name)s: %(message)s")
console.configure({verbosity})
for name in ("matplotlib.font_manager", "tensorflow", "escm2_tf.study"):
  logging.getLogger(name).warning("a warning")
logging.getLogger("matplotlib").error("an error")
"""


class ConfigureTest(parameterized.TestCase):

  @parameterized.parameters(
      (0, ["escm2_tf.study: a warning", "matplotlib: an error"]),
      (1, ["matplotlib.font_manager: a warning", "tensorflow: a warning",
           "escm2_tf.study: a warning", "matplotlib: an error"]))
  def test_libraries_warnings_hidden_when_quiet(self, verbosity, printed):
    result = subprocess.run(
        [sys.executable, "-c", _LOG_SCRIPT.format(verbosity=verbosity)],
        capture_output=True, text=True, check=True,
        timeout=testing.SUBPROCESS_TIMEOUT_S)
    self.assertEqual(result.stderr.splitlines(), printed)


class InterruptibleTest(parameterized.TestCase):

  def test_check_raises_the_interrupt_a_library_swallowed(self):
    before = signal.getsignal(signal.SIGINT)
    with console.interruptible() as check:
      check()  # Nothing pressed yet.
      _swallowed_ctrl_c()
      with self.assertRaises(KeyboardInterrupt):
        check()
    self.assertIs(signal.getsignal(signal.SIGINT), before)

  @parameterized.parameters(True, False)
  def test_training_ends_at_the_next_step_after_a_swallowed_ctrl_c(
      self, every_batch):
    model = keras.Sequential([keras.layers.Dense(1, input_shape=(2,))])
    model.compile(optimizer="sgd", loss="mse")
    epochs = []

    class SwallowsAtFirstEpochEnd(keras.callbacks.Callback):

      def on_epoch_begin(self, epoch, logs=None):
        epochs.append(epoch)

      def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
          _swallowed_ctrl_c()

    with self.assertRaises(KeyboardInterrupt):
      with console.interruptible() as check:
        model.fit(np.zeros((8, 2)), np.zeros((8, 1)), epochs=1000,
                  batch_size=4, verbose=0,
                  callbacks=[SwallowsAtFirstEpochEnd(),
                             console.interrupt_callback(
                                 check, every_batch)])
    self.assertEqual(epochs, [0])


if __name__ == "__main__":
  absltest.main()
