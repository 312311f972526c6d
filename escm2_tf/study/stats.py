"""Means, 95 % intervals over seeds, and paired differences of estimators.

Seeds are the replicates: each seed is a new simulated world and dataset and
a new training seed, shared by every estimator of the regime. An interval is
the Student-t interval of the mean over seeds; a paired difference is taken
seed by seed (same data, same initial weights) before averaging, so the
between-world spread that every estimator shares cancels.
"""

import math
from typing import Iterable, Mapping, Sequence

import numpy as np

# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262,
         2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101,
         2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052,
         2.048, 2.045, 2.042)
_Z975 = 1.959964


def t_quantile(degrees_of_freedom: int) -> float:
  """The 0.975 quantile of Student's t (Cornish-Fisher above 30 df)."""
  if degrees_of_freedom < 1:
    raise ValueError(f"degrees of freedom must be >= 1, got "
                     f"{degrees_of_freedom}")
  if degrees_of_freedom <= len(_T975):
    return _T975[degrees_of_freedom - 1]
  z, n = _Z975, degrees_of_freedom
  return (z + (z ** 3 + z) / (4 * n)
          + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * n ** 2))


def interval(values: Iterable[float]) -> dict[str, float]:
  """Mean and 95 % t-interval; NaN values (undefined metrics) are dropped.

  Returns:
    ``mean``, ``low``, ``high``, ``n`` (values used); the bounds are NaN
    with fewer than two values.
  """
  array = np.asarray([v for v in values if v is not None and
                      not math.isnan(v)], dtype=np.float64)
  n = int(array.size)
  if n == 0:
    return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
  mean = float(array.mean())
  if n < 2:
    return {"mean": mean, "low": math.nan, "high": math.nan, "n": n}
  half = t_quantile(n - 1) * float(array.std(ddof=1)) / math.sqrt(n)
  return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def excludes_zero(summary: Mapping[str, float]) -> bool:
  """Whether a ``interval`` result lies entirely on one side of zero."""
  return summary["low"] > 0 or summary["high"] < 0


def paired(values: Mapping[int, float], reference: Mapping[int, float],
           transform=lambda v: v) -> dict[str, float]:
  """``interval`` of transform(value) - transform(reference), seed by seed.

  Only seeds both have (and where both are defined) count.
  """
  differences = []
  for seed in sorted(set(values) & set(reference)):
    a, b = values[seed], reference[seed]
    if a is None or b is None or math.isnan(a) or math.isnan(b):
      continue
    differences.append(transform(a) - transform(b))
  return interval(differences)


def by_seed(runs: Sequence[Mapping], regime: str, estimator: str,
            metric: str) -> dict[int, float]:
  """The metric of each seed's run of ``estimator`` in ``regime``."""
  out = {}
  for run in runs:
    if run["regime"] == regime and run["estimator"] == estimator:
      value = run["metrics"].get(metric)
      out[run["seed"]] = math.nan if value is None else float(value)
  return out
