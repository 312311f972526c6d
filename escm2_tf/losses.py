"""ESCM2's multi-task risks: naive, ESMM, ESCM2-IPW, ESCM2-DR, DR-JL, MRDR.

Notation per impression i (Wang et al., "ESCM2", SIGIR 2022): o = click,
r = conversion, ô = pCTR, r̂ = pCVR, δ = BCE(r, r̂). Every estimator minimises

    L = L_ctr + lambda_c * L_cvr + lambda_g * L_ctcvr   (the paper's total risk)

with L_ctr the empirical risk of the CTR task (mean BCE(o, ô) over all
impressions, D) and L_ctcvr the global risk (mean BCE(o·r, ô·r̂) over D). The
estimators differ in the counterfactual CVR risk L_cvr; see ``compute_losses``.
The risks themselves are pure functions of tensors in
``escm2_tf.paper_risks``; ``compat="paddlerec"`` reproduces PaddleRec's
models/multitask/escm2 instead, with those of ``escm2_tf.paddlerec_risks``.
"""

import functools
from typing import Mapping

import tensorflow as tf

from escm2_tf import config as config_lib
from escm2_tf import layout
from escm2_tf import paddlerec_risks
from escm2_tf import paper_risks
from escm2_tf import schema

# The label holding a known click propensity, for propensity="label": the
# simulator's true click probability, its ground truth's column.
PROPENSITY_LABEL = layout.P_CLICK


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
    then move; see ``paper_risks.joint_learning_risks``. The total adds
    ``lambda_imp * R_imp``.
  * ``self_normalized`` (ipw, dr, dr_jl, mrdr): 1/|D| in front of every sum
    over o_i/ô_i becomes 1/Σ_i o_i/ô_i (SNIPS); 0 for a batch without
    clicks.

  ``compat="paddlerec"``: see ``paddlerec_risks.paddlerec_counterfactual``;
  every log loss is paddle's (epsilon 1e-4 added inside the logs) and CTCVR
  is labelled with r.

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
    log_loss = paddlerec_risks.paddle_log_loss
    # PaddleRec labels CTCVR with its raw buy column.
    ctcvr_label = conversion
  else:
    log_loss = functools.partial(paper_risks.binary_cross_entropy,
                                 epsilon=config.epsilon)
    ctcvr_label = click * conversion
  delta = log_loss(conversion, cvr)
  if config.loss in ("naive", "esmm"):
    result = {"cvr_loss": _clicked_mean(click, delta)}
  elif paddlerec:
    result = paddlerec_risks.paddlerec_counterfactual(
        config.loss, click, ctr, delta, imputation)
  else:
    propensity = propensity_of(config, labels, outputs)
    if config.loss in config_lib.JOINT_LEARNING_LOSSES:
      result = paper_risks.joint_learning_risks(
          config, click, propensity, conversion, cvr, imputation)
    else:
      result = paper_risks.paper_counterfactual(
          config, click, propensity, delta, imputation)
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
  with the risks' weights w = ``paper_risks.inverse_propensity(config, ô)``:
  the same normalisation, clip and cap as R_IPS (formulas/escm2_ipw.png),
  whose value it is for the loss r instead of δ. It reads labels and ô only,
  so it is not moved by what the CVR tower memorised of the clicks.

  Returns:
    A float32 scalar (0 for a SNIPS batch without clicks).
  """
  click = _vector(labels, schema.CLICK, "labels")
  conversion = _vector(labels, schema.CONVERSION, "labels")
  _, ips_mean = paper_risks.ips_mean_fn(
      config, click, propensity_of(config, labels, outputs))
  return ips_mean(conversion)
