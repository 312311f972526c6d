"""The study's summary: intervals per estimator, paired differences, verdicts.

The verdict follows the study's target for ESCM2: in a regime, IPW and DR each
have an entire-space |cvr_bias| below both ESMM's and the naive estimator's,
with 95 % intervals of the paired |bias| difference that exclude zero, and the
better of the two has at most half of ESMM's mean |bias|.

Each regime also gets its identifiable floor (``escm2_tf.study.floor``, per
seed from the dataset) and, per estimator, the share of the achievable gap
it closes: (ESMM's mean bias − its mean bias) / (ESMM's mean bias − the mean
floor), signed biases, so 1 is the floor and 0 is ESMM.
"""

import math
from typing import Any, Mapping, Sequence

from escm2_tf.study import grid
from escm2_tf.study import stats

# Metrics of metrics.json summarised per (regime, estimator).
METRICS = ("cvr_bias", "abs_cvr_bias", "cvr_bias_clicked", "calibration_cvr",
           "auc_cvr", "auc_cvr_truth", "auc_ctr", "auc_ctr_oracle",
           "calibration_ctr", "calibration_ctcvr", "ctr_calibration_error",
           "ips_true_cvr", "ips_true_cvr_oracle", "true_cvr_mean", "epochs",
           "best_epoch")
REFERENCES = ("esmm", "naive")
COUNTERFACTUAL = ("ipw", "dr")
FLOORS = ("floor", "floor_without_ids", "floor_true_propensity")


def _value(run: Mapping[str, Any], metric: str) -> float:
  if metric in ("epochs", "best_epoch"):
    value = run.get(metric)
    return math.nan if value is None else float(value)
  if metric == "abs_cvr_bias":
    bias = run["metrics"].get("cvr_bias")
    return math.nan if bias is None else abs(bias)
  value = run["metrics"].get(metric)
  return math.nan if value is None else float(value)


def _seeds(runs: Sequence[Mapping[str, Any]], regime: str, estimator: str,
           metric: str) -> dict[int, float]:
  return {run["seed"]: _value(run, metric) for run in runs
          if run["regime"] == regime and run["estimator"] == estimator}


def summarise(config: grid.StudyConfig,
              runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Intervals, paired differences and verdicts of the finished runs.

  Returns:
    ``{"metrics": {regime: {estimator: {metric: interval}}},
    "paired": {regime: {estimator: {"vs_<reference>": {"abs_bias": interval,
    "bias": interval}}}}, "verdicts": {regime: {...}}}`` where an interval is
    ``stats.interval``'s dict (NaN bounds as None in JSON).
  """
  metrics, paired, verdicts, floors, gaps = {}, {}, {}, {}, {}
  for regime in config.regimes:
    name = regime.name
    metrics[name] = {
        estimator: {metric: _json(stats.interval(
            _seeds(runs, name, estimator, metric).values()))
                    for metric in METRICS}
        for estimator in config.estimators}
    paired[name] = {}
    for estimator in config.estimators:
      bias = _seeds(runs, name, estimator, "cvr_bias")
      paired[name][estimator] = {
          f"vs_{reference}": {
              "abs_bias": _json(stats.paired(
                  bias, _seeds(runs, name, reference, "cvr_bias"), abs)),
              "bias": _json(stats.paired(
                  bias, _seeds(runs, name, reference, "cvr_bias")))}
          for reference in REFERENCES
          if reference in config.estimators and reference != estimator}
    verdicts[name] = verdict(metrics[name], paired[name])
    floors[name] = {kind: _json(stats.interval(
        _floors(runs, name, kind).values())) for kind in FLOORS}
    gaps[name] = gap_closed(metrics[name], floors[name]["floor"]["mean"])
  return {"metrics": metrics, "paired": paired, "verdicts": verdicts,
          "floors": floors, "gap_closed": gaps}


def _floors(runs: Sequence[Mapping[str, Any]], regime: str,
            kind: str) -> dict[int, float]:
  """A floor of each seed's dataset (every run of the seed carries it)."""
  return {run["seed"]: run["data"]["floor"][kind] for run in runs
          if run["regime"] == regime and "floor" in run.get("data", {})}


def gap_closed(metrics: Mapping[str, Mapping[str, Any]],
               floor: float | None) -> dict[str, float | None]:
  """Per estimator, the share of ESMM's bias above the floor it removes."""
  esmm = metrics.get("esmm", {}).get("cvr_bias", {}).get("mean")
  out = {}
  for estimator, cells in metrics.items():
    bias = cells["cvr_bias"]["mean"]
    gap = None if esmm is None or floor is None else esmm - floor
    out[estimator] = (None if bias is None or not gap
                      else (esmm - bias) / gap)
  return out


def _json(summary: dict[str, float]) -> dict[str, float | None]:
  return {k: None if isinstance(v, float) and math.isnan(v) else v
          for k, v in summary.items()}


def _below(difference: Mapping[str, float | None] | None) -> bool:
  """The paired |bias| difference's whole interval is below zero."""
  return bool(difference and difference["high"] is not None
              and difference["high"] < 0)


def verdict(metrics: Mapping[str, Mapping[str, Any]],
            paired: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
  """Whether ESCM2 meets the study's target in one regime.

  Returns:
    Per counterfactual estimator ``below_esmm``/``below_naive`` (its paired
    |bias| difference's interval lies below zero); ``better`` (the one of
    IPW and DR with the lower mean |bias|), ``better_over_esmm`` (its mean
    |bias| over ESMM's) and ``met`` (all of it, with the ratio <= 0.5).
    ``met`` is None when the grid lacks an estimator the target names.
  """
  out: dict[str, Any] = {}
  needed = set(COUNTERFACTUAL) | set(REFERENCES)
  if not needed <= set(metrics):
    return {"met": None}
  for estimator in COUNTERFACTUAL:
    out[estimator] = {
        f"below_{reference}": _below(
            paired[estimator].get(f"vs_{reference}", {}).get("abs_bias"))
        for reference in REFERENCES}
  mean_abs = {e: metrics[e]["abs_cvr_bias"]["mean"] for e in needed}
  if any(value is None for value in mean_abs.values()):
    return {"met": None}
  better = min(COUNTERFACTUAL, key=lambda e: mean_abs[e])
  ratio = (mean_abs[better] / mean_abs["esmm"] if mean_abs["esmm"] > 0
           else math.inf)
  out["better"] = better
  out["better_over_esmm"] = ratio
  out["met"] = bool(ratio <= 0.5 and all(
      all(flags.values()) for e, flags in out.items()
      if e in COUNTERFACTUAL))
  return out
