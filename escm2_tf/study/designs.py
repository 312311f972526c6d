"""The named designs of ``escm2-study --design=NAME``, and ``--arm`` specs.

``default``: every estimator in the nine regimes of ``regime.DEFAULT_REGIMES``
(docs/study/). ``estimator_table``: ESMM, naive and ESCM2's IPW and DR, each
also with PaddleRec's loss (``compat=paddlerec``), on 1M simulated training
impressions at the simulator's own rates. ``propensity_sweep``: ESMM with
the frequency threshold ``min_count`` at 1, the default and 20, on the
simulator's default 200k impressions: how well the CTR tower serves as the
propensity model (``auc_ctr`` against ``auc_ctr_oracle``,
``ctr_calibration_error``, ``ips_true_cvr``).
"""

import dataclasses
import json
from typing import Any

from escm2_tf.options import ConfigError
from escm2_tf.study import grid
from escm2_tf.study import regime as regime_lib


@dataclasses.dataclass(frozen=True)
class Design:
  """Regimes and estimators (arms) run together.

  Attributes:
    regimes: The simulated worlds.
    estimators: Names of ``arms`` or bare losses, in the order of the tables.
    arms: The estimators that are not a bare loss.
  """
  regimes: tuple[regime_lib.Regime, ...]
  estimators: tuple[str, ...]
  arms: tuple[grid.Arm, ...] = ()


# The simulator's own CTR and CVR (4 % each) and click-conversion coupling.
_SIMULATOR_RATES = {"ctr": 0.04, "cvr": 0.04, "correlation": None}

DESIGNS = {
    "default": Design(regime_lib.DEFAULT_REGIMES, tuple(grid.ESTIMATORS)),
    "estimator_table": Design(
        (regime_lib.Regime("synth1m", num_train=1_000_000, num_test=350_000,
                           **_SIMULATOR_RATES),),
        ("esmm", "ipw", "ipw_paddlerec", "dr", "dr_paddlerec", "naive"),
        (grid.Arm("ipw_paddlerec", (("loss", "ipw"), ("compat", "paddlerec"))),
         grid.Arm("dr_paddlerec", (("loss", "dr"), ("compat", "paddlerec"))))),
    "propensity_sweep": Design(
        (regime_lib.Regime("synth", num_train=200_000, num_test=50_000,
                           **_SIMULATOR_RATES),),
        ("min_count_1", "default", "min_count_20"),
        (grid.Arm("min_count_1", (("min_count", 1),)),
         grid.Arm("default"),
         grid.Arm("min_count_20", (("min_count", 20),)))),
}


def parse_arm(spec: str) -> grid.Arm:
  """``NAME:field=value,...``; values are JSON (``true``, ``0.5``) or text.

  Raises:
    ConfigError: No name, an item without ``=``, or settings the configs
      refuse (``grid.check_arm``); names ``arm``.
  """
  name, _, settings = spec.partition(":")
  values: dict[str, Any] = {}
  for item in filter(None, settings.split(",")):
    field, equals, text = item.partition("=")
    if not equals:
      raise ConfigError("arm", f"{spec!r}: {item!r} is not field=value")
    try:
      values[field] = json.loads(text)
    except ValueError:
      values[field] = text
  arm = grid.Arm(name, tuple(values.items()))
  try:
    grid.check_arm(arm)
  except ConfigError as error:
    raise ConfigError("arm", f"{spec!r}: {error.detail}") from None
  return arm
