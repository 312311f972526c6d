"""The study's summary: intervals per estimator, paired differences, verdicts.

The verdict follows the study's target for ESCM2: in a regime, IPW and DR each
have an entire-space |cvr_bias| below both ESMM's and the naive estimator's,
with 95 % intervals of the paired |bias| difference that exclude zero, and the
better of the two has at most half of ESMM's mean |bias|.

Each regime is also checked against the targets of docs/results.md
(``targets``): every true-propensity arm's bias interval contains 0; the
least biased counterfactual estimator keeps at most 0.3 of ESMM's mean |bias|
with a paired interval below zero; every counterfactual estimator closes at
least 70 % of the achievable gap; DR-JL or MRDR is less biased than IPW,
with a paired interval of their |bias| difference below zero; every
estimator's calibration_ctr lies in [0.9, 1.1], calibration_ctcvr and
calibration_cvr (pCVR on clicks) in [0.85, 1.15], as means over seeds.

Each regime also gets its identifiable floor (``escm2_tf.study.floor``, per
seed from the dataset) and, per estimator, the share of the achievable gap
it closes: (ESMM's mean bias − its mean bias) / (ESMM's mean bias − the mean
floor), signed biases, so 1 is the floor and 0 is ESMM. There is a gap to
close only where ESMM's bias lies above the floor with a paired interval
(seed by seed) above zero; elsewhere (ESMM at the floor, or below it) the
shares are undefined rather than a ratio over noise.
"""

import math
from typing import Any, Mapping, Sequence

from escm2_tf import config as config_lib
from escm2_tf.study import floor as floor_lib
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
FLOORS = floor_lib.KINDS
BEST_OVER_ESMM = 0.3
GAP_CLOSED = 0.7
CALIBRATION_RANGES = {"calibration_ctr": (0.9, 1.1),
                      "calibration_ctcvr": (0.85, 1.15),
                      "calibration_cvr": (0.85, 1.15)}


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
  metrics, paired, verdicts, floors, gaps, achievable = {}, {}, {}, {}, {}, {}
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
          for reference in _references(estimator)
          if reference in config.estimators and reference != estimator}
    verdicts[name] = verdict(metrics[name], paired[name])
    by_kind = {kind: _floors(runs, name, kind) for kind in FLOORS}
    floors[name] = {kind: _json(stats.interval(seeds.values()))
                    for kind, seeds in by_kind.items()}
    achievable[name] = _json(stats.paired(
        _seeds(runs, name, "esmm", "cvr_bias"), by_kind["floor"]))
    gaps[name] = gap_closed(metrics[name], floors[name]["floor"]["mean"],
                            achievable[name])
  out = {"metrics": metrics, "paired": paired, "verdicts": verdicts}
  if any("floor" in run.get("data", {}) for run in runs):
    # Results of studies before the floor existed keep their summary.
    out.update(floors=floors, gap_closed=gaps, achievable_gap=achievable)
    out["targets"] = {name: targets(metrics[name], paired[name], gaps[name])
                      for name in metrics}
  return out


def _references(estimator: str) -> tuple[str, ...]:
  """The estimators ``estimator`` is paired with, seed by seed."""
  # The doubly robust ones also with IPW: what their imputation adds.
  return REFERENCES + (("ipw",) if estimator in config_lib.IMPUTATION_LOSSES
                       else ())


def _contains_zero(cell: Mapping[str, float | None]) -> bool | None:
  if cell["low"] is None or cell["high"] is None:
    return None
  return cell["low"] <= 0.0 <= cell["high"]


