"""What a study runs: regimes of the simulator, seeds and estimators.

An estimator is a ``LossConfig.loss`` value trained with the library's
defaults, or an ``Arm``: a name for ``ExperimentConfig`` settings that
differ from the defaults
(``escm2_tf.study.designs`` holds the named designs that use them).
The regimes, the simulated worlds, are ``escm2_tf.study.regime``'s.

An estimator is a ``LossConfig.loss`` value, or a counterfactual loss with
the suffix ``_true``: the same estimator weighting clicks by the simulator's
true p_click instead of the CTR tower's pCTR (``LossConfig.propensity``
``"label"``), which shows the estimator's end-to-end bias with perfect
propensities.
"""

import dataclasses
from typing import Any, Sequence

from escm2_tf import config as config_lib
from escm2_tf import options
from escm2_tf.options import ConfigError
from escm2_tf.study import regime as regime_lib

# The estimators that weigh clicks by a propensity.
COUNTERFACTUAL = ("ipw", "dr") + config_lib.JOINT_LEARNING_LOSSES
TRUE_PROPENSITY = "_true"
ESTIMATORS = config_lib.LOSSES + tuple(
    loss + TRUE_PROPENSITY for loss in COUNTERFACTUAL)


def estimator_loss(estimator: str) -> tuple[str, str]:
  """``(LossConfig.loss, LossConfig.propensity)`` of an estimator name."""
  if estimator.endswith(TRUE_PROPENSITY):
    return estimator[:-len(TRUE_PROPENSITY)], "label"
  return estimator, "model"


@dataclasses.dataclass(frozen=True)
class Arm:
  """A named estimator: settings that differ from the library's defaults.

  Attributes:
    name: Names it in the outputs (letters, digits, ``_.-``).
    settings: ``(field, value)`` pairs of ``ExperimentConfig`` fields by
      their flag names (not the paths or the seed, which the study sets);
      ``loss`` defaults to ``esmm``.
  """
  name: str
  settings: tuple[tuple[str, Any], ...] = ()

  def to_dict(self) -> dict[str, Any]:
    return {"name": self.name, "settings": dict(self.settings)}


DEFAULT_SEEDS = (0, 1, 2, 3, 4)


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """A grid of regimes x seeds x estimators; invalid grids raise ConfigError.

  Attributes:
    regimes: The simulated worlds.
    seeds: Seeds of the simulator and of the training (weights, order);
      every (regime, seed) is one dataset shared by the estimators.
    estimators: Names of ``arms``, or ``LossConfig.loss`` values, each
      trained with the library's defaults otherwise.
    arms: The estimators that are not a bare loss.
  """
  regimes: tuple[regime_lib.Regime, ...] = regime_lib.DEFAULT_REGIMES
  seeds: tuple[int, ...] = DEFAULT_SEEDS
  estimators: tuple[str, ...] = ESTIMATORS
  arms: tuple[Arm, ...] = ()

  def __post_init__(self):
    for name in ("regimes", "seeds", "estimators", "arms"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    check(self)

  def settings(self, estimator: str) -> dict[str, Any]:
    """The config fields ``estimator`` sets (a bare loss: ``loss``)."""
    for arm in self.arms:
      if arm.name == estimator:
        return {"loss": "esmm", **dict(arm.settings)}
    loss, propensity = estimator_loss(estimator)
    return ({"loss": loss, "propensity": propensity}
            if propensity == "label" else {"loss": loss})

  def to_dict(self) -> dict[str, Any]:
    return {"regimes": [dataclasses.asdict(r) for r in self.regimes],
            "seeds": list(self.seeds), "estimators": list(self.estimators),
            "arms": [arm.to_dict() for arm in self.arms]}


def _duplicates(values: Sequence[Any]) -> list[Any]:
  return sorted({v for v in values if list(values).count(v) > 1}, key=str)


def check(config: StudyConfig) -> None:
  """Raises ConfigError, naming the flag, for the first reason it cannot run."""
  for name, values in ((regime_lib.REGIME, config.regimes),
                       ("seeds", config.seeds),
                       ("estimators", config.estimators)):
    if not values:
      raise ConfigError(name, "must name at least one value")
  if len(config.seeds) < 2:
    raise ConfigError("seeds", "needs at least 2 seeds for an interval, got "
                      f"{list(config.seeds)}")
  for name, values in (("seeds", config.seeds),
                       (regime_lib.REGIME, [r.name for r in config.regimes]),
                       ("estimators", config.estimators)):
    repeated = _duplicates(values)
    if repeated:
      raise ConfigError(name, f"repeated {', '.join(map(str, repeated))}")
  for seed in config.seeds:
    options.check_range("seeds", seed, minimum=0, integer=True)
  arms = {arm.name for arm in config.arms}
  for estimator in config.estimators:
    if estimator not in ESTIMATORS and estimator not in arms:
      raise ConfigError("estimators", f"unknown estimator {estimator!r}; "
                        f"known: {', '.join(ESTIMATORS)}")
  for arm in config.arms:
    check_arm(arm)
  for regime in config.regimes:
    regime_lib.check_regime(regime)


# What the study sets itself, so no arm may.
_STUDY_FIELDS = ("train_data", "eval_data", "vocab_dir", "model_dir",
                 "ground_truth", "seed", "export_dir")


def check_arm(arm: Arm) -> None:
  """Raises ConfigError (``arm``) if the config refuses the arm's settings."""
  if not regime_lib.NAME_PATTERN.match(arm.name):
    raise ConfigError("arm", f"arm name {arm.name!r}: letters, digits or _.- "
                      "only")
  settings = {"loss": "esmm", **dict(arm.settings)}
  for field in settings:
    if field in _STUDY_FIELDS:
      raise ConfigError("arm", f"arm {arm.name}: {field} is set by the study")
  try:
    config_lib.ExperimentConfig.create(
        train_data="-", eval_data="-", vocab_dir="-", model_dir="-",
        **settings)
  except ConfigError as error:
    raise ConfigError("arm", f"arm {arm.name}: {error}") from None
