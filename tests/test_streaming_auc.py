"""Tests of escm2_tf.streaming_auc against escm2_tf.metrics' exact AUCs."""

import escm2_tf  # pylint: disable=unused-import  # Legacy Keras before TF.

import math

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from escm2_tf import metrics
from escm2_tf import schema
from escm2_tf import streaming_auc


def random_log(rng, n, low, high):
  return np.exp(rng.uniform(math.log(low), math.log(high), n))


class TrainMetricsTest(tf.test.TestCase, parameterized.TestCase):

  def make_batches(self, seed, num_batches=4, batch_size=1000):
    """Batches of log-uniform small probabilities, as in Ali-CCP."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(num_batches):
      ctr = random_log(rng, batch_size, 1e-3, 0.5)
      cvr = random_log(rng, batch_size, 1e-4, 0.3)
      click = (rng.random(batch_size) < ctr).astype(np.float32)
      conversion = click * (rng.random(batch_size) < 2 * cvr)
      batches.append(({"click": click, "conversion": conversion},
                      {"ctr": ctr.astype(np.float32),
                       "cvr": cvr.astype(np.float32),
                       "ctcvr": (ctr * cvr).astype(np.float32)}))
    return batches

  def exact(self, batches, task):
    labels = {k: np.concatenate([b[0][k] for b in batches])
              for k in ("click", "conversion")}
    scores = np.concatenate([b[1][task] for b in batches])
    if task == "ctr":
      return metrics.exact_auc(labels["click"], scores)
    if task == "cvr":
      clicked = labels["click"] == 1
      return metrics.exact_auc(labels["conversion"][clicked], scores[clicked])
    return metrics.exact_auc(labels["click"] * labels["conversion"], scores)

  @parameterized.parameters(0, 1)
  def test_streaming_auc_approximates_exact(self, seed):
    batches = self.make_batches(seed)
    train_metrics = [streaming_auc.TaskAUC(name)
                     for name in schema.OUTPUT_NAMES]
    self.assertEqual([m.name for m in train_metrics],
                     ["auc_ctr", "auc_cvr", "auc_ctcvr"])
    for labels, outputs in batches:
      for metric in train_metrics:
        metric.update_state(labels, outputs)
    for metric in train_metrics:
      exact = self.exact(batches, metric.task)
      self.assertGreater(abs(exact - 0.5), 0.1, metric.name)
      self.assertAllClose(metric.result(), exact, atol=0.002, msg=metric.name)
    for metric in train_metrics:
      metric.reset_state()
      self.assertEqual(float(metric.result()), 0.0)

  def test_updates_under_xla(self):
    batches = self.make_batches(2, num_batches=1)
    metric = streaming_auc.TaskAUC("ctcvr")

    @tf.function(jit_compile=True)
    def update(labels, outputs):
      metric.update_state(labels, outputs)

    update(*batches[0])
    self.assertAllClose(metric.result(), self.exact(batches, "ctcvr"),
                        atol=0.002)

  def test_config_round_trip_and_bad_task(self):
    metric = streaming_auc.TaskAUC("cvr", num_thresholds=50)
    clone = streaming_auc.TaskAUC.from_config(metric.get_config())
    self.assertEqual((clone.task, clone.name, clone.num_thresholds),
                     ("cvr", "auc_cvr", 50))
    with self.assertRaisesRegex(ValueError, "task must be ctr, cvr or ctcvr"):
      streaming_auc.TaskAUC("imputation")


if __name__ == "__main__":
  absltest.main()
