"""The study's Markdown tables and figures, from its results JSON.

Tables: per regime and estimator the mean and 95 % interval over seeds of the
bias and quality metrics; the paired differences against ESMM and naive; the
verdict on the study's target. Figures (``escm2_tf.plotting``, which needs the
optional matplotlib): the entire-space bias with its intervals per regime, and
reliability curves of pCTR and pCVR against the true probabilities, the
deciles averaged over seeds.
"""

import math
import os
from typing import Any, Mapping

import numpy as np

from escm2_tf.study import floor as floor_lib
from escm2_tf.study import grid as grid_lib
from escm2_tf.study import regime as regime_lib
from escm2_tf.study import summary as summary_lib

NAMES = {"naive": "naive", "esmm": "ESMM", "ipw": "ESCM2-IPW",
         "dr": "ESCM2-DR", "dr_jl": "DR-JL", "mrdr": "MRDR",
         "ipw_paddlerec": "ESCM2-IPW (PaddleRec)",
         "dr_paddlerec": "ESCM2-DR (PaddleRec)"}
BIAS_COLUMNS = ("cvr_bias", "abs_cvr_bias", "cvr_bias_clicked",
                "calibration_cvr")
QUALITY_COLUMNS = ("auc_cvr", "auc_cvr_truth", "auc_ctr", "auc_ctr_oracle",
                   "calibration_ctr", "calibration_ctcvr", "ips_true_cvr",
                   "ips_true_cvr_oracle", "epochs", "best_epoch")
_SIGNED = ("cvr_bias", "cvr_bias_clicked")


def _name(estimator: str) -> str:
  loss, propensity = grid_lib.estimator_loss(estimator)
  name = NAMES.get(loss, loss)
  return f"{name} (true p_click)" if propensity == "label" else name


def _cell(summary: Mapping[str, Any], metric: str = "") -> str:
  mean, low, high = summary["mean"], summary["low"], summary["high"]
  if mean is None or (isinstance(mean, float) and math.isnan(mean)):
    return "n/a"
  sign = "+" if metric in _SIGNED or metric == "difference" else ""
  digits = 2 if metric in ("epochs", "best_epoch") else 4
  text = f"{mean:{sign}.{digits}f}"
  if low is None or high is None:
    return text
  return f"{text} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return lines


def markdown(results: Mapping[str, Any]) -> str:
  """The study's tables as one Markdown document."""
  grid, summary = results["grid"], results["summary"]
  estimators = grid["estimators"]
  lines = ["# escm2-study results", "",
           "Written by `escm2-study` (escm2_tf/study); docs/results.md "
           "reads it.", "",
           f"{len(results['runs'])} runs: {len(grid['regimes'])} regimes x "
           f"{len(grid['seeds'])} seeds ({', '.join(map(str, grid['seeds']))})"
           f" x {len(estimators)} estimators, each trained with the library's "
           "defaults. Cells: mean over seeds [95 % t-interval].", "",
           "## Regimes", ""]
  rows = []
  for regime in grid["regimes"]:
    runs = [r for r in results["runs"] if r["regime"] == regime["name"]]
    data = runs[0]["data"] if runs else {}
    train, test = data.get("train", {}), data.get("test", {})
    rows.append([regime["name"], f"{regime['ctr']:g}", f"{regime['cvr']:g}",
                 regime_lib.correlation_text(regime["correlation"]),
                 f"{regime['num_train']:,}", f"{regime.get('num_users', 0):,}",
                 f"{regime.get('num_items', 0):,}",
                 str(train.get("clicks", "")),
                 str(train.get("conversions", "")),
                 f"{regime['num_test']:,}",
                 _fmt(test.get("true_cvr_all")),
                 _fmt(test.get("true_cvr_clicked")),
                 _fmt(test.get("logit_correlation"), 2)])
  lines += _table(["regime", "CTR", "CVR (clicks)", "correlation knob",
                   "train impressions", "users", "items",
                   "train clicks (seed 0)",
                   "train conversions (seed 0)", "test impressions",
                   "true CVR, all (seed 0)", "true CVR, clicks (seed 0)",
                   "logit correlation (seed 0)"], rows)
  for title, columns in (("Bias", BIAS_COLUMNS),
                         ("Ranking, calibration, propensities",
                          QUALITY_COLUMNS)):
    lines += ["", f"## {title}", ""]
    rows = [[regime["name"], _name(estimator)] +
            [_cell(summary["metrics"][regime["name"]][estimator][c], c)
             for c in columns]
            for regime in grid["regimes"] for estimator in estimators]
    lines += _table(["regime", "estimator"] + list(columns), rows)
  lines += ["", "## Paired differences (same seed, same data)", "",
            "Δ\\|bias\\| = \\|cvr_bias\\| − the reference's \\|cvr_bias\\|, "
            "seed by seed;"
            " negative: less biased than the reference. Δbias = cvr_bias − "
            "the reference's.", ""]
  rows = []
  for regime in grid["regimes"]:
    for estimator, versus in summary["paired"][regime["name"]].items():
      for reference, differences in versus.items():
        rows.append([regime["name"], _name(estimator),
                     _name(reference[len("vs_"):]),
                     _cell(differences["abs_bias"], "difference"),
                     _cell(differences["bias"], "difference")])
  lines += _table(["regime", "estimator", "vs", "Δ\\|bias\\|", "Δbias"],
                  rows)
  lines += _floor_lines(grid, summary)
  lines += ["", "## Target: ESCM2 at most half of ESMM's bias", "",
            "Met when ESCM2-IPW and ESCM2-DR both have a paired Δ\\|bias\\| "
            "interval below zero against ESMM and against naive, and the "
            "better of them at most half of ESMM's mean |bias|.", ""]
  rows = []
  for regime in grid["regimes"]:
    v = summary["verdicts"][regime["name"]]
    if v.get("met") is None:
      rows.append([regime["name"], "n/a", "", "", "", "", ""])
      continue
    flags = [("yes" if v[e][f"below_{r}"] else "no")
             for e in ("ipw", "dr") for r in ("esmm", "naive")]
    rows.append([regime["name"], *flags,
                 f"{_name(v['better'])} {v['better_over_esmm']:.2f}",
                 _yes_no(v["met"])])
  lines += _table(["regime", "IPW < ESMM", "IPW < naive", "DR < ESMM",
                   "DR < naive", "better / ESMM \\|bias\\|", "met"], rows)
  lines += _target_lines(grid, summary)
  return "\n".join(lines) + "\n"


