"""PaddleRec's ESCM2 risks, for ``compat="paddlerec"``.

``escm2_tf.losses.compute_losses`` with ``compat="paddlerec"`` reproduces
PaddleRec's models/multitask/escm2 instead of the paper, defects included
(normalisation by the batch's clicks, a fixed weight cap, joint DR training).
This module holds what differs from the paper: paddle's log loss, with its
epsilon added inside the logs, and the IPW and DR risks as PaddleRec's dygraph
and static models compute them.
"""

import tensorflow as tf

# Constants PaddleRec hard-codes (dygraph_model.py, static_model.py).
PADDLEREC_EPSILON = 1e-4
PADDLEREC_MIN_PROPENSITY = 1e-6
PADDLEREC_MAX_WEIGHT = 15.0


def paddle_log_loss(labels: tf.Tensor, probs: tf.Tensor) -> tf.Tensor:
  """paddle.nn.functional.log_loss: epsilon is added inside the logs."""
  return -(labels * tf.math.log(probs + PADDLEREC_EPSILON) +
           (1.0 - labels) * tf.math.log(1.0 - probs + PADDLEREC_EPSILON))


def paddlerec_counterfactual(
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
      # Two adds at most, which Grappler cannot reorder (see
      # losses.compute_losses).
      "cvr_loss": tf.reduce_mean(
          imputation + weight * (error + tf.square(error))),
      "imputation_loss": tf.reduce_mean(weight * tf.square(error)),
  }
