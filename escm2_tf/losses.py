"""ESCM2's multi-task risks: naive, ESMM, ESCM2-IPW, ESCM2-DR, DR-JL, MRDR.

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

import functools
from typing import Mapping

import tensorflow as tf

from escm2_tf import config as config_lib
from escm2_tf import layout
from escm2_tf import schema

# The label holding a known click propensity, for propensity="label": the
# simulator's true click probability, its ground truth's column.
PROPENSITY_LABEL = layout.P_CLICK

# Constants PaddleRec hard-codes (dygraph_model.py, static_model.py).
PADDLEREC_EPSILON = 1e-4
PADDLEREC_MIN_PROPENSITY = 1e-6
PADDLEREC_MAX_WEIGHT = 15.0


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


def inverse_propensity(config: config_lib.LossConfig,
                       propensity: tf.Tensor) -> tf.Tensor:
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


def compute_losses(config: config_lib.LossConfig,
                   labels: Mapping[str, tf.Tensor],
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
    With δ̂ held fixed, R_err's gradient in the CVR output is
    1/|D| Σ o_i ∇δ_i / ô_i, R_IPS's: ESCM2-DR differs from IPW only through
    the layers the imputation tower shares with the CVR tower.
  * dr_jl, mrdr: the imputation is a pseudo-label r̃ and the imputed error
    BCE(r̃, r̂) a function of the CVR output, which unclicked impressions
    then move; see ``joint_learning_risks``. The total adds
    ``lambda_imp * R_imp``.
  * ``self_normalized`` (ipw, dr, dr_jl, mrdr): 1/|D| in front of every sum
    over o_i/ô_i becomes 1/Σ_i o_i/ô_i (SNIPS); 0 for a batch without
    clicks.

  ``compat="paddlerec"``: see ``_paddlerec_counterfactual``; every log loss is
  paddle's (epsilon 1e-4 added inside the logs) and CTCVR is labelled with r.

  Args:
    config: The estimator and its weights.
    labels: ``{"click", "conversion"}``, float32[B] of 0/1, and with
      ``propensity="label"`` ``"p_click"``, float32[B] in (0, 1].
    outputs: ``{"ctr", "cvr", "ctcvr"}`` probabilities, float32[B], and
      ``"imputation"``: for ``dr`` a non-negative predicted cross-entropy,
      for ``dr_jl`` and ``mrdr`` a pseudo-label in [0, 1].

  Returns:
    Scalars ``loss`` (the total to minimise), ``ctr_loss``, ``cvr_loss``,
    ``ctcvr_loss``, and with an imputation ``imputation_loss``; float32,
    traceable by tf.function and XLA (no branching on tensor values).

  Raises:
    ValueError: A label or output is missing or not of rank 1.
  """
  click = _vector(labels, schema.CLICK, "labels")
  conversion = _vector(labels, schema.CONVERSION, "labels")
  ctr, cvr, ctcvr = (_vector(outputs, key, "outputs")
                     for key in schema.OUTPUT_NAMES)
  imputation = (_vector(outputs, schema.IMPUTATION, "outputs")
                if config.loss in config_lib.IMPUTATION_LOSSES else None)
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
    propensity = propensity_of(config, labels, outputs)
    if config.loss in config_lib.JOINT_LEARNING_LOSSES:
      result = joint_learning_risks(config, click, propensity, conversion,
                                    cvr, imputation)
    else:
      result = _paper_counterfactual(config, click, propensity, delta,
                                     imputation)
  result["ctr_loss"] = tf.reduce_mean(log_loss(click, ctr))
  if config.stop_ctcvr_gradient:
    ctcvr = tf.stop_gradient(ctr) * cvr
  result["ctcvr_loss"] = tf.reduce_mean(log_loss(ctcvr_label, ctcvr))
  cvr_weight = config.lambda_c
  if config.loss == "esmm":
    result["cvr_loss"] = tf.stop_gradient(result["cvr_loss"])
    cvr_weight = 0.0
  terms = [result["ctr_loss"], cvr_weight * result["cvr_loss"],
           config.lambda_g * result["ctcvr_loss"]]
  if config.loss in config_lib.IMPUTATION_LOSSES and not paddlerec:
    terms.append(config.lambda_imp * result["imputation_loss"])
  # A reduction, not adds: Grappler rewrites chains of adds (and AddN) in an
  # order that differs between traces, so equal runs logged totals a bit
  # apart.
  result["loss"] = tf.reduce_sum(tf.stack(terms))
  return result


