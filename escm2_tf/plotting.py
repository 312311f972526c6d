"""Matplotlib figures and tables for the notebooks: curves, calibration, bars.

Presentation only: every number plotted here comes from the library's training
history, predictions or metrics. Figures are built with the object-oriented
API (``matplotlib.figure.Figure``) rather than pyplot, so nothing depends on
the active backend or leaks into pyplot's global figure list; a notebook shows
one by ending a cell with it (or ``display(figure)``), a script saves it with
``figure.savefig``. Rendering uses Agg, which needs no display.

Matplotlib is an optional extra: ``pip install 'escm2-tf[plot]'``.
"""

import math
from typing import Mapping, Sequence

import numpy as np

from escm2_tf import metrics

try:
  from matplotlib import figure as figure_lib
  from matplotlib import ticker
except ImportError as error:
  raise ImportError(
      "escm2_tf.plotting needs matplotlib, an optional extra: "
      "pip install 'escm2-tf[plot]'") from error

Figure = figure_lib.Figure

_VALIDATION_PREFIX = "val_"
_SIZE = (5.0, 3.6)


def _axes_grid(num: int) -> tuple[Figure, list]:
  fig = Figure(figsize=(_SIZE[0] * num, _SIZE[1]), layout="constrained")
  return fig, list(np.atleast_1d(fig.subplots(1, num)))


def plot_history(history: Mapping[str, Sequence[float]],
                 groups: Mapping[str, Sequence[str]],
                 xlabel: str = "epoch") -> Figure:
  """One panel per group of History metrics, training solid, validation dashed.

  Args:
    history: ``keras.callbacks.History.history``: metric name -> one value
      per epoch; ``val_<name>`` holds the validation value of ``<name>``.
    groups: Panel title -> the (training) metric names drawn in it.
    xlabel: What one point of the history stands for.

  Returns:
    The figure; a metric missing from ``history`` is an error, not a gap.

  Raises:
    KeyError: A requested metric is not in the history.
  """
  fig, axes = _axes_grid(len(groups))
  for ax, (title, names) in zip(axes, groups.items()):
    for index, name in enumerate(names):
      if name not in history:
        raise KeyError(f"{name!r} is not in the history; it has "
                       f"{sorted(history)}.")
      color = f"C{index}"
      steps = np.arange(1, len(history[name]) + 1)
      ax.plot(steps, history[name], "o-", color=color, label=name)
      val_name = _VALIDATION_PREFIX + name
      if val_name in history:
        ax.plot(steps, history[val_name], "s--", color=color, label=val_name)
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  return fig


# The binning is a metric (the evaluation reports it); kept here for plots.
reliability_curve = metrics.reliability_curve


def plot_reliability(curves: Mapping[str, Mapping[str, np.ndarray]],
                     title: str = "Reliability of pCVR over all impressions",
                     xlabel: str = "mean predicted CVR in bin",
                     ylabel: str = "mean true p_conversion in bin") -> Figure:
  """A reliability diagram: one line per model, the diagonal is calibrated.

  Args:
    curves: Model name -> ``reliability_curve(...)``.
    title: The axes' title.
    xlabel: Label of the prediction axis.
    ylabel: Label of the truth axis.
  """
  fig = Figure(figsize=(_SIZE[0] + 0.6, _SIZE[1] + 1.0), layout="constrained")
  ax = fig.subplots()
  _draw_reliability(ax, curves, markersize=6)
  ax.set_title(title)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  return fig


def _draw_reliability(ax, curves: Mapping[str, Mapping[str, np.ndarray]],
                      markersize: float) -> None:
  """The diagonal and one line per model, on ``ax``."""
  low = min(min(c["predicted"].min(), c["true"].min()) for c in curves.values())
  high = max(max(c["predicted"].max(), c["true"].max())
             for c in curves.values())
  ax.plot([low, high], [low, high], color="0.5", linestyle=":",
          label="perfect calibration")
  for index, (name, curve) in enumerate(curves.items()):
    ax.plot(curve["predicted"], curve["true"], "o-", color=f"C{index}",
            label=name, markersize=markersize)
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")


