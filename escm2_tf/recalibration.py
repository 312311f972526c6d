"""Calibration after training: each output layer refit to its estimator's risk.

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

``recalibrate`` moves each output, after training and in the weights, to
where the estimator's own risk has its stationary point:

- CTR, every estimator: a logit shift so that the mean pCTR over held-out
  impressions (free of the memorised training examples) is the training
  data's click rate (``base_rates``, ten times as many labels as a held-out
  tenth holds).
- CVR, ``naive`` (its risk is the clicked impressions' log loss): a shift to
  mean pCVR over the held-out clicks = conversions per click.
- CVR, ``esmm`` (the CTCVR log loss over every impression): a shift to mean
  pCTR * pCVR = conversions per impression, i.e. the pCTR-weighted mean pCVR
  = conversions per click.
- CVR, the counterfactual estimators (``ipw``, ``dr``, ``dr_jl``, ``mrdr``
  in paper mode), on the training impressions (``counterfactual_refit``):
  the CVR logit z becomes a * z + b, with the slope a of the (a, b) that
  minimise the estimator's own CVR risk (``losses.compute_losses``'
  ``cvr_loss``, with its propensities, clipping and imputation; Newton's
  method, ``risk_scaling``: Platt scaling under the counterfactual risk),
  and the shift b that puts the mean pCVR over every training impression
  at the estimator's IPS estimate of it (``losses.ips_estimate``). Their
  risk weighs each click by 1/ô, so it needs every training click: on a
  held-out tenth it is too noisy (with the true propensities, an IPS
  estimate of the entire-space CVR of 0.0203 on 50,000 impressions whose
  truth was 0.0156). The slope matters as much as the level: the
  early-stopped CVR tower is flatter than the truth (its logits need a
  slope of 1.4-3.7 at the release's density), and a shift alone that meets
  the entire-space mean leaves pCVR on clicks at 0.53-0.67 of the observed
  rate. Without the step a run's entire-space CVR stays where training
  left it, which with some seeds is the clicked rate it started at
  (docs/results.md).

``compat="paddlerec"`` keeps its CVR tower as trained: PaddleRec's risks are
normalised per batch. The imputation towers are left alone. The changes are
part of the weights, so checkpoints, exports and serving see them.

    rates = base_rates.read_base_rates(layout.stats_beside(vocab_dir))
    changes = recalibration.recalibrate(model, held_out_batches, rates,
                                        training=training_batches)
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import dataclasses
from typing import Iterable

import numpy as np
import tensorflow as tf
import tf_keras as keras

from escm2_tf import base_rates as base_rates_lib
from escm2_tf import config as config_lib
from escm2_tf import losses
from escm2_tf import schema

# The layer whose output biases are shifted (model.build_network names it).
TOWERS_LAYER = "towers"
# Bisection on [-_MAX_SHIFT, _MAX_SHIFT] to 2 * _MAX_SHIFT / 2**_STEPS.
_MAX_SHIFT = 20.0
_STEPS = 64
# The training impressions the counterfactual CVR is refit on, at most
# (about 80 MB of scores), and the batch size of their pass.
MAX_RISK_IMPRESSIONS = 2_000_000
SCORING_BATCH_SIZE = 4096
# The largest CVR slope (and the inverse of the smallest) kept.
MAX_SLOPE = 10.0
# Newton's method on the CVR risk: steps, step halvings, convergence, ridge.
_NEWTON_STEPS = 50
_MIN_STEP = 1e-3
_TOLERANCE = 1e-7
_RIDGE = 1e-12


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
    CVR is refit on the training data instead (``counterfactual_refit``).
  """
  if loss == "naive":
    return clicked.astype(np.float64)
  if loss == "esmm":
    return np.asarray(ctr, np.float64)
  if loss in config_lib.LOSSES:
    return None
  raise ValueError(f"cvr_weights: unknown loss {loss!r}.")