def propensity_of(config: config_lib.LossConfig,
                  labels: Mapping[str, tf.Tensor],
                  outputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
  """ô as the paper-mode risks read it: pCTR, or the ``p_click`` label."""
  if config.propensity == "model":
    return _vector(outputs, schema.CTR, "outputs")
  return _vector(labels, PROPENSITY_LABEL, "labels")


def ips_estimate(config: config_lib.LossConfig,
                 labels: Mapping[str, tf.Tensor],
                 outputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
  """The estimator's IPS estimate of the mean CVR over every impression.

  1/|D| Σ o_i r_i w_i, or with ``self_normalized`` Σ o_i r_i w_i / Σ o_i w_i,
  with the risks' weights w = ``inverse_propensity(config, ô)``: the same
  normalisation, clip and cap as R_IPS (formulas/escm2_ipw.png), whose
  value it is for the loss r instead of δ. It reads labels and ô only, so
  it is not moved by what the CVR tower memorised of the clicks.

  Returns:
    A float32 scalar (0 for a SNIPS batch without clicks).
  """
  click = _vector(labels, schema.CLICK, "labels")
  conversion = _vector(labels, schema.CONVERSION, "labels")
  _, ips_mean = _ips_mean_fn(config, click,
                             propensity_of(config, labels, outputs))
  return ips_mean(conversion)


def _ips_mean_fn(config: config_lib.LossConfig, click: tf.Tensor,
                 propensity: tf.Tensor):
  """o·w, and Σ o·w·values over |D| (or over Σ o·w with SNIPS) as a function.

  w is ``inverse_propensity``; the function is 0 for a SNIPS batch without
  clicks.
  """
  weighted_click = click * inverse_propensity(config, propensity)
  if config.self_normalized:
    normalizer = tf.reduce_sum(weighted_click)
  else:
    normalizer = tf.cast(tf.size(click), tf.float32)

  def ips_mean(values: tf.Tensor, weights: tf.Tensor = weighted_click
               ) -> tf.Tensor:
    return tf.math.divide_no_nan(tf.reduce_sum(weights * values), normalizer)

  return weighted_click, ips_mean


def _paper_counterfactual(config: config_lib.LossConfig, click: tf.Tensor,
                          propensity: tf.Tensor, delta: tf.Tensor,
                          imputation: tf.Tensor | None) -> dict[str, tf.Tensor]:
  """R_IPS, or R_err and R_imp with the decoupling stop-gradients."""
  _, ips_mean = _ips_mean_fn(config, click, propensity)
  if config.loss == "ipw":
    return {"cvr_loss": ips_mean(delta)}
  fixed_imputation = tf.stop_gradient(imputation)
  return {
      "cvr_loss": (tf.reduce_mean(fixed_imputation)
                   + ips_mean(delta - fixed_imputation)),
      "imputation_loss": ips_mean(
          tf.square(tf.stop_gradient(delta) - imputation)),
  }


def joint_learning_risks(config: config_lib.LossConfig, click: tf.Tensor,
                         propensity: tf.Tensor, conversion: tf.Tensor,
                         cvr: tf.Tensor, pseudo_label: tf.Tensor
                         ) -> dict[str, tf.Tensor]:
  """DR-JL's or MRDR's prediction and imputation risks, for one step.

  The imputation predicts a pseudo-label r̃ for every impression and the
  imputed error is ê = BCE(r̃, r̂) (``config.epsilon`` clips r̂), a function
  of the CVR prediction, so unclicked impressions move the CVR tower. With
  w = ``inverse_propensity(config, ô)``:

      R     = 1/|D| Σ [ê + o·w·(δ − ê)]             (prediction, r̃ fixed)
      R_imp = 1/|D| Σ o·w·(δ − ê)²                  (dr_jl, r̂ fixed)
      R_imp = 1/|D| Σ c·o·w·(w − 1)·(δ − ê)²        (mrdr, r̂ fixed)

  with c = Σ o·w / Σ o·w·(w − 1) over the batch (a constant in the
  gradient).

  R is the doubly robust estimator of Wang et al., "Doubly Robust Joint
  Learning for Recommendation on Data Missing Not at Random" (ICML 2019), and
  R_imp (dr_jl) the imputation loss of its joint learning, with ê computed
  as their public implementations do (BCE against the pseudo-label, not a
  predicted error). MRDR weighs R_imp by o·(1 − ô)/ô² to minimise the
  estimator's variance (Guo et al., "Enhanced Doubly Robust Learning for
  Debiasing Post-Click Conversion Rate Estimation", SIGIR 2021), written
  through the clipped and capped w (w·(w − 1) = (1 − ô)/ô²). c scales
  MRDR's weights to DR-JL's total, which leaves R_imp's minimiser where it
  was: unscaled, they average about 1/CTR, and the imputation's gradient in
  the layers it shares with the CTR and CVR towers grows with them (at a
  CTR of 2 % the CVR tower then barely ranked: docs/losses.md). The
  papers alternate the two steps; here one step takes both, decoupled by
  stop-gradients: r̃ is constant in R, r̂ (hence δ) in R_imp. So the CVR
  gradient of R is 1/|D| Σ [(1 − o·w) ∂ê/∂r̂ + o·w ∂δ/∂r̂], nonzero on
  unclicked impressions, and R_imp moves only the imputation. With
  ``self_normalized`` every o-weighted sum is divided by Σ o·w instead of
  |D| (SNIPS).

  Args:
    config: ``loss`` (``"dr_jl"`` or ``"mrdr"``), and the clip, cap,
      stop-gradient, normalisation and epsilon of the weights and BCEs.
    click: o, float32[B] of 0/1.
    propensity: ô, float32[B] in (0, 1].
    conversion: r, float32[B] of 0/1.
    cvr: r̂, float32[B] in [0, 1].
    pseudo_label: r̃, float32[B] in [0, 1].

  Returns:
    ``cvr_loss`` (R) and ``imputation_loss`` (R_imp), float32 scalars.
  """
  weighted_click, ips_mean = _ips_mean_fn(config, click, propensity)
  log_loss = functools.partial(binary_cross_entropy, epsilon=config.epsilon)
  delta = log_loss(conversion, cvr)
  error = log_loss(tf.stop_gradient(pseudo_label), cvr)
  fixed_cvr = tf.stop_gradient(cvr)
  deviation = (log_loss(conversion, fixed_cvr)
               - log_loss(pseudo_label, fixed_cvr))
  imputation_weights = weighted_click
  if config.loss == "mrdr":
    variance_weights = weighted_click * (
        inverse_propensity(config, propensity) - 1.0)
    # Scaled to DR-JL's total weight: the same minimiser, but not a gradient
    # ~1/CTR times DR-JL's in the layers the imputation shares.
    imputation_weights = variance_weights * tf.stop_gradient(
        tf.math.divide_no_nan(tf.reduce_sum(weighted_click),
                              tf.reduce_sum(variance_weights)))
  return {
      "cvr_loss": tf.reduce_mean(error) + ips_mean(delta - error),
      "imputation_loss": ips_mean(tf.square(deviation), imputation_weights),
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
      # Two adds at most, which Grappler cannot reorder (see compute_losses).
      "cvr_loss": tf.reduce_mean(
          imputation + weight * (error + tf.square(error))),
      "imputation_loss": tf.reduce_mean(weight * tf.square(error)),
  }
