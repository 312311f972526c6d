"""Exact evaluation metrics (numpy), with the simulator's truth diagnostics.

Final numbers come from ``evaluate_predictions``, which uses the exact,
tie-aware ``exact_auc``; the progress bar's cheap, bucketed AUCs are
``escm2_tf.streaming_auc``'s.

Two CVR AUCs are reported because the literature mixes them: ``auc_cvr`` is
the standard one, over clicked impressions against the conversion label;
``auc_cvr_all`` is PaddleRec's, over all impressions against conversion.
"""

import math
from typing import Mapping

import numpy as np

from escm2_tf import layout
from escm2_tf import ranking

_GROUND_TRUTH_KEYS = (layout.P_CONVERSION, layout.CONVERSION_COUNTERFACTUAL)
_P_CLICK = layout.P_CLICK


def _flat(values: np.ndarray) -> np.ndarray:
  # A view where possible: the columns may hold tens of millions of rows.
  return np.asarray(values).reshape(-1)


def _binary_labels(labels: np.ndarray, name: str) -> np.ndarray:
  """The labels, flat, in their own dtype; raises unless all are 0 or 1."""
  labels = _flat(labels)
  if labels.dtype == bool:
    return labels
  bad = (labels != 0) & (labels != 1)
  if bad.any():
    raise ValueError(f"{name} must be 0/1; {int(bad.sum())} of {labels.size} "
                     f"values are not (first: {labels[bad][0]!r}).")
  return labels


def _finite_scores(scores: np.ndarray, name: str) -> np.ndarray:
  scores = _flat(scores)
  if scores.dtype.kind not in "biuf":
    scores = scores.astype(np.float64)
  bad = ~np.isfinite(scores)
  if bad.any():
    raise ValueError(f"{name} has {int(bad.sum())} non-finite values of "
                     f"{scores.size}.")
  return scores


def _mean(values: np.ndarray) -> float:
  """The mean in float64, without a float64 copy of float32 values."""
  return float(np.mean(values, dtype=np.float64))


def exact_auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Exact ROC AUC by the rank-sum (Mann-Whitney U) statistic, O(n log n).

  Tied scores get their average rank, so a tie between a positive and a
  negative counts one half. Scores keep their dtype (float32 columns are not
  widened) and the extra memory is 8 bytes per example (``ranking``).

  Args:
    labels: 0/1 labels, any shape.
    scores: Finite scores of the same size; higher means more positive.

  Returns:
    The AUC, or NaN when only one class (or nothing) is present.

  Raises:
    ValueError: Labels are not 0/1, scores are not finite, or sizes differ.
  """
  labels = _binary_labels(labels, "labels")
  scores = _finite_scores(scores, "scores")
  if labels.size != scores.size:
    raise ValueError(f"labels has {labels.size} values but scores has "
                     f"{scores.size}.")
  return ranking.sorted_auc(labels == 1, scores)


def log_loss(labels: np.ndarray, predictions: np.ndarray,
             epsilon: float = 1e-7) -> float:
  """Mean binary cross-entropy, predictions clipped to [eps, 1 - eps].

  Computed in float64, ``ranking.CHUNK`` rows at a time. NaN for empty input.
  """
  labels = _binary_labels(labels, "labels")
  predictions = _finite_scores(predictions, "predictions")
  if labels.size == 0:
    return math.nan
  total = 0.0
  for start in range(0, labels.size, ranking.CHUNK):
    end = start + ranking.CHUNK
    p = np.clip(predictions[start:end].astype(np.float64), epsilon,
                1.0 - epsilon)
    y = labels[start:end].astype(np.float64)
    total += float(np.sum(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))
  return -total / labels.size


def calibration(labels: np.ndarray, predictions: np.ndarray) -> float:
  """Mean prediction / mean label; NaN when the mean label is 0 (or empty)."""
  labels, predictions = _flat(labels), _flat(predictions)
  if labels.size == 0 or _mean(labels) == 0:
    return math.nan
  return _mean(predictions) / _mean(labels)


def _aligned(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Flattens without copies; raises naming the array whose size differs."""
  flat = {name: _flat(value) for name, value in arrays.items()}
  sizes = {name: value.size for name, value in flat.items()}
  if len(set(sizes.values())) > 1:
    raise ValueError("evaluate_predictions: arrays differ in length: " +
                     ", ".join(f"{n}={s}" for n, s in sizes.items()) + ".")
  return flat


