"""What a study runs: regimes of the simulator, seeds and estimators.

An estimator is a ``LossConfig.loss`` value trained with the library's
defaults, or an ``Arm``: a name for ``ExperimentConfig`` settings that
differ from the defaults
(``escm2_tf.study.designs`` holds the named designs that use them).

A regime fixes the simulator's click rate, post-click conversion rate, the
correlation of click and conversion propensities, the data sizes and the
users and items of the world, so that impressions per id are a property of
the regime. The default design varies one factor at a time around a base
regime in which the theory says the counterfactual estimators should win
(strong correlation: strong selection bias; CTR 8 %: enough clicks to learn
the propensities), so that every level of every factor is covered by a regime
that differs from the base in that factor only (docs/results.md says why not
the full factorial); two more regimes have the Tianchi release's density and
a denser one, where the ids' latents can be learnt, one has selection on a
hidden intent that no feature carries and one on a per-user intent.

An estimator is a ``LossConfig.loss`` value, or a counterfactual loss with
the suffix ``_true``: the same estimator weighting clicks by the simulator's
true p_click instead of the CTR tower's pCTR (``LossConfig.propensity``
``"label"``), which shows the estimator's end-to-end bias with perfect
propensities.
"""

import dataclasses
import re
from typing import Any, Sequence

from escm2_tf import config as config_lib
from escm2_tf import options
from escm2_tf import simulator
from escm2_tf.options import ConfigError

# The estimators that weigh clicks by a propensity.
COUNTERFACTUAL = ("ipw", "dr") + config_lib.JOINT_LEARNING_LOSSES
TRUE_PROPENSITY = "_true"
ESTIMATORS = config_lib.LOSSES + tuple(
    loss + TRUE_PROPENSITY for loss in COUNTERFACTUAL)
# A world needs at least as many (user, item) pairs as impressions: with
# fewer, pairs repeat on average and the test split shows the training
# split's pairs again, so every estimator can read a pair's rates off its
# training labels instead of extrapolating to the unclicked space, which is
# what the study measures.
MIN_PAIRS_PER_IMPRESSION = 1.0
_SIMULATOR_DEFAULTS = simulator.SimulatorConfig()
WEAK_CORRELATION = 0.2
STRONG_CORRELATION = 0.9
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
# The flag a regime comes from.
REGIME = "regime"
_KEYS = {"ctr": float, "cvr": float, "corr": float, "train": int,
         "test": int, "users": int, "items": int, "intent": float,
         "user_intent": float}
# Keys a --regime may leave out: the simulator's own default.
_OPTIONAL = {"users": _SIMULATOR_DEFAULTS.num_users,
             "items": _SIMULATOR_DEFAULTS.num_items,
             "intent": _SIMULATOR_DEFAULTS.hidden_intent,
             "user_intent": _SIMULATOR_DEFAULTS.user_intent}


def estimator_loss(estimator: str) -> tuple[str, str]:
  """``(LossConfig.loss, LossConfig.propensity)`` of an estimator name."""
  if estimator.endswith(TRUE_PROPENSITY):
    return estimator[:-len(TRUE_PROPENSITY)], "label"
  return estimator, "model"


@dataclasses.dataclass(frozen=True)
class Regime:
  """One simulated world.

  Attributes:
    name: Names the regime in the outputs (letters, digits, ``_.-``).
    ctr: The simulator's mean click probability.
    cvr: Its mean conversion probability among clicks.
    correlation: ``SimulatorConfig.click_conversion_correlation`` (None:
      the simulator's own, about 0.66 between the logits).
    num_train: Training impressions.
    num_test: Test impressions (the scored set).
    num_users: Users of the world (``SimulatorConfig.num_users``).
    num_items: Items of the world (``SimulatorConfig.num_items``).
    intent: ``SimulatorConfig.hidden_intent``: selection on what no
      feature carries.
    user_intent: ``SimulatorConfig.user_intent``: selection on what only
      the user id carries.
  """
  name: str
  ctr: float
  cvr: float
  correlation: float | None
  num_train: int
  num_test: int
  num_users: int = _SIMULATOR_DEFAULTS.num_users
  num_items: int = _SIMULATOR_DEFAULTS.num_items
  intent: float = _SIMULATOR_DEFAULTS.hidden_intent
  user_intent: float = _SIMULATOR_DEFAULTS.user_intent

  def simulator_config(self, seed: int) -> simulator.SimulatorConfig:
    """The simulator settings of the regime; everything else its default.

    Raises:
      ConfigError: The simulator refuses them.
    """
    return simulator.SimulatorConfig(
        num_train=self.num_train, num_test=self.num_test, seed=seed,
        ctr=self.ctr, cvr=self.cvr, num_users=self.num_users,
        num_items=self.num_items,
        click_conversion_correlation=self.correlation,
        hidden_intent=self.intent, user_intent=self.user_intent)

  def describe(self) -> str:
    return (f"CTR {self.ctr:.0%}, CVR {self.cvr:.0%}, correlation "
            f"{correlation_text(self.correlation)}, {self.num_train:,} train "
            f"/ {self.num_test:,} test impressions, {self.num_users:,} users "
            f"({self.num_train / self.num_users:.0f} per user), "
            f"{self.num_items:,} items "
            f"({self.num_train / self.num_items:.0f} per item)"
            + (f", hidden intent {self.intent:g}" if self.intent else "")
            + (f", user intent {self.user_intent:g}" if self.user_intent
               else ""))


def correlation_text(correlation: float | None) -> str:
  return "natural" if correlation is None else f"{correlation:g}"


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