def _yes_no(value: bool | None) -> str:
  return "n/a" if value is None else ("**yes**" if value else "no")


def _target_lines(grid: Mapping[str, Any],
                  summary: Mapping[str, Any]) -> list[str]:
  """Each regime against the targets of docs/results.md."""
  if "targets" not in summary:
    return []
  ranges = ", ".join(f"{metric} in [{low}, {high}]" for metric, (low, high)
                     in summary_lib.CALIBRATION_RANGES.items())
  lines = ["", "## Targets", "",
           "True p_click: every `<loss>_true` arm's bias interval contains 0. "
           "Best / ESMM: the least biased counterfactual estimator's mean "
           "\\|bias\\| over ESMM's, at most "
           f"{summary_lib.BEST_OVER_ESMM} with a paired interval below zero. "
           "Gap: the least share of the achievable gap a counterfactual "
           f"estimator closes, at least {summary_lib.GAP_CLOSED}. "
           "Below IPW: DR-JL's or MRDR's paired Δ\\|bias\\| against IPW, "
           "mean [95 % interval], met when an interval is below zero. "
           f"Calibration: {ranges} (calibration_cvr: pCVR on clicks) for "
           "every estimator (means over seeds).", ""]
  rows = []
  for regime in grid["regimes"]:
    t = summary["targets"][regime["name"]]
    met = t["met"]
    shares = [v for v in t["gap_closed"].values() if v is not None]
    outside = "; ".join(
        f"{_name(e)}: {', '.join(m[len('calibration_'):] for m in ms)}"
        for e, ms in t["out_of_range"].items() if ms) or "none"
    rows.append([
        regime["name"], _yes_no(met["true_propensity"]),
        ("n/a" if t["best"] is None else
         f"{_name(t['best'])} {t['best_over_esmm']:.2f}: "
         f"{_yes_no(met['best_over_esmm'])}"),
        (f"{min(shares):.2f}: {_yes_no(met['gap_closed'])}" if shares
         else _no_gap(summary, regime["name"])),
        _below_ipw(t), f"{outside}: {_yes_no(met['calibration'])}"])
  return lines + _table(["regime", "true p_click unbiased", "best / ESMM",
                         "least gap closed", "below IPW",
                         "calibration out of range"], rows)


def _no_gap(summary: Mapping[str, Any], regime: str) -> str:
  """Why a regime has no shares of the gap: ESMM not above the floor."""
  achievable = summary.get("achievable_gap", {}).get(regime)
  if not achievable or achievable["mean"] is None:
    return "n/a"
  return (f"n/a: ESMM − floor {_cell(achievable, 'difference')}, "
          "not above 0")


