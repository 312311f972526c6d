"""ESCM2's multi-task risks: naive, ESMM, ESCM2-IPW and ESCM2-DR.

Notation per impression i (Wang et al., "ESCM2", SIGIR 2022): o = click,
r = conversion, ô = pCTR, r̂ = pCVR, δ = BCE(r, r̂). Every estimator minimises

    L = L_ctr + lambda_c * L_cvr + lambda_g * L_ctcvr   (the paper's total risk)

with L_ctr the empirical risk of the CTR task (mean BCE(o, ô) over all
impressions, D) and L_ctcvr the global risk (mean BCE(o·r, ô·r̂) over D). The
estimators differ in the counterfactual CVR risk L_cvr; see ``compute_losses``.
``compat="paddlerec"`` reproduces PaddleRec's models/multitask/escm2 instead,
defects included (normalisation by the batch's clicks, a fixed weight cap,
joint DR training).
"""

import dataclasses
import functools
import math
from typing import Mapping

import tensorflow as tf

from escm2_tf import schema

LOSSES = ("naive", "esmm", "ipw", "dr")
COMPAT_MODES = ("paper", "paddlerec")
PROPENSITIES = ("model", "label")
# The label holding a known click propensity, for propensity="label" (the
# simulator's true p_click: ground_truth_*.csv).
PROPENSITY_LABEL = "p_click"
OUTPUTS = ("ctr", "cvr", "ctcvr")
IMPUTATION = "imputation"

# Constants PaddleRec hard-codes (dygraph_model.py, static_model.py).
PADDLEREC_EPSILON = 1e-4
PADDLEREC_MIN_PROPENSITY = 1e-6
PADDLEREC_MAX_WEIGHT = 15.0

# Below this, 1 - epsilon rounds to 1 in float32 and log(1 - p) is -inf.
_MIN_EPSILON = 1e-7