def plot_reliability_panels(
    panels: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]]) -> Figure:
  """Reliability diagrams side by side, e.g. of pCTR and of pCVR.

  Args:
    panels: Panel title -> model name -> ``reliability_curve(...)``; each
      panel is drawn as ``plot_reliability`` draws its one axes, on log
      scales, as rates span orders of magnitude.
  """
  fig, axes = _axes_grid(len(panels))
  fig.set_size_inches(_SIZE[0] * 1.2 * len(panels), _SIZE[1] * 1.3)
  for ax, (title, curves) in zip(axes, panels.items()):
    _draw_reliability(ax, curves, markersize=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel("mean prediction in decile")
    ax.set_ylabel("mean true probability in decile")
  return fig


def plot_intervals(panels: Mapping[str, Mapping[str, Mapping[str, float]]],
                   ylabel: str, reference: float | None = None) -> Figure:
  """Means with their intervals, one panel per group, one point per model.

  Args:
    panels: Panel title -> model name -> ``{"mean", "low", "high"}`` (e.g.
      ``escm2_tf.study.stats.interval``); a missing bound draws no bar.
    ylabel: What the values are.
    reference: A value drawn as a horizontal line (e.g. 0 for a bias).
  """
  fig, axes = _axes_grid(len(panels))
  fig.set_size_inches(max(3.2 * len(panels), 5.0), _SIZE[1] + 0.6)
  for ax, (title, values) in zip(axes, panels.items()):
    names = list(values)
    for index, name in enumerate(names):
      mean, low, high = (values[name][k] for k in ("mean", "low", "high"))
      mean = math.nan if mean is None else mean
      if low is None or high is None:
        error = None
      else:
        error = [[mean - low], [high - mean]]
      ax.errorbar([index], [mean], yerr=error, fmt="o", color=f"C{index}",
                  capsize=4)
    if reference is not None:
      ax.axhline(reference, color="0.3", linewidth=0.8)
    ax.set_xticks(range(len(names)), names, rotation=30, fontsize="small")
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_title(title, fontsize="small")
    ax.grid(axis="y", alpha=0.3)
  axes[0].set_ylabel(ylabel)
  return fig


def plot_bars(panels: Mapping[str, Mapping[str, float]],
              baseline: float | None = None) -> Figure:
  """One bar chart per panel (e.g. a metric), one bar per model.

  Args:
    panels: Panel title -> model name -> value.
    baseline: The value the bars grow from, drawn as a line: 0 for a bias,
      0.5 (random ranking) for an AUC. ``None`` starts them at 0, unmarked.
  """
  fig, axes = _axes_grid(len(panels))
  for ax, (title, values) in zip(axes, panels.items()):
    names = list(values)
    heights = np.array([values[name] for name in names], dtype=np.float64)
    base = 0.0 if baseline is None else baseline
    bars = ax.bar(names, heights - base, bottom=base,
                  color=[f"C{index}" for index in range(len(names))])
    ax.bar_label(bars, labels=[_short(value) for value in heights],
                 padding=2, fontsize="small")
    if baseline is not None:
      ax.axhline(baseline, color="0.3", linewidth=0.8)
    ax.set_title(title, fontsize="medium")
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3)
  return fig


def _short(value: float) -> str:
  return "nan" if math.isnan(value) else f"{value:.4f}"


def plot_series(series: Mapping[str, Sequence[float]], *, title: str,
                xlabel: str, ylabel: str,
                chosen: Mapping[str, int] | None = None,
                reference: float | None = None) -> Figure:
  """Lines of per-round values, one per model, with chosen rounds ringed.

  Args:
    series: Model name -> one value per round (round 1 first).
    title: The axes' title.
    xlabel: What one round stands for.
    ylabel: What the values are.
    chosen: Model name -> the 0-based round kept (e.g. by early stopping),
      ringed on its line.
    reference: A value drawn as a horizontal line (e.g. 0 for a bias).
  """
  fig = Figure(figsize=(_SIZE[0] + 1.4, _SIZE[1] + 0.6), layout="constrained")
  ax = fig.subplots()
  if reference is not None:
    ax.axhline(reference, color="0.3", linewidth=0.8)
  for index, (name, values) in enumerate(series.items()):
    rounds = np.arange(1, len(values) + 1)
    ax.plot(rounds, values, "o-", color=f"C{index}", label=name)
    if chosen and name in chosen:
      ax.plot(rounds[chosen[name]], values[chosen[name]], "o", markersize=14,
              markerfacecolor="none", markeredgecolor=f"C{index}")
  ax.set_title(title, fontsize="medium")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")
  return fig


def markdown_table(rows: Mapping[str, Mapping[str, float | str]],
                   columns: Sequence[str], digits: int = 4) -> str:
  """A GitHub-flavoured markdown table: one row per key of ``rows``.

  Args:
    rows: Row name (e.g. a model) -> column name -> value; numbers are
      rounded to ``digits`` decimals, strings shown as they are.
    columns: The columns to show, in order; each row must have them all.
    digits: Decimals of every number.

  Raises:
    KeyError: A row lacks a column.
  """
  lines = ["| | " + " | ".join(columns) + " |",
           "|---|" + "---:|" * len(columns)]
  for name, values in rows.items():
    missing = [column for column in columns if column not in values]
    if missing:
      raise KeyError(f"row {name!r} lacks column(s) {', '.join(missing)}.")
    cells = [value if isinstance(value, str) else f"{value:.{digits}f}"
             for value in (values[column] for column in columns)]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
