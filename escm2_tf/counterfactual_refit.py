"""The counterfactual estimators' CVR output, refit on the training data.

For ``ipw``, ``dr``, ``dr_jl`` and ``mrdr`` in paper mode,
``recalibration.recalibrate`` refits the CVR on the training impressions
(``counterfactual_refit``): the CVR logit z becomes a * z + b, with the
slope a of the (a, b) that minimise the estimator's own CVR risk
(``losses.compute_losses``' ``cvr_loss``, with its propensities, clipping
and imputation; Newton's method, ``risk_scaling``: Platt scaling under the
counterfactual risk), and the shift b that puts the mean pCVR over every
training impression at the estimator's IPS estimate of it
(``losses.ips_estimate``). Their risk weighs each click by 1/ô, so it needs
every training click: on a held-out tenth it is too noisy (with the true
propensities, an IPS estimate of the entire-space CVR of 0.0203 on 50,000
impressions whose truth was 0.0156). The slope matters as much as the
level: the early-stopped CVR tower is flatter than the truth (its logits
need a slope of 1.4-3.7 at the release's density), and a shift alone that
meets the entire-space mean leaves pCVR on clicks at 0.53-0.67 of the
observed rate. Without the step a run's entire-space CVR stays where
training left it, which with some seeds is the clicked rate it started at
(docs/results.md).
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import numpy as np
import tensorflow as tf

from escm2_tf import config as config_lib
from escm2_tf import losses
from escm2_tf import output_logits
from escm2_tf import schema

# The largest CVR slope (and the inverse of the smallest) kept.
MAX_SLOPE = 10.0
# Newton's method on the CVR risk: steps, step halvings, convergence, ridge.
_NEWTON_STEPS = 50
_MIN_STEP = 1e-3
_TOLERANCE = 1e-7
_RIDGE = 1e-12


def risk_scaling(loss_config: config_lib.LossConfig,
                 scored: output_logits.Scored) -> tuple[float, float]:
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


def _risk_scaling(loss_config: config_lib.LossConfig,
                  scored: output_logits.Scored,
                  outputs: dict[str, tf.Tensor], labels: dict[str, tf.Tensor]
                  ) -> tuple[float, float]:
  """``risk_scaling`` of a refittable ``scored``, its ``_tensors`` given."""
  risk = _cvr_risk(loss_config, scored, outputs, labels)
  # Newton's steps are sure to converge only near the minimum: start from
  # the clicks' conversion rate (Platt scaling's level), within a few
  # logits of it.
  clicked = scored.clicked
  start = output_logits.logit_shift(
      scored.logits[clicked, 1],
      float(np.mean(scored.labels[schema.CONVERSION][clicked] > 0.5)))
  slope, shift = _newton(risk, start, fit_slope=True)
  if not 1.0 / MAX_SLOPE <= slope <= MAX_SLOPE:
    slope, shift = _newton(risk, start, fit_slope=False)
  return slope, shift


def _refittable(scored: output_logits.Scored) -> bool:
  """Finite outputs, and clicks that converted and clicks that did not."""
  converted = scored.labels[schema.CONVERSION][scored.clicked] > 0.5
  finite = np.isfinite(scored.logits[:, 1]).all() and all(
      np.isfinite(values).all() for values in scored.outputs.values())
  return bool(finite and converted.any() and not converted.all())


def counterfactual_refit(loss_config: config_lib.LossConfig,
                         scored: output_logits.Scored
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
    shift += output_logits.logit_shift(
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


def _tensors(scored: output_logits.Scored
             ) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
  """The outputs and the numeric labels as float32 tensors."""
  outputs = {key: tf.constant(value, tf.float32)
             for key, value in scored.outputs.items()}
  labels = {key: tf.constant(value, tf.float32)
            for key, value in scored.labels.items()
            if value.dtype.kind in "biuf"}
  return outputs, labels


def _cvr_risk(loss_config: config_lib.LossConfig,
              scored: output_logits.Scored, outputs: dict[str, tf.Tensor],
              labels: dict[str, tf.Tensor]):
  """The CVR risk as a function of (a, b), float64 [2] -> float64 []."""
  cvr_logits = tf.constant(scored.logits[:, 1], tf.float64)

  def risk(params: tf.Tensor) -> tf.Tensor:
    cvr = tf.cast(tf.sigmoid(params[0] * cvr_logits + params[1]), tf.float32)
    refit = dict(outputs, **{schema.CVR: cvr,
                             schema.CTCVR: outputs[schema.CTR] * cvr})
    return tf.cast(losses.compute_losses(loss_config, labels, refit)
                   ["cvr_loss"], tf.float64)

  return risk