# PaddleRec hard-codes these; under compat="paddlerec" they would be ignored.
_PAPER_ONLY_FIELDS = ("lambda_imp", "propensity_clip", "max_ips_weight",
                      "stop_ips_gradient", "epsilon", "propensity",
                      "self_normalized")


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """How ``compute_losses`` weighs and estimates the three risks.

  Attributes:
    loss: ``"naive"`` (CVR on clicks only), ``"esmm"`` (CVR only through
      CTCVR), ``"ipw"`` or ``"dr"`` (ESCM2's counterfactual risks).
    lambda_c: Weight of the CVR / counterfactual risk. The paper tunes it small
      (about 0.1 to 1); 0.1 is the default.
    lambda_g: Weight of the global CTCVR risk; the paper's tuned value is 1.
    lambda_imp: Weight of the DR imputation risk R_imp (paper mode, ``dr``).
      R_imp reaches the CVR tower only through the shared layers, where at
      weight 1 it is 20-35 times the CVR risk: measured on 250k simulated
      impressions (docs/results.md), weight 1 raised the entire-space CVR bias
      from +0.0145 to +0.0171 and cost 0.02 CVR and CTR AUC, while 0.1 matched
      weight 0. Hence 0.1.
    propensity_clip: ô is raised to at least this before it is inverted, so
      one IPS weight is at most 1 / propensity_clip. With CTR about 4 % the
      typical clicked weight is about 25; the default 0.01 caps weights at 100,
      four times that, so clipping touches only the tail of clicks whose pCTR
      is under a quarter of the mean, where a single weight would otherwise
      dominate the batch's variance, and leaves the bulk unbiased.
    max_ips_weight: Optional further cap on 1/ô (at least 1); None for none.
    stop_ips_gradient: If True the IPS weight passes no gradient into the CTR
      tower, which is then trained by L_ctr and L_ctcvr only; otherwise the
      counterfactual risk can lower itself by raising ô on clicks.
    propensity: Where the click propensity ô of the IPS weight comes from:
      ``"model"``, the CTR tower's pCTR (ESCM2), or ``"label"``, a known
      propensity in ``labels["p_click"]`` (the simulator's true click
      probability). ``"label"`` checks the estimator apart from the
      propensity model (tests/test_oracle_propensity.py); the trainer's
      TFRecords carry no such label.
    self_normalized: Self-normalised IPS (SNIPS): every sum weighted by
      o/ô is divided by the batch's sum of o/ô instead of by |D|. Bounded by
      the largest δ, at the price of a bias of order 1/clicks per batch; off
      by default (docs/losses.md has the measurement).
    compat: ``"paper"`` or ``"paddlerec"``. PaddleRec hard-codes its epsilon,
      clip, cap and stop-gradient, so the paper-only fields above must keep
      their defaults under ``"paddlerec"``.
    epsilon: Probabilities are clipped to [epsilon, 1 - epsilon] in every BCE.
  """
  loss: str = "ipw"
  lambda_c: float = 0.1
  lambda_g: float = 1.0
  lambda_imp: float = 0.1
  propensity_clip: float = 0.01
  max_ips_weight: float | None = None
  stop_ips_gradient: bool = True
  propensity: str = "model"
  self_normalized: bool = False
  compat: str = "paper"
  epsilon: float = 1e-7

  def __post_init__(self):
    _check_choice("loss", self.loss, LOSSES)
    _check_choice("compat", self.compat, COMPAT_MODES)
    _check_choice("propensity", self.propensity, PROPENSITIES)
    for name in ("lambda_c", "lambda_g", "lambda_imp"):
      _check_number(name, getattr(self, name), low=0.0)
    _check_number("propensity_clip", self.propensity_clip, low=0.0, high=1.0,
                  low_open=True)
    if self.max_ips_weight is not None:
      _check_number("max_ips_weight", self.max_ips_weight, low=1.0)
    for name in ("stop_ips_gradient", "self_normalized"):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"LossConfig.{name} must be a bool, got "
                         f"{getattr(self, name)!r}.")
    _check_number("epsilon", self.epsilon, low=_MIN_EPSILON, high=0.5)
    if self.compat == "paddlerec":
      for field in dataclasses.fields(self):
        value = getattr(self, field.name)
        if field.name in _PAPER_ONLY_FIELDS and value != field.default:
          raise ValueError(
              f"LossConfig.{field.name}={value!r} has no effect with "
              "compat='paddlerec', which hard-codes PaddleRec's constants; "
              f"keep the default {field.default!r} or use compat='paper'.")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"LossConfig.{name} must be one of {', '.join(choices)}; "
                     f"got {value!r}.")


def _check_number(name: str, value: object, *, low: float,
                  high: float = math.inf, low_open: bool = False) -> None:
  """Raises ValueError unless value is a finite real number in range."""
  is_real = isinstance(value, (int, float)) and not isinstance(value, bool)
  in_range = (is_real and math.isfinite(value) and value <= high and
              (value > low if low_open else value >= low))
  if not in_range:
    bounds = f"{'(' if low_open else '['}{low}, {high}]"
    raise ValueError(f"LossConfig.{name} must be a finite number in {bounds}; "
                     f"got {value!r}.")


def _vector(tensors: Mapping[str, tf.Tensor], key: str,
            where: str) -> tf.Tensor:
  """tensors[key] as float32[B]; rank errors caught before broadcasting."""
  if key not in tensors:
    raise ValueError(f"compute_losses: {where} lack {key!r}; they have "
                     f"{sorted(tensors)}.")
  value = tf.cast(tensors[key], tf.float32)
  if value.shape.rank is not None and value.shape.rank != 1:
    raise ValueError(f"compute_losses: {where}[{key!r}] must have shape [B], "
                     f"got {value.shape}.")
  return value


def binary_cross_entropy(labels: tf.Tensor, probs: tf.Tensor,
                         epsilon: float) -> tf.Tensor:
  """Per-impression BCE of probabilities clipped to [epsilon, 1 - epsilon]."""
  probs = tf.clip_by_value(probs, epsilon, 1.0 - epsilon)
  return -(labels * tf.math.log(probs) +
           (1.0 - labels) * tf.math.log(1.0 - probs))