# Sizes: the low-rate regimes get more impressions (about 200 or more
# training conversions each), the 15 % one fewer; the test set only scores,
# and the bias is measured against the true probabilities, without label
# noise. The total is what 2 shared CPU cores train in about half an hour.
# In order of priority: a study stopped early has the contrast the theory
# predicts (strong vs weak selection bias) first. These five keep the
# simulator's world (10,000 users, 20,000 items): 6-24 training impressions
# per item, far sparser than the release. "release" has the Tianchi
# release's density (60 training impressions per user, 90 per item) and
# "dense" ten times the impressions per user of the release; both have the
# base regime's rates. "intent" adds selection that no feature carries (a
# per-request intent raising both logits) at about the release's density
# per item: what no feature-based estimator can remove; "user_intent" the
# same per user, which the user ids can learn.
DEFAULT_REGIMES = (
    Regime("base", 0.08, 0.04, STRONG_CORRELATION, 120_000, 50_000),
    Regime("weak", 0.08, 0.04, WEAK_CORRELATION, 120_000, 50_000),
    Regime("cvr15", 0.08, 0.15, STRONG_CORRELATION, 80_000, 50_000),
    Regime("ctr2", 0.02, 0.04, STRONG_CORRELATION, 240_000, 50_000),
    Regime("cvr1", 0.08, 0.01, STRONG_CORRELATION, 240_000, 50_000),
    Regime("release", 0.08, 0.04, STRONG_CORRELATION, 540_000, 100_000,
           num_users=9_000, num_items=6_000),
    Regime("dense", 0.08, 0.04, STRONG_CORRELATION, 1_200_000, 100_000,
           num_users=2_000, num_items=4_000),
    Regime("intent", 0.08, 0.04, STRONG_CORRELATION, 300_000, 50_000,
           num_users=2_000, num_items=4_000, intent=1.0),
    Regime("user_intent", 0.08, 0.04, STRONG_CORRELATION, 300_000, 50_000,
           num_users=2_000, num_items=4_000, user_intent=1.0),
)
DEFAULT_SEEDS = (0, 1, 2, 3, 4)


def parse_regime(spec: str) -> Regime:
  """``NAME:ctr=0.08,cvr=0.04,corr=0.9,train=300000,test=100000``.

  ``users=N``, ``items=N``, ``intent=X`` and ``user_intent=X`` are optional
  (the simulator's defaults).

  Raises:
    ConfigError: A missing or unknown key, a bad value or name (``regime``).
  """
  name, _, settings = spec.partition(":")
  if not _NAME.match(name):
    raise ConfigError(REGIME, f"{spec!r}: the name must be letters, digits "
                      "or _.- before the ':'")
  values: dict[str, Any] = {}
  for item in filter(None, settings.split(",")):
    key, _, text = item.partition("=")
    if key not in _KEYS:
      raise ConfigError(REGIME, f"{spec!r}: unknown key {key!r}; keys are "
                        f"{', '.join(_KEYS)}")
    try:
      values[key] = _KEYS[key](text)
    except ValueError:
      raise ConfigError(REGIME, f"{spec!r}: {key}={text!r} is not a "
                        f"{_KEYS[key].__name__}") from None
  missing = [key for key in _KEYS
              if key not in values and key not in _OPTIONAL]
  if missing:
    raise ConfigError(REGIME, f"{spec!r}: missing {', '.join(missing)}")
  values = {**_OPTIONAL, **values}
  return Regime(name, values["ctr"], values["cvr"], values["corr"],
                values["train"], values["test"], num_users=values["users"],
                num_items=values["items"], intent=values["intent"],
                user_intent=values["user_intent"])


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
  regimes: tuple[Regime, ...] = DEFAULT_REGIMES
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
  for name, values in ((REGIME, config.regimes), ("seeds", config.seeds),
                       ("estimators", config.estimators)):
    if not values:
      raise ConfigError(name, "must name at least one value")
  if len(config.seeds) < 2:
    raise ConfigError("seeds", "needs at least 2 seeds for an interval, got "
                      f"{list(config.seeds)}")
  for name, values in (("seeds", config.seeds),
                       (REGIME, [r.name for r in config.regimes]),
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
    _check_regime(regime)


def _check_regime(regime: Regime) -> None:
  # The simulator checks its settings; say which regime is at fault.
  if not _NAME.match(regime.name):
    raise ConfigError(REGIME, f"name {regime.name!r}: letters, digits or _.- "
                      "only")
  try:
    regime.simulator_config(seed=0)
  except ConfigError as error:
    raise ConfigError(REGIME, f"{regime.name}: {error}") from None
  pairs = regime.num_users * regime.num_items
  impressions = regime.num_train + regime.num_test
  if pairs < MIN_PAIRS_PER_IMPRESSION * impressions:
    raise ConfigError(
        REGIME, f"{regime.name}: users x items = {pairs:,} (user, item) "
        f"pairs for {impressions:,} impressions; with fewer pairs than "
        "impressions the test split repeats the training pairs, so give it "
        "more users or items")
  expected = regime.num_train * regime.ctr * regime.cvr
  if expected < 20:
    raise ConfigError(
        REGIME, f"{regime.name}: about {expected:.0f} training conversions "
        f"expected ({regime.num_train:,} x CTR {regime.ctr} x CVR "
        f"{regime.cvr}); at least 20 are needed to train a CVR tower")


# What the study sets itself, so no arm may.
_STUDY_FIELDS = ("train_data", "eval_data", "vocab_dir", "model_dir",
                 "ground_truth", "seed", "export_dir")


def check_arm(arm: Arm) -> None:
  """Raises ConfigError (``arm``) if the config refuses the arm's settings."""
  if not _NAME.match(arm.name):
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
