"""Cheap streaming AUCs of the three tasks, for progress bars.

The task (``escm2_tf.task``) reports one ``TaskAUC`` per output. They are
bucketed approximations, good enough to watch training, not to report: final
numbers come from ``escm2_tf.metrics.evaluate_predictions`` and its exact,
tie-aware ``exact_auc``.
"""

import math
from typing import Mapping

import tensorflow as tf
import tf_keras as keras

from escm2_tf import schema

# TaskAUC buckets log(score) evenly over [log(_MIN_SCORE), 0].
_MIN_SCORE = 1e-7


class TaskAUC(keras.metrics.AUC):
  """Streaming ROC AUC of one task, updated from the labels and outputs dicts.

  A bucketed approximation for progress bars; report ``exact_auc`` instead.
  Plain evenly spaced thresholds would put every pCTCVR (about 1e-4) into the
  first bucket and read 0.5, so scores are bucketed on a log scale: AUC is
  invariant under the monotone map p -> log(p), which keeps Keras' fast
  evenly-spaced path (O(batch) per update) with a relative resolution of
  about 8 % per bucket at 200 thresholds. Scores below 1e-7 tie.

  Attributes:
    task: ``"ctr"`` (click), ``"cvr"`` (conversion on clicked impressions,
      through sample_weight = click) or ``"ctcvr"`` (click · conversion).
  """

  def __init__(self, task: str, num_thresholds: int = 200, **kwargs):
    if task not in schema.OUTPUT_NAMES:
      raise ValueError(f"TaskAUC task must be ctr, cvr or ctcvr; got {task!r}.")
    kwargs.setdefault("name", f"auc_{task}")
    super().__init__(num_thresholds=num_thresholds, **kwargs)
    self.task = task

  def update_state(self, labels: Mapping[str, tf.Tensor],
                   outputs: Mapping[str, tf.Tensor], sample_weight=None):
    """Updates from the dicts ``compute_losses`` takes; sample_weight unused."""
    del sample_weight  # The task fixes the weighting.
    click = tf.reshape(tf.cast(labels[schema.CLICK], tf.float32), [-1])
    conversion = tf.reshape(tf.cast(labels[schema.CONVERSION], tf.float32),
                            [-1])
    label, weight = {"ctr": (click, None), "cvr": (conversion, click),
                     "ctcvr": (click * conversion, None)}[self.task]
    score = tf.reshape(tf.cast(outputs[self.task], tf.float32), [-1])
    log_min = math.log(_MIN_SCORE)
    scaled = (tf.math.log(tf.maximum(score, _MIN_SCORE)) - log_min) / -log_min
    return super().update_state(label, tf.clip_by_value(scaled, 0.0, 1.0),
                                sample_weight=weight)

  def get_config(self):
    config = super().get_config()
    config["task"] = self.task
    return config
