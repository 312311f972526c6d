"""Tests of escm2_tf.threads and of escm2-train's ``--thread_spinning``.

The setting belongs to the process and is read when TensorFlow's runtime
starts, so every case runs in a fresh interpreter.
"""

import json
import os

from absl.testing import absltest

import datasets
import testing

# Prints what the setting was before the runtime started, what setting it
# returned, and what the runtime holds after running an op.
_BEFORE_AND_AFTER = """
import json, sys
import escm2_tf
from escm2_tf import threads
import tensorflow as tf
from tensorflow.python.eager import context
spinning = sys.argv[1] == "true"
start_first = sys.argv[2] == "true"
before = threads.thread_spinning()
if start_first:
  tf.constant(1.0) + 1.0
applied = threads.set_thread_spinning(spinning)
tf.constant(1.0) + 1.0
print(json.dumps({
    "before": before, "applied": applied,
    "spinning": threads.thread_spinning(),
    "initialized": context.context()._initialized}))
"""

# Runs escm2-train's opening and body on the tiny data, then prints whether
# the process's threads spin.
_TRAIN = """
import json, sys
sys.path.insert(0, sys.argv[1])
import testing
from escm2_tf import threads
from escm2_tf.cli import train as train_cli
data = json.loads(sys.argv[2])
flags = dict(train_data=data["train"], eval_data=data["test"],
             vocab_dir=data["vocab_dir"], model_dir=sys.argv[3], epochs=1,
             batch_size=256, embedding_dim=4, num_experts=2,
             expert_units=["8"], tower_units=["4"], verbose=0, min_count=1,
             deterministic=False, **json.loads(sys.argv[4]))
status, _, stderr = testing.run_main(train_cli.TOOL, **flags)
print(json.dumps({"status": status, "stderr": stderr[-2000:],
                  "spinning": threads.thread_spinning()}))
"""


def _last_json(result) -> dict:
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


class SetThreadSpinningTest(absltest.TestCase):

  def _run(self, spinning: bool, start_first: bool) -> dict:
    return _last_json(testing.run_subprocess(testing.python_command(
        _BEFORE_AND_AFTER, str(spinning).lower(), str(start_first).lower())))

  def test_off_before_the_runtime_starts_holds_after(self):
    result = self._run(spinning=False, start_first=False)
    self.assertEqual(result, {"before": True, "applied": True,
                              "spinning": False, "initialized": True})

  def test_too_late_keeps_the_runtime_setting(self):
    result = self._run(spinning=False, start_first=True)
    self.assertEqual(result, {"before": True, "applied": False,
                              "spinning": True, "initialized": True})

  def test_asking_for_the_current_setting_is_no_change(self):
    result = self._run(spinning=True, start_first=True)
    self.assertEqual(result, {"before": True, "applied": True,
                              "spinning": True, "initialized": True})


class TrainThreadSpinningTest(absltest.TestCase):
  """escm2-train sets it before anything starts TensorFlow's runtime."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = datasets.make_synthetic_data(testing.new_dir(), num_train=600,
                                            num_test=200)

  def _train(self, **flags) -> dict:
    result = _last_json(testing.run_subprocess(testing.python_command(
        _TRAIN, os.path.dirname(os.path.abspath(__file__)),
        json.dumps(self.data), testing.new_dir(), json.dumps(flags))))
    self.assertEqual(result["status"], 0, result["stderr"])
    return result

  def test_default_is_off(self):
    self.assertFalse(self._train()["spinning"])

  def test_flag_turns_it_on(self):
    self.assertTrue(self._train(thread_spinning=True)["spinning"])


if __name__ == "__main__":
  absltest.main()