def evaluate_predictions(
    click: np.ndarray, conversion: np.ndarray, ctr: np.ndarray,
    cvr: np.ndarray, ctcvr: np.ndarray,
    ground_truth: Mapping[str, np.ndarray] | None = None) -> dict[str, float]:
  """Exact metrics of the three tasks, as plain (JSON-ready) floats.

  Args:
    click: 0/1 click labels of every impression.
    conversion: 0/1 conversion labels, aligned with ``click``.
    ctr: pCTR per impression.
    cvr: pCVR per impression (over the entire space).
    ctcvr: pCTCVR per impression.
    ground_truth: Optional simulator truth aligned with the predictions:
      ``p_conversion`` (true CVR probability) and
      ``conversion_counterfactual`` (the conversion had the user clicked);
      optionally ``p_click`` (the true click probability), which adds the
      ``_truth`` calibrations and the propensity metrics below; other keys
      are ignored.

  Returns:
    ``auc_{ctr,cvr,cvr_all,ctcvr}``, ``logloss_{ctr,cvr,ctcvr}``,
    ``calibration_{ctr,cvr,ctcvr}`` (cvr ones on clicked impressions only,
    except ``auc_cvr_all``), ``count``, ``clicks``, ``conversions``, and with
    ground truth ``cvr_bias`` (mean pCVR − mean true p_conversion, over all
    impressions), ``cvr_bias_clicked`` (the same over clicked ones),
    ``auc_cvr_truth`` (pCVR against the counterfactual conversion, all
    impressions), ``true_cvr_mean`` and ``calibration_cvr_truth`` (mean pCVR
    over the mean true p_conversion, on clicked impressions), and with
    ``p_click`` also ``calibration_ctr_truth`` and ``calibration_ctcvr_truth``
    (mean pCTR over mean p_click, mean pCTCVR over mean p_click·p_conversion)
    and the propensity metrics of ``propensity_metrics``.
    The ``_truth`` calibrations divide by the expected labels instead of the
    drawn ones, free of the test set's label noise (a few dozen conversions
    move ``calibration_ctcvr`` by 10 % or more). Undefined values are NaN.
  """
  arrays = {"click": click, "conversion": conversion, "ctr": ctr, "cvr": cvr,
            "ctcvr": ctcvr}
  if ground_truth is not None:
    missing = [key for key in _GROUND_TRUTH_KEYS if key not in ground_truth]
    if missing:
      raise ValueError(f"evaluate_predictions: ground_truth lacks {missing}.")
    arrays.update({key: ground_truth[key] for key in _GROUND_TRUTH_KEYS})
    if _P_CLICK in ground_truth:
      arrays[_P_CLICK] = ground_truth[_P_CLICK]
  a = _aligned(arrays)
  click = _binary_labels(a["click"], "click")
  conversion = _binary_labels(a["conversion"], "conversion")
  clicked = click == 1
  # Booleans: one byte a row, and counts that stay exact past 2**24 rows.
  ctcvr_label = clicked & (conversion == 1)
  converted, cvr_clicked = conversion[clicked], a["cvr"][clicked]
  result = {
      "auc_ctr": exact_auc(click, a["ctr"]),
      "auc_cvr": exact_auc(converted, cvr_clicked),
      "auc_cvr_all": exact_auc(conversion, a["cvr"]),
      "auc_ctcvr": exact_auc(ctcvr_label, a["ctcvr"]),
      "logloss_ctr": log_loss(click, a["ctr"]),
      "logloss_cvr": log_loss(converted, cvr_clicked),
      "logloss_ctcvr": log_loss(ctcvr_label, a["ctcvr"]),
      "calibration_ctr": calibration(click, a["ctr"]),
      "calibration_cvr": calibration(converted, cvr_clicked),
      "calibration_ctcvr": calibration(ctcvr_label, a["ctcvr"]),
      "count": float(click.size),
      "clicks": float(np.count_nonzero(clicked)),
      "conversions": float(np.count_nonzero(conversion)),
  }
  if ground_truth is not None:
    truth = a["p_conversion"]
    result.update({
        "cvr_bias": _mean_difference(a["cvr"], truth),
        "cvr_bias_clicked": _mean_difference(cvr_clicked, truth[clicked]),
        "auc_cvr_truth": exact_auc(a["conversion_counterfactual"], a["cvr"]),
        "true_cvr_mean": _mean(truth) if truth.size else math.nan,
        "calibration_cvr_truth": calibration(truth[clicked], cvr_clicked),
    })
    if _P_CLICK in a:
      result.update({
          "calibration_ctr_truth": calibration(a[_P_CLICK], a["ctr"]),
          "calibration_ctcvr_truth": calibration(a[_P_CLICK] * truth,
                                                 a["ctcvr"]),
      })
      result.update(propensity_metrics(
          click, a["ctr"], a[_P_CLICK], truth))
  return result


