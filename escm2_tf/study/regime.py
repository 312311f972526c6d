"""A simulated world of the study: its rates, sizes, users and items.

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
"""

import dataclasses
import re
from typing import Any

from escm2_tf import simulator
from escm2_tf.options import ConfigError

# A world needs at least as many (user, item) pairs as impressions: with
# fewer, pairs repeat on average and the test split shows the training
# split's pairs again, so every estimator can read a pair's rates off its
# training labels instead of extrapolating to the unclicked space, which is
# what the study measures.
MIN_PAIRS_PER_IMPRESSION = 1.0
_SIMULATOR_DEFAULTS = simulator.SimulatorConfig()
WEAK_CORRELATION = 0.2
STRONG_CORRELATION = 0.9
# What names a regime or an arm in the outputs (letters, digits, ``_.-``).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")
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


def parse_regime(spec: str) -> Regime:
  """``NAME:ctr=0.08,cvr=0.04,corr=0.9,train=300000,test=100000``.

  ``users=N``, ``items=N``, ``intent=X`` and ``user_intent=X`` are optional
  (the simulator's defaults).

  Raises:
    ConfigError: A missing or unknown key, a bad value or name (``regime``).
  """
  name, _, settings = spec.partition(":")
  if not NAME_PATTERN.match(name):
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


def check_regime(regime: Regime) -> None:
  """Raises ConfigError (``regime``) if the study cannot run the regime."""
  # The simulator checks its settings; say which regime is at fault.
  if not NAME_PATTERN.match(regime.name):
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

