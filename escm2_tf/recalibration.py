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

``recalibrate`` moves each output bias, after training and in the weights,
to the level the estimator's own risk has at its stationary point, measured
on held-out impressions (free of the memorised training examples) against
the training data's rates (``base_rates``, ten times as many labels as a
held-out tenth holds):

- CTR, every estimator: mean pCTR over the impressions = the click rate.
- CVR, ``naive`` (its risk is the clicked impressions' log loss): mean pCVR
  over the clicked impressions = conversions per click.
- CVR, ``esmm`` (the CTCVR log loss over every impression): mean
  pCTR * pCVR = conversions per impression, i.e. the pCTR-weighted mean
  pCVR = conversions per click.
- CVR, the counterfactual estimators (``ipw``, ``dr``, ``dr_jl``,
  ``mrdr``): not moved. Their risk's condition weighs each click by 1/ô, and
  on a held-out tenth that estimate of the entire-space rate is too noisy
  to correct a level set on all the training clicks. Moving them to the
  clicked rate instead undoes their debiasing wherever the CVR tower's
  shape is flatter than the truth's: with the true propensities, at the
  release's density, IPW's entire-space bias went from +0.0003 to +0.0109
  on a true mean of 0.0156 (docs/results.md).

The imputation towers are left alone. The shifts are part of the weights,
so checkpoints, exports and serving see them.

    rates = base_rates.read_base_rates(layout.stats_beside(vocab_dir))
    shifts = recalibration.recalibrate(model, validation_dataset, rates)
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

from typing import Iterable

import numpy as np
import tensorflow as tf
import tf_keras as keras

from escm2_tf import base_rates as base_rates_lib
from escm2_tf import config as config_lib
from escm2_tf import schema

# The layer whose output biases are shifted (model.build_network names it).
TOWERS_LAYER = "towers"
# Bisection on [-_MAX_SHIFT, _MAX_SHIFT] to 2 * _MAX_SHIFT / 2**_STEPS.
_MAX_SHIFT = 20.0
_STEPS = 64


def _sigmoid(values: np.ndarray) -> np.ndarray:
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
    if np.dot(weights, _sigmoid(logits + middle)) < rate:
      low = middle
    else:
      high = middle
  return 0.5 * (low + high)


def _logit_model(model: keras.Model) -> keras.Model:
  network = getattr(model, "network", model)
  return keras.Model(network.inputs,
                     network.get_layer(TOWERS_LAYER).output)


def held_out_logits(model: keras.Model, batches: Iterable
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The CTR and CVR logits and the clicks of every held-out impression.

  CTR and CVR are every estimator's first two logits (task.tower_names).

  Args:
    model: An ``ESCM2Model`` (or its network).
    batches: (features, labels) batches, e.g. ``data.make_dataset(...,
      training=False)``.

  Returns:
    ``(ctr_logits, cvr_logits, clicked)``, one entry per impression.
  """
  logit_model = _logit_model(model)
  inputs = logit_model.input_names
  # Batches differ in their ragged shapes and the last in size.
  predict = tf.function(
      lambda features: logit_model(features, training=False),
      reduce_retracing=True)
  ctr, cvr, clicked = [], [], []
  for features, labels in batches:
    logits = predict({name: features[name] for name in inputs}).numpy()
    ctr.append(logits[:, 0])
    cvr.append(logits[:, 1])
    clicked.append(labels[schema.CLICK].numpy() > 0.5)
  if not ctr:
    raise ValueError("recalibration got no held-out impressions.")
  return np.concatenate(ctr), np.concatenate(cvr), np.concatenate(clicked)


def cvr_weights(loss: str, ctr: np.ndarray, clicked: np.ndarray
                ) -> np.ndarray | None:
  """The weights of the held-out pCVRs whose mean ``loss`` fixes, or None.

  Args:
    loss: A ``LossConfig.loss`` value.
    ctr: The recalibrated pCTR of every held-out impression.
    clicked: Whether each was clicked.

  Returns:
    The clicks for ``naive``, pCTR for ``esmm`` (each to have mean pCVR =
    conversions per click), None for the counterfactual estimators, whose
    CVR level stays the one their training set.
  """
  if loss == "naive":
    return clicked.astype(np.float64)
  if loss == "esmm":
    return np.asarray(ctr, np.float64)
  if loss in config_lib.LOSSES:
    return None
  raise ValueError(f"cvr_weights: unknown loss {loss!r}.")


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
    model: The trained ``ESCM2Model``; its output biases change in place.
    batches: Held-out (features, labels) batches.
    rates: The training data's click rate and conversions per click.

  Returns:
    ``{"ctr": s_ctr, "cvr": s_cvr}``, the shifts added. The CVR shift is 0
    for a counterfactual estimator, and for ``naive`` without a held-out
    click.
  """
  ctr_logits, cvr_logits, clicked = held_out_logits(model, batches)
  ctr_shift = logit_shift(ctr_logits, rates.ctr)
  weights = cvr_weights(model.loss_config.loss,
                        _sigmoid(ctr_logits + ctr_shift), clicked)
  shifts = {"ctr": ctr_shift,
            "cvr": (logit_shift(cvr_logits, rates.cvr, weights)
                    if weights is not None and weights.sum() > 0.0
                    else 0.0)}
  shift_output_biases(model, shifts)
  return shifts