def reliability_curve(predictions: np.ndarray, truth: np.ndarray,
                      num_bins: int = 10) -> dict[str, np.ndarray]:
  """Mean prediction against mean true probability, in prediction quantiles.

  Quantile bins hold equal numbers of impressions, so every point of the
  diagram averages the same amount of data however skewed the predictions.

  Args:
    predictions: Predicted probabilities, one per impression.
    truth: The true probabilities of the same impressions.
    num_bins: Number of bins (fewer if many predictions tie).

  Returns:
    ``predicted`` and ``true`` (the bins' means) and ``count`` per bin, in
    increasing order of prediction.

  Raises:
    ValueError: Sizes differ, nothing is given, or ``num_bins`` < 1.
  """
  predictions = np.asarray(predictions, dtype=np.float64).reshape(-1)
  truth = np.asarray(truth, dtype=np.float64).reshape(-1)
  if predictions.size != truth.size or not predictions.size:
    raise ValueError(f"reliability_curve needs equally many, and some, "
                     f"predictions ({predictions.size}) and true values "
                     f"({truth.size}).")
  if num_bins < 1:
    raise ValueError(f"num_bins must be at least 1, got {num_bins}.")
  edges = np.unique(np.quantile(predictions, np.linspace(0, 1, num_bins + 1)))
  # Interior edges only: searchsorted then puts every value into a bin.
  bins = np.searchsorted(edges[1:-1], predictions, side="right")
  count = np.bincount(bins, minlength=len(edges) - 1)
  used = count > 0
  return {
      "predicted": (np.bincount(bins, predictions, len(count))[used] /
                    count[used]),
      "true": np.bincount(bins, truth, len(count))[used] / count[used],
      "count": count[used],
  }


def propensity_metrics(click: np.ndarray, ctr: np.ndarray,
                       p_click: np.ndarray, p_conversion: np.ndarray,
                       num_bins: int = 10) -> dict[str, float]:
  """How well pCTR serves as the propensity of IPW and DR, against the truth.

  Returns:
    ``auc_ctr_oracle``: the AUC of the true ``p_click`` against the clicks,
    the best any CTR model can reach on these labels (compare ``auc_ctr``).
    ``ctr_calibration_error``: mean |bin's mean pCTR - bin's mean true
    p_click| over ``num_bins`` pCTR quantile bins (``reliability_curve``),
    relative to the mean true p_click; 0 for pCTR calibrated in every bin.
    ``ips_true_cvr``: the true CVR of the clicked impressions weighted by
    1/pCTR (self-normalised), i.e. the entire-space CVR that inverse
    propensity weighting with this pCTR aims the CVR tower at.
    ``ips_true_cvr_oracle``: the same with the true p_click as propensity;
    it estimates the true entire-space CVR (``true_cvr_mean``). How far
    ``ips_true_cvr`` stays from it is the bias the propensities leave.
  """
  clicked = click == 1
  ctr = np.asarray(ctr, dtype=np.float64)  # 1 / pCTR in float64.
  curve = reliability_curve(ctr, p_click, num_bins)
  gap = np.average(np.abs(curve["predicted"] - curve["true"]),
                   weights=curve["count"])
  # pCTR can underflow to 0 in float32; the floor only guards the division.
  learnt = 1.0 / np.maximum(ctr[clicked], 1e-12)
  oracle = 1.0 / p_click[clicked]
  return {
      "auc_ctr_oracle": exact_auc(click, p_click),
      "ctr_calibration_error": float(gap / p_click.mean()),
      "ips_true_cvr": _weighted_mean(p_conversion[clicked], learnt),
      "ips_true_cvr_oracle": _weighted_mean(p_conversion[clicked], oracle),
  }


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
  if values.size == 0:
    return math.nan
  return float(np.average(values, weights=weights))


def _mean_difference(predictions: np.ndarray, truth: np.ndarray) -> float:
  if predictions.size == 0:
    return math.nan
  return _mean(predictions) - _mean(truth)