def risk_scaling(loss_config: config_lib.LossConfig, scored: Scored
                 ) -> tuple[float, float]:
  """The (a, b) of sigmoid(a * z + b) that minimise the estimator's CVR risk.

  z is the CVR logit of every scored impression; the risk is
  ``losses.compute_losses(loss_config, ...)["cvr_loss"]`` over all of them
  at once, with the scored pCTR (and imputation) held fixed. It is convex in
  (a, b) for every paper-mode estimator (each impression's second derivative
  in the logit is p(1 - p) > 0), so damped Newton steps find the minimum.
  Where that slope falls outside [1 / MAX_SLOPE, MAX_SLOPE] (logits that
  barely vary, or that the clicks separate: tiny or untrained models), the
  shift is fitted alone with a = 1.

  Returns:
    ``(slope, shift)``; ``(1, 0)`` without a conversion or a clicked
    non-conversion, or with a logit or output that is not finite (a
    diverged model, which the trainer's checks then stop).
  """
  if not _refittable(scored):
    return 1.0, 0.0
  return _risk_scaling(loss_config, scored, *_tensors(scored))


def _risk_scaling(loss_config: config_lib.LossConfig, scored: Scored,
                  outputs: dict[str, tf.Tensor], labels: dict[str, tf.Tensor]
                  ) -> tuple[float, float]:
  """``risk_scaling`` of a refittable ``scored``, its ``_tensors`` given."""
  risk = _cvr_risk(loss_config, scored, outputs, labels)
  # Newton's steps are sure to converge only near the minimum: start from
  # the clicks' conversion rate (Platt scaling's level), within a few
  # logits of it.
  clicked = scored.clicked
  start = logit_shift(scored.logits[clicked, 1],
                      float(np.mean(scored.labels[schema.CONVERSION][clicked]
                                    > 0.5)))
  slope, shift = _newton(risk, start, fit_slope=True)
  if not 1.0 / MAX_SLOPE <= slope <= MAX_SLOPE:
    slope, shift = _newton(risk, start, fit_slope=False)
  return slope, shift


def _refittable(scored: Scored) -> bool:
  """Finite outputs, and clicks that converted and clicks that did not."""
  converted = scored.labels[schema.CONVERSION][scored.clicked] > 0.5
  finite = np.isfinite(scored.logits[:, 1]).all() and all(
      np.isfinite(values).all() for values in scored.outputs.values())
  return bool(finite and converted.any() and not converted.all())


def counterfactual_refit(loss_config: config_lib.LossConfig, scored: Scored
                         ) -> tuple[float, float]:
  """The CVR logit's (a, b): a from the estimator's risk, b from its level.

  The slope is ``risk_scaling``'s. The shift puts the mean of
  sigmoid(a * z + b) over every scored impression at the estimator's
  ``losses.ips_estimate`` of the entire-space CVR on them. The risk's own
  level condition (the o/ô-weighted mean of (p - r) over the clicks is 0)
  reads the model's predictions on the clicked impressions, and those the
  tower was fitted to: its memorised training clicks make them more
  extreme than on new impressions, and with the true propensities the
  risk's level came out 10 % low on the test data in every seed of the
  release regime (docs/results.md). The IPS estimate reads the labels and
  ô alone, and the mean it is matched over is mostly of unclicked
  impressions, which the CVR tower has no label of.

  Returns:
    ``(slope, shift)``; ``(1, 0)`` where ``risk_scaling`` leaves the
    model alone; the risk's shift if the estimate is not in (0, 1).
  """
  if not _refittable(scored):
    return 1.0, 0.0
  outputs, labels = _tensors(scored)
  slope, shift = _risk_scaling(loss_config, scored, outputs, labels)
  target = float(losses.ips_estimate(loss_config, labels, outputs))
  if 0.0 < target < 1.0:
    # From the risk's level: the shift from there is small, while the
    # whole one can pass logit_shift's bounds (a steep slope of logits
    # far from 0).
    shift += logit_shift(
        slope * scored.logits[:, 1].astype(np.float64) + shift, target)
  return slope, shift