def targets(metrics: Mapping[str, Mapping[str, Any]],
            paired: Mapping[str, Mapping[str, Any]],
            gaps: Mapping[str, float | None]) -> dict[str, Any]:
  """The targets of one regime (the module docstring), each with its numbers.

  Returns:
    ``{"true_propensity": {arm: bias interval contains 0},
    "best": the counterfactual estimator of least mean |bias| (None without
    one or ESMM), "best_over_esmm", "best_below_esmm" (its paired |bias|
    interval below zero), "gap_closed": {estimator: share},
    "vs_ipw": {dr_jl or mrdr: their paired |bias| difference with IPW},
    "out_of_range": {estimator: [calibration metrics outside their range]},
    "met": {target: bool or None}}``.
  """
  true_arms = {e: _contains_zero(cells["cvr_bias"])
               for e, cells in metrics.items()
               if e.endswith(grid.TRUE_PROPENSITY)}
  counterfactual = [e for e in metrics if e in grid.COUNTERFACTUAL
                    and metrics[e]["abs_cvr_bias"]["mean"] is not None]
  best = ratio = below = None
  esmm = metrics.get("esmm", {}).get("abs_cvr_bias", {}).get("mean")
  if counterfactual and esmm:
    best = min(counterfactual,
               key=lambda e: metrics[e]["abs_cvr_bias"]["mean"])
    ratio = metrics[best]["abs_cvr_bias"]["mean"] / esmm
    below = _below(paired[best].get("vs_esmm", {}).get("abs_bias"))
  shares = {e: gaps.get(e) for e in counterfactual}
  vs_ipw = {e: paired[e]["vs_ipw"]["abs_bias"]
            for e in config_lib.JOINT_LEARNING_LOSSES
            if "vs_ipw" in paired.get(e, {})
            and paired[e]["vs_ipw"]["abs_bias"]["mean"] is not None}
  out_of_range = {
      e: [metric for metric, (low, high) in CALIBRATION_RANGES.items()
          if cells[metric]["mean"] is not None
          and not low <= cells[metric]["mean"] <= high]
      for e, cells in metrics.items()}
  met = {
      "true_propensity": (all(true_arms.values()) if true_arms
                          and None not in true_arms.values() else None),
      "best_over_esmm": (None if ratio is None
                         else bool(ratio <= BEST_OVER_ESMM and below)),
      "gap_closed": (None if not shares or None in shares.values()
                     else all(v >= GAP_CLOSED for v in shares.values())),
      "joint_learning_below_ipw": (
          any(_below(d) for d in vs_ipw.values()) if vs_ipw else None),
      "calibration": not any(out_of_range.values())}
  return {"true_propensity": true_arms, "best": best,
          "best_over_esmm": ratio, "best_below_esmm": below,
          "gap_closed": shares, "vs_ipw": vs_ipw,
          "out_of_range": out_of_range, "met": met}


def _floors(runs: Sequence[Mapping[str, Any]], regime: str,
            kind: str) -> dict[int, float]:
  """A floor of each seed's dataset (every run of the seed carries it)."""
  # Runs of datasets made before a kind existed lack it.
  return {run["seed"]: run["data"]["floor"][kind] for run in runs
          if run["regime"] == regime
          and kind in run.get("data", {}).get("floor", {})}


def gap_closed(metrics: Mapping[str, Mapping[str, Any]], floor: float | None,
               achievable: Mapping[str, float | None]
               ) -> dict[str, float | None]:
  """Per estimator, the share of ESMM's bias above the floor it removes.

  Args:
    metrics: The regime's intervals per estimator.
    floor: The mean floor over seeds.
    achievable: ``stats.paired`` of ESMM's bias less the floor, seed by seed.
      Unless its interval lies above zero there is no gap to close, and
      every share is None.
  """
  esmm = metrics.get("esmm", {}).get("cvr_bias", {}).get("mean")
  gap = (None if esmm is None or floor is None or achievable["low"] is None
         or achievable["low"] <= 0.0 else esmm - floor)
  return {estimator: (None if gap is None or cells["cvr_bias"]["mean"] is None
                      else (esmm - cells["cvr_bias"]["mean"]) / gap)
          for estimator, cells in metrics.items()}


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