def _below_ipw(target: Mapping[str, Any]) -> str:
  """DR-JL's and MRDR's paired |bias| differences with IPW, and the verdict."""
  vs_ipw = target.get("vs_ipw") or {}
  if not vs_ipw:
    return "n/a"
  cells = "; ".join(f"{_name(e)} {_cell(d, 'difference')}"
                    for e, d in vs_ipw.items())
  return f"{cells}: {_yes_no(target['met'].get('joint_learning_below_ipw'))}"


def _floor_lines(grid: Mapping[str, Any],
                 summary: Mapping[str, Any]) -> list[str]:
  """The identifiable floors and the share of the gap each estimator closes."""
  if "floors" not in summary:
    return []
  lines = ["", "## Identifiable floor and the achievable gap", "",
           "floor: the IPS target of the best feature-based propensity "
           "less the true mean CVR (escm2_tf/study/floor.py); without ids: "
           "no id's latent learnt; true p_click: what the clip leaves; "
           "ESMM, unlimited data: the bias of the clicked CVR with every "
           "latent known, which a hidden intent leaves (0 without one); "
           "unbiased pCVR on clicks: E[p_conversion | every latent] over "
           "the test clicks' p_conversion, the calibration_cvr of an "
           "unbiased model (1 without a hidden intent). "
           "ESMM − floor: the achievable gap, seed by seed. "
           "Share of the gap: (ESMM's bias − the estimator's) / (ESMM's "
           "bias − the floor), means over seeds; n/a unless ESMM − floor "
           "has an interval above 0.", ""]
  estimators = grid["estimators"]
  gaps = summary.get("achievable_gap", {})
  rows = []
  for regime in grid["regimes"]:
    name = regime["name"]
    floors = summary["floors"][name]
    shares = summary["gap_closed"][name]
    rows.append([name] + [_cell(floors[kind], "difference") for kind in
                          floor_lib.BIASES] +
                [_cell(floors["bayes_cvr_on_clicks"]),
                 _cell(gaps[name], "difference") if name in gaps else "n/a"] +
                ["n/a" if shares.get(e) is None else f"{shares[e]:.2f}"
                 for e in estimators])
  return lines + _table(["regime", "floor", "floor without ids",
                         "floor, true p_click", "ESMM, unlimited data",
                         "unbiased pCVR on clicks", "ESMM − floor"] +
                        [_name(e) for e in estimators], rows)


def _fmt(value: Any, digits: int = 4) -> str:
  return "" if value is None else f"{value:.{digits}f}"


def mean_curves(results: Mapping[str, Any], regime: str, output: str
                ) -> dict[str, dict[str, np.ndarray]]:
  """Per estimator, the reliability deciles of ``output`` averaged over seeds.

  Seeds whose curve has fewer bins (ties) are left out of the average.
  """
  curves: dict[str, list] = {}
  for run in results["runs"]:
    if run["regime"] == regime:
      curves.setdefault(run["estimator"], []).append(
          run["reliability"][output])
  out = {}
  for estimator, per_seed in curves.items():
    size = max(len(c["predicted"]) for c in per_seed)
    full = [c for c in per_seed if len(c["predicted"]) == size]
    out[_name(estimator)] = {
        key: np.mean([np.asarray(c[key], np.float64) for c in full], axis=0)
        for key in ("predicted", "true", "count")}
  return out


def write_figures(results: Mapping[str, Any], directory: str) -> list[str]:
  """Writes the PNG figures; returns their paths.

  Raises:
    ImportError: matplotlib (the ``plot`` extra) is not installed.
  """
  from escm2_tf import plotting  # pylint: disable=import-outside-toplevel
  grid, summary = results["grid"], results["summary"]
  os.makedirs(directory, exist_ok=True)
  paths = []
  panels = {}
  for regime in grid["regimes"]:
    name = regime["name"]
    panels[f"{name}: CTR {regime['ctr']:g}, CVR {regime['cvr']:g}, "
           f"corr {regime_lib.correlation_text(regime['correlation'])}"] = {
               _name(e): summary["metrics"][name][e]["cvr_bias"]
               for e in grid["estimators"]}
  figure = plotting.plot_intervals(
      panels, ylabel="cvr_bias (mean pCVR − mean true p_conversion)",
      reference=0.0)
  paths.append(os.path.join(directory, "bias.png"))
  figure.savefig(paths[-1])
  for regime in grid["regimes"]:
    name = regime["name"]
    figure = plotting.plot_reliability_panels({
        f"{name}: pCTR against true p_click":
            mean_curves(results, name, "ctr"),
        f"{name}: pCVR against true p_conversion (all impressions)":
            mean_curves(results, name, "cvr")})
    paths.append(os.path.join(directory, f"reliability_{name}.png"))
    figure.savefig(paths[-1])
  return paths