def _newton(risk, start: float, fit_slope: bool) -> tuple[float, float]:
  """Damped Newton from (1, start) on a convex risk of (a, b); b alone if
  not ``fit_slope``."""
  params = tf.constant([1.0, start], tf.float64)
  free = tf.constant([1.0 if fit_slope else 0.0, 1.0], tf.float64)
  for _ in range(_NEWTON_STEPS):
    with tf.GradientTape(persistent=True) as outer:
      outer.watch(params)
      with tf.GradientTape() as inner:
        inner.watch(params)
        value = risk(params)
      gradient = inner.gradient(value, params) * free
      parts = [gradient[0], gradient[1]]
    hessian = tf.stack([outer.gradient(part, params) for part in parts])
    del outer
    # A frozen slope gets a unit curvature and no gradient: no step.
    hessian = hessian * free[:, None] * free[None, :] + tf.linalg.diag(
        1.0 - free + _RIDGE)
    step = tf.linalg.solve(hessian, gradient[:, tf.newaxis])[:, 0]
    scale = 1.0
    while risk(params - scale * step) > value and scale > _MIN_STEP:
      scale *= 0.5
    params -= scale * step
    if float(tf.reduce_max(tf.abs(scale * step))) < _TOLERANCE:
      break
  slope, shift = params.numpy()
  return float(slope), float(shift)


def _tensors(scored: Scored) -> tuple[dict[str, tf.Tensor],
                                      dict[str, tf.Tensor]]:
  """The outputs and the numeric labels as float32 tensors."""
  outputs = {key: tf.constant(value, tf.float32)
             for key, value in scored.outputs.items()}
  labels = {key: tf.constant(value, tf.float32)
            for key, value in scored.labels.items()
            if value.dtype.kind in "biuf"}
  return outputs, labels


def _cvr_risk(loss_config: config_lib.LossConfig, scored: Scored,
              outputs: dict[str, tf.Tensor], labels: dict[str, tf.Tensor]):
  """The CVR risk as a function of (a, b), float64 [2] -> float64 []."""
  cvr_logits = tf.constant(scored.logits[:, 1], tf.float64)

  def risk(params: tf.Tensor) -> tf.Tensor:
    cvr = tf.cast(tf.sigmoid(params[0] * cvr_logits + params[1]), tf.float32)
    refit = dict(outputs, **{schema.CVR: cvr,
                             schema.CTCVR: outputs[schema.CTR] * cvr})
    return tf.cast(losses.compute_losses(loss_config, labels, refit)
                   ["cvr_loss"], tf.float64)

  return risk


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


def recalibrate(model: keras.Model, held_out: Iterable,
                rates: base_rates_lib.BaseRates,
                training: Iterable | None = None) -> dict[str, float]:
  """Fits the CTR and CVR outputs (module docstring) and applies them.

  Args:
    model: The trained ``ESCM2Model``; its output layer changes in place.
    held_out: Held-out (features, labels) batches.
    rates: The training data's click rate and conversions per click.
    training: The training data's (features, labels) batches, unshuffled,
      one pass (with the propensity label if the loss reads it); the
      counterfactual estimators' CVR is refit on the first
      ``MAX_RISK_IMPRESSIONS`` of them, and left as trained without them.

  Returns:
    ``{"ctr": s_ctr, "cvr": s_cvr, "cvr_slope": a}``: each tower's logit z
    became ``slope * z + shift`` (the CTR's slope is 1). The CVR's is (1, 0)
    when nothing moved it.
  """
  held = score(model, held_out)
  ctr_shift = logit_shift(held.logits[:, 0], rates.ctr)
  transform_logits(model, 0, 1.0, ctr_shift)
  slope, cvr_shift = 1.0, 0.0
  loss_config = model.loss_config
  weights = cvr_weights(loss_config.loss,
                        _sigmoid(held.logits[:, 0] + ctr_shift), held.clicked)
  if weights is not None and weights.sum() > 0.0:
    cvr_shift = logit_shift(held.logits[:, 1], rates.cvr, weights)
  elif (weights is None and training is not None
        and loss_config.compat == "paper"):
    slope, cvr_shift = counterfactual_refit(
        loss_config, score(model, training, MAX_RISK_IMPRESSIONS))
  transform_logits(model, 1, slope, cvr_shift)
  return {"ctr": ctr_shift, "cvr": cvr_shift, "cvr_slope": slope}
