"""Calibration in the large: one logit shift per tower, fitted after training.

At a stationary point of the training loss the CTR tower's mean prediction
equals the click rate, because the output bias's gradient is mean(p - y).
Early-stopped runs never get there: Adam moves an output bias whose batch
gradient is mostly noise by a fraction of the learning rate per step (at
most 0.02 of a logit per epoch measured), while the sparse id embeddings and
the hidden layers move the mean logit by more, upwards or downwards with
the data and the seed; the mean prediction of the epoch early stopping keeps
is then off (pCTR by 3-9 %, pCVR on clicks by up to 52 % on simulated
worlds), on the training data as much as on held-out data
(docs/training.md).

``recalibrate`` closes that gap after training, in the weights: it adds to
each output bias the shift s that makes the mean of sigmoid(logit + s)

- over held-out impressions equal the training data's click rate (CTR);
- over the held-out clicked impressions equal the training data's
  conversions per click (CVR), whatever the estimator, so no estimator
  ends with a CVR tower that is low on clicks.

The predictions come from held-out data (free of the memorised training
examples); the rates from all the training labels (``base_rates``), ten times
as many as a held-out tenth holds. The imputation towers are left alone. The
shift is part of the weights, so checkpoints, exports and serving see it.

    rates = base_rates.read_base_rates(layout.stats_beside(vocab_dir))
    shifts = recalibration.recalibrate(model, validation_dataset, rates)
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

from typing import Iterable

import numpy as np
import tensorflow as tf
import tf_keras as keras

from escm2_tf import base_rates as base_rates_lib
from escm2_tf import schema

# The layer whose output biases are shifted (model.build_network names it).
TOWERS_LAYER = "towers"
# Bisection on [-_MAX_SHIFT, _MAX_SHIFT] to 2 * _MAX_SHIFT / 2**_STEPS.
_MAX_SHIFT = 20.0
_STEPS = 64


def _sigmoid(values: np.ndarray) -> np.ndarray:
  return 0.5 * (1.0 + np.tanh(0.5 * values))


def logit_shift(logits: np.ndarray, rate: float) -> float:
  """The s with mean(sigmoid(logits + s)) = ``rate``.

  The mean is increasing in s, so bisection finds it; a shift beyond
  +-20 (the logits of another data set) is clipped there.

  Raises:
    ValueError: No logits, or a rate outside (0, 1).
  """
  logits = np.asarray(logits, np.float64)
  if not logits.size:
    raise ValueError("logit_shift needs at least one logit.")
  if not 0.0 < rate < 1.0:
    raise ValueError(f"logit_shift needs a rate in (0, 1), got {rate!r}.")
  low, high = -_MAX_SHIFT, _MAX_SHIFT
  for _ in range(_STEPS):
    middle = 0.5 * (low + high)
    if _sigmoid(logits + middle).mean() < rate:
      low = middle
    else:
      high = middle
  return 0.5 * (low + high)


def _logit_model(model: keras.Model) -> keras.Model:
  network = getattr(model, "network", model)
  return keras.Model(network.inputs,
                     network.get_layer(TOWERS_LAYER).output)


def held_out_logits(model: keras.Model, batches: Iterable
                    ) -> tuple[np.ndarray, np.ndarray]:
  """The CTR logits of every impression, the CVR logits of the clicked.

  CTR and CVR are every estimator's first two logits (task.tower_names).

  Args:
    model: An ``ESCM2Model`` (or its network).
    batches: (features, labels) batches, e.g. ``data.make_dataset(...,
      training=False)``.
  """
  logit_model = _logit_model(model)
  inputs = logit_model.input_names
  # Batches differ in their ragged shapes and the last in size.
  predict = tf.function(
      lambda features: logit_model(features, training=False),
      reduce_retracing=True)
  ctr, cvr = [], []
  for features, labels in batches:
    logits = predict({name: features[name] for name in inputs}).numpy()
    clicked = labels[schema.CLICK].numpy() > 0.5
    ctr.append(logits[:, 0])
    cvr.append(logits[clicked, 1])
  if not ctr:
    raise ValueError("recalibration got no held-out impressions.")
  return np.concatenate(ctr), np.concatenate(cvr)


def shift_output_biases(model: keras.Model, shifts: dict[str, float]
                        ) -> None:
  """Adds ``shifts["ctr"]`` and ``shifts["cvr"]`` to the output biases."""
  network = getattr(model, "network", model)
  bias = network.get_layer(TOWERS_LAYER).biases[-1]
  # CTR and CVR are every estimator's first two logits (task.tower_names).
  delta = np.zeros(bias.shape, np.float32)
  delta[0, 0], delta[1, 0] = shifts["ctr"], shifts["cvr"]
  bias.assign_add(delta)


def recalibrate(model: keras.Model, batches: Iterable,
                rates: base_rates_lib.BaseRates) -> dict[str, float]:
  """Fits the CTR and CVR logit shifts on ``batches`` and applies them.

  Args:
    model: The trained model; its output biases are changed in place.
    batches: Held-out (features, labels) batches.
    rates: The training data's click rate and conversions per click.

  Returns:
    ``{"ctr": s_ctr, "cvr": s_cvr}``, the shifts added. Without a held-out
    click the CVR shift is 0.
  """
  ctr_logits, cvr_logits = held_out_logits(model, batches)
  shifts = {"ctr": logit_shift(ctr_logits, rates.ctr),
            "cvr": (logit_shift(cvr_logits, rates.cvr) if cvr_logits.size
                    else 0.0)}
  shift_output_biases(model, shifts)
  return shifts
