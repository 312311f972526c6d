"""The paper's risks, for ``compat="paper"``: its log loss and CVR risks.

``escm2_tf.losses.compute_losses`` assembles the total risk from these pure
functions of tensors: the clipped BCE (δ and the CTR and CTCVR risks), the
inverse propensity weights w = 1/ô and the IPS mean over the batch that every
counterfactual estimator shares, ESCM2's IPW and DR risks (Wang et al.,
"ESCM2", SIGIR 2022), and the doubly robust joint learning risks of DR-JL and
MRDR.
"""

import functools

import tensorflow as tf

from escm2_tf import config as config_lib


def binary_cross_entropy(labels: tf.Tensor, probs: tf.Tensor,
                         epsilon: float) -> tf.Tensor:
  """Per-impression BCE of probabilities clipped to [epsilon, 1 - epsilon]."""
  probs = tf.clip_by_value(probs, epsilon, 1.0 - epsilon)
  return -(labels * tf.math.log(probs) +
           (1.0 - labels) * tf.math.log(1.0 - probs))


def inverse_propensity(config: config_lib.LossConfig,
                       propensity: tf.Tensor) -> tf.Tensor:
  """1 / max(ô, propensity_clip), capped and stop-gradient as configured."""
  weight = 1.0 / tf.maximum(propensity, config.propensity_clip)
  if config.max_ips_weight is not None:
    weight = tf.minimum(weight, config.max_ips_weight)
  if config.stop_ips_gradient:
    weight = tf.stop_gradient(weight)
  return weight


def ips_mean_fn(config: config_lib.LossConfig, click: tf.Tensor,
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


def paper_counterfactual(config: config_lib.LossConfig, click: tf.Tensor,
                         propensity: tf.Tensor, delta: tf.Tensor,
                         imputation: tf.Tensor | None) -> dict[str, tf.Tensor]:
  """R_IPS, or R_err and R_imp with the decoupling stop-gradients."""
  _, ips_mean = ips_mean_fn(config, click, propensity)
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
  weighted_click, ips_mean = ips_mean_fn(config, click, propensity)
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
