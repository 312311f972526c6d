"""The towers' output logits, as the recalibration reads and rewrites them.

``score`` runs a model's network over (features, labels) batches and keeps
every impression's tower logits, outputs and labels (``Scored``);
``logit_shift`` finds the shift of some logits that puts their mean
sigmoid at a rate; ``transform_logits`` turns a tower's output logit z into
slope * z + shift in the output layer's weights, so checkpoints, exports
and serving see it. Which slopes and shifts, ``recalibration`` and
``counterfactual_refit`` decide.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import dataclasses
from typing import Iterable

import numpy as np
import tensorflow as tf
import tf_keras as keras

from escm2_tf import schema

# The layer whose output biases are shifted (model.build_network names it).
TOWERS_LAYER = "towers"
# Bisection on [-_MAX_SHIFT, _MAX_SHIFT] to 2 * _MAX_SHIFT / 2**_STEPS.
_MAX_SHIFT = 20.0
_STEPS = 64


def sigmoid(values: np.ndarray) -> np.ndarray:
  """The logistic function of logits, as the recalibration computes it."""
  return 0.5 * (1.0 + np.tanh(0.5 * values))


def logit_shift(logits: np.ndarray, rate: float,
                weights: np.ndarray | None = None) -> float:
  """The s whose weighted mean of sigmoid(logits + s) is ``rate``.

  The mean is increasing in s, so bisection finds it; a shift beyond
  +-20 (the logits of another data set) is clipped there.

  Args:
    logits: The logits.
    rate: The target mean.
    weights: Non-negative weights of the logits (default: all 1).

  Raises:
    ValueError: No logit of positive weight, or a rate outside (0, 1).
  """
  logits = np.asarray(logits, np.float64)
  weights = (np.ones_like(logits) if weights is None
             else np.asarray(weights, np.float64))
  if not logits.size or not weights.sum() > 0.0:
    raise ValueError("logit_shift needs at least one logit of positive "
                     "weight.")
  if not 0.0 < rate < 1.0:
    raise ValueError(f"logit_shift needs a rate in (0, 1), got {rate!r}.")
  weights = weights / weights.sum()
  low, high = -_MAX_SHIFT, _MAX_SHIFT
  for _ in range(_STEPS):
    middle = 0.5 * (low + high)
    if np.dot(weights, sigmoid(logits + middle)) < rate:
      low = middle
    else:
      high = middle
  return 0.5 * (low + high)


@dataclasses.dataclass(frozen=True)
class Scored:
  """What a model gave every impression of some batches, and their labels.

  Attributes:
    logits: float32 [N, towers], the towers' logits (task.tower_names).
    outputs: The model's outputs (``ctr``, ``cvr``, ...), float32 [N] each.
    labels: The batches' labels (``click``, ``conversion``, ...), [N] each.
  """
  logits: np.ndarray
  outputs: dict[str, np.ndarray]
  labels: dict[str, np.ndarray]

  @property
  def clicked(self) -> np.ndarray:
    return self.labels[schema.CLICK] > 0.5


def score(model: keras.Model, batches: Iterable,
          max_impressions: int | None = None) -> Scored:
  """Runs the model's network over (features, labels) batches.

  Args:
    model: An ``ESCM2Model`` (or its network).
    batches: e.g. ``data.make_dataset(..., training=False)``.
    max_impressions: Stop after the batch that reaches this many.

  Raises:
    ValueError: The batches hold no impression.
  """
  network = getattr(model, "network", model)
  scorer = keras.Model(network.inputs,
                       [network.get_layer(TOWERS_LAYER).output,
                        network.output])
  inputs = scorer.input_names
  # Batches differ in their ragged shapes and the last in size.
  predict = tf.function(lambda features: scorer(features, training=False),
                        reduce_retracing=True, autograph=False)
  logits, outputs, labels = [], {}, {}
  for features, batch_labels in batches:
    batch_logits, batch_outputs = predict(
        {name: features[name] for name in inputs})
    logits.append(batch_logits.numpy())
    for values, batch in ((outputs, batch_outputs), (labels, batch_labels)):
      for key, value in batch.items():
        values.setdefault(key, []).append(np.reshape(value.numpy(), [-1]))
    if max_impressions and sum(map(len, logits)) >= max_impressions:
      break
  if not logits:
    raise ValueError("recalibration got no impressions.")
  return Scored(np.concatenate(logits),
                {key: np.concatenate(value) for key, value in outputs.items()},
                {key: np.concatenate(value) for key, value in labels.items()})


def transform_logits(model: keras.Model, tower: int, slope: float,
                     shift: float) -> None:
  """Turns a tower's output logit z into slope * z + shift, in the weights."""
  network = getattr(model, "network", model)
  towers = network.get_layer(TOWERS_LAYER)
  for variable, scale, offset in ((towers.kernels[-1], slope, 0.0),
                                  (towers.biases[-1], slope, shift)):
    values = variable.numpy()
    values[tower] = scale * values[tower] + offset
    variable.assign(values)