def paddle_log_loss(labels: tf.Tensor, probs: tf.Tensor) -> tf.Tensor:
  """paddle.nn.functional.log_loss: epsilon is added inside the logs."""
  return -(labels * tf.math.log(probs + PADDLEREC_EPSILON) +
           (1.0 - labels) * tf.math.log(1.0 - probs + PADDLEREC_EPSILON))


def inverse_propensity(config: LossConfig, propensity: tf.Tensor) -> tf.Tensor:
  """1 / max(ô, propensity_clip), capped and stop-gradient as configured."""
  weight = 1.0 / tf.maximum(propensity, config.propensity_clip)
  if config.max_ips_weight is not None:
    weight = tf.minimum(weight, config.max_ips_weight)
  if config.stop_ips_gradient:
    weight = tf.stop_gradient(weight)
  return weight


def _clicked_mean(click: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
  """Mean of delta over clicked impressions; 0 for a batch without clicks."""
  return tf.math.divide_no_nan(tf.reduce_sum(click * delta),
                               tf.reduce_sum(click))


def compute_losses(config: LossConfig, labels: Mapping[str, tf.Tensor],
                   outputs: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """The total loss and its parts for one batch.

  L_cvr by ``config.loss`` (paper mode):

  * naive: mean δ over clicked impressions (0 without clicks).
  * esmm: 0 in the total (ESMM learns CVR through CTCVR only); ``cvr_loss``
    reports the naive clicked-mean δ as a stop-gradient monitor.
  * ipw: the paper's IPS risk R_IPS = 1/|D| Σ o_i δ_i / ô_i
    (formulas/escm2_ipw.png), ô clipped. ô is pCTR, or with
    ``propensity="label"`` ``labels["p_click"]``.
  * dr: with the imputed error δ̂ = ``outputs["imputation"]`` and
    e_i = δ_i − δ̂_i, the paper's DR error risk
    R_DR^err = 1/|D| Σ [δ̂_i + o_i e_i / ô_i] (formulas/escm2_dr1.png) and
    imputation risk R_DR^imp = 1/|D| Σ o_i e_i² / ô_i (escm2_dr2.png). R_err
    can be negative where δ̂ over-estimates δ. The paper alternates
    the two; here one step does both, decoupled by stop-gradients: δ̂ is
    constant in R_err and δ in R_imp, so the CVR output is moved by R_err
    (and L_ctcvr) only and the imputation by R_imp only. The total adds
    ``lambda_imp * R_imp``; ``cvr_loss`` is R_err, ``imputation_loss`` R_imp.
  * ``self_normalized`` (ipw, dr): 1/|D| in front of every sum over o_i/ô_i
    becomes 1/Σ_i o_i/ô_i (SNIPS); 0 for a batch without clicks.

  ``compat="paddlerec"``: see ``_paddlerec_counterfactual``; every log loss is
  paddle's (epsilon 1e-4 added inside the logs) and CTCVR is labelled with r.

  Args:
    config: The estimator and its weights.
    labels: ``{"click", "conversion"}``, float32[B] of 0/1, and with
      ``propensity="label"`` ``"p_click"``, float32[B] in (0, 1].
    outputs: ``{"ctr", "cvr", "ctcvr"}`` probabilities, float32[B], and for
      ``dr`` ``"imputation"``, a non-negative predicted cross-entropy.

  Returns:
    Scalars ``loss`` (the total to minimise), ``ctr_loss``, ``cvr_loss``,
    ``ctcvr_loss``, and for ``dr`` ``imputation_loss``; float32, traceable by
    tf.function and XLA (no branching on tensor values).

  Raises:
    ValueError: A label or output is missing or not of rank 1.
  """
  click = _vector(labels, schema.CLICK, "labels")
  conversion = _vector(labels, schema.CONVERSION, "labels")
  ctr, cvr, ctcvr = (_vector(outputs, key, "outputs") for key in OUTPUTS)
  imputation = (_vector(outputs, IMPUTATION, "outputs")
                if config.loss == "dr" else None)
  paddlerec = config.compat == "paddlerec"
  if paddlerec:
    log_loss = paddle_log_loss
    # PaddleRec labels CTCVR with its raw buy column.
    ctcvr_label = conversion
  else:
    log_loss = functools.partial(binary_cross_entropy, epsilon=config.epsilon)
    ctcvr_label = click * conversion
  delta = log_loss(conversion, cvr)
  if config.loss in ("naive", "esmm"):
    result = {"cvr_loss": _clicked_mean(click, delta)}
  elif paddlerec:
    result = _paddlerec_counterfactual(config.loss, click, ctr, delta,
                                       imputation)
  else:
    propensity = (ctr if config.propensity == "model" else
                  _vector(labels, PROPENSITY_LABEL, "labels"))
    result = _paper_counterfactual(config, click, propensity, delta,
                                   imputation)
  result["ctr_loss"] = tf.reduce_mean(log_loss(click, ctr))
  result["ctcvr_loss"] = tf.reduce_mean(log_loss(ctcvr_label, ctcvr))
  cvr_weight = config.lambda_c
  if config.loss == "esmm":
    result["cvr_loss"] = tf.stop_gradient(result["cvr_loss"])
    cvr_weight = 0.0
  total = (result["ctr_loss"] + cvr_weight * result["cvr_loss"] +
           config.lambda_g * result["ctcvr_loss"])
  if config.loss == "dr" and not paddlerec:
    total += config.lambda_imp * result["imputation_loss"]
  result["loss"] = total
  return result


def _paper_counterfactual(config: LossConfig, click: tf.Tensor,
                          propensity: tf.Tensor, delta: tf.Tensor,
                          imputation: tf.Tensor | None) -> dict[str, tf.Tensor]:
  """R_IPS, or R_err and R_imp with the decoupling stop-gradients."""
  weighted_click = click * inverse_propensity(config, propensity)
  if config.self_normalized:
    normalizer = tf.reduce_sum(weighted_click)
  else:
    normalizer = tf.cast(tf.size(click), tf.float32)

  def ips_mean(values: tf.Tensor) -> tf.Tensor:
    return tf.math.divide_no_nan(tf.reduce_sum(weighted_click * values),
                                 normalizer)

  if config.loss == "ipw":
    return {"cvr_loss": ips_mean(delta)}
  fixed_imputation = tf.stop_gradient(imputation)
  return {
      "cvr_loss": (tf.reduce_mean(fixed_imputation)
                   + ips_mean(delta - fixed_imputation)),
      "imputation_loss": ips_mean(
          tf.square(tf.stop_gradient(delta) - imputation)),
  }


def _paddlerec_counterfactual(
    loss: str, click: tf.Tensor, ctr: tf.Tensor, delta: tf.Tensor,
    imputation: tf.Tensor | None) -> dict[str, tf.Tensor]:
  """PaddleRec's IPW or DR risk, as its dygraph and static models compute it.

  IPW: weight = min(1 / max(ô · N_clicks, 1e-6), 15) · B, stop-gradient,
  L_cvr = mean(o · weight · δ): normalised by the batch's clicks rather than
  by |D|. DR: w = min(o / max(ô, 1e-6), 15), stop-gradient, e = δ − δ̂,
  L_cvr = mean(δ̂ + w·e + w·e²) trained jointly, so δ̂ is moved by both terms;
  ``imputation_loss`` reports the mean(w·e²) part, already inside ``cvr_loss``.
  """
  if loss == "ipw":
    num_clicks = tf.reduce_sum(click)
    batch_size = tf.cast(tf.size(click), tf.float32)
    weight = tf.stop_gradient(batch_size * tf.minimum(
        1.0 / tf.maximum(ctr * num_clicks, PADDLEREC_MIN_PROPENSITY),
        PADDLEREC_MAX_WEIGHT))
    return {"cvr_loss": tf.reduce_mean(click * weight * delta)}
  weight = tf.stop_gradient(tf.minimum(
      click / tf.maximum(ctr, PADDLEREC_MIN_PROPENSITY), PADDLEREC_MAX_WEIGHT))
  error = delta - imputation
  return {
      "cvr_loss": tf.reduce_mean(
          imputation + weight * error + weight * tf.square(error)),
      "imputation_loss": tf.reduce_mean(weight * tf.square(error)),
  }
