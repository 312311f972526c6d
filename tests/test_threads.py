"""Tests of escm2_tf.threads, escm2-train's ``--thread_spinning`` and
``--intra_op_threads``.

The settings belong to the process and are read when TensorFlow's runtime
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

# Sets the intra-op pool's size (argv[1]), after starting the runtime if
# argv[2] says so, and prints what it returned and the size the runtime holds.
_INTRA_OP = """
import json, sys
import escm2_tf
from escm2_tf import threads
import tensorflow as tf
if sys.argv[2] == "true":
  tf.constant(1.0) + 1.0
applied = threads.set_intra_op_threads(int(sys.argv[1]))
tf.constant(1.0) + 1.0
print(json.dumps({
    "applied": applied, "default": threads.default_intra_op_threads(),
    "threads": tf.config.threading.get_intra_op_parallelism_threads()}))
"""

# Runs escm2-train's opening and body on the tiny data, then prints whether
# the process's threads spin and the intra-op pool's size.
_TRAIN = """
import json, sys
sys.path.insert(0, sys.argv[1])
import testing
from escm2_tf import threads
from escm2_tf.cli import train as train_cli
import tensorflow as tf
data = json.loads(sys.argv[2])
flags = dict(train_data=data["train"], eval_data=data["test"],
             vocab_dir=data["vocab_dir"], model_dir=sys.argv[3], epochs=1,
             batch_size=256, embedding_dim=4, num_experts=2,
             expert_units=["8"], tower_units=["4"], verbose=0, min_count=1,
             deterministic=False, **json.loads(sys.argv[4]))
status, _, stderr = testing.run_main(train_cli.TOOL, **flags)
print(json.dumps({"status": status, "stderr": stderr[-2000:],
                  "spinning": threads.thread_spinning(),
                  "intra_op_threads":
                      tf.config.threading.get_intra_op_parallelism_threads()}))
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


class SetIntraOpThreadsTest(absltest.TestCase):

  def _run(self, count: int, start_first: bool) -> dict:
    return _last_json(testing.run_subprocess(testing.python_command(
        _INTRA_OP, str(count), str(start_first).lower())))

  def test_default_is_half_the_cores(self):
    cores = len(os.sched_getaffinity(0))
    result = self._run(0, start_first=False)
    self.assertEqual(result, {"applied": True, "default": max(1, cores // 2),
                              "threads": max(1, cores // 2)})

  def test_a_count_before_the_runtime_starts_holds_after(self):
    self.assertEqual(self._run(3, start_first=False)["threads"], 3)

  def test_too_late_keeps_the_runtime_size(self):
    result = self._run(3, start_first=True)
    self.assertFalse(result["applied"])
    self.assertEqual(result["threads"], 0)


class TrainThreadsTest(absltest.TestCase):
  """escm2-train sets them before anything starts TensorFlow's runtime."""

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

  def test_spinning_is_off_by_default(self):
    self.assertFalse(self._train()["spinning"])

  def test_spinning_flag_turns_it_on(self):
    self.assertTrue(self._train(thread_spinning=True)["spinning"])

  def test_intra_op_pool_is_half_the_cores_by_default(self):
    cores = len(os.sched_getaffinity(0))
    self.assertEqual(self._train()["intra_op_threads"], max(1, cores // 2))

  def test_intra_op_flag_sizes_the_pool(self):
    self.assertEqual(self._train(intra_op_threads=3)["intra_op_threads"], 3)


if __name__ == "__main__":
  absltest.main()
