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
  in paper mode), on the training impressions: the CVR logit z becomes
  a * z + b, the slope from the estimator's own CVR risk and the level from
  its IPS estimate (``counterfactual_refit``, which says why).

``compat="paddlerec"`` keeps its CVR tower as trained: PaddleRec's risks are
normalised per batch. The imputation towers are left alone. The changes are
part of the weights, so checkpoints, exports and serving see them.

    rates = base_rates.read_base_rates(layout.stats_beside(vocab_dir))
    changes = recalibration.recalibrate(model, held_out_batches, rates,
                                        training=training_batches)
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

from typing import Iterable

import numpy as np
import tf_keras as keras

from escm2_tf import base_rates as base_rates_lib
from escm2_tf import config as config_lib
from escm2_tf import counterfactual_refit
from escm2_tf import output_logits

# The training impressions the counterfactual CVR is refit on, at most
# (about 80 MB of scores), and the batch size of their pass.
MAX_RISK_IMPRESSIONS = 2_000_000
SCORING_BATCH_SIZE = 4096


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
  held = output_logits.score(model, held_out)
  ctr_shift = output_logits.logit_shift(held.logits[:, 0], rates.ctr)
  output_logits.transform_logits(model, 0, 1.0, ctr_shift)
  slope, cvr_shift = 1.0, 0.0
  loss_config = model.loss_config
  weights = cvr_weights(loss_config.loss,
                        output_logits.sigmoid(held.logits[:, 0] + ctr_shift),
                        held.clicked)
  if weights is not None and weights.sum() > 0.0:
    cvr_shift = output_logits.logit_shift(held.logits[:, 1], rates.cvr,
                                          weights)
  elif (weights is None and training is not None
        and loss_config.compat == "paper"):
    slope, cvr_shift = counterfactual_refit.counterfactual_refit(
        loss_config,
        output_logits.score(model, training, MAX_RISK_IMPRESSIONS))
  output_logits.transform_logits(model, 1, slope, cvr_shift)
  return {"ctr": ctr_shift, "cvr": cvr_shift, "cvr_slope": slope}
