"""A ground-truth Ali-CCP simulator: logs plus the true rates behind them.

``simulate`` writes impressions in the raw Tianchi format (or PaddleRec's text
format) together with ``ground_truth_{split}.csv``: for every impression the
true click probability, the true post-click conversion probability (defined
whether or not the impression was clicked) and a conversion drawn from it. With
these, a CVR model's bias over the entire impression space, which ESCM2 claims
to reduce, can be measured exactly.

Train and test share one world (users, items, true rates) derived from the
seed; the world does not depend on ``num_train`` or ``num_test``. Its
intercepts are calibrated on a fixed sample of impressions so that the mean
click probability is ``ctr`` and the mean conversion probability among clicks
is ``cvr``.
"""

import dataclasses
import os
from typing import Any, Callable

import numpy as np

from escm2_tf import layout
from escm2_tf import options
from escm2_tf.options import ConfigError
from escm2_tf.options import option
from escm2_tf.simulator import io as simulator_io
from escm2_tf.simulator import traffic as simulator_traffic
from escm2_tf.simulator import world as simulator_world

_CALIBRATION_IMPRESSIONS = 200_000


@dataclasses.dataclass(frozen=True)
class SimulatorConfig:
  """What to simulate. Invalid values raise ``ConfigError`` on construction.

  Attributes:
    num_train: Training impressions.
    num_test: Test impressions.
    seed: Seeds the world and both splits; equal seeds give equal files.
    num_users: Users in the world.
    num_items: Items in the catalogue.
    num_categories: Item categories (fields 206, 109_14, 508).
    num_shops: Shops (207, 110_14, 509); at least ``num_categories``.
    num_brands: Brands (216, 127_14, 702); at least ``num_categories``.
    num_intentions: Intentions (210, 150_14, 853); at least
      ``num_categories``.
    num_positions: Distinct values of the position field 301; later ranks
      share the last one.
    ctr: Target mean click probability.
    cvr: Target mean conversion probability over clicked impressions.
    impressions_per_request: Mean impressions per request (common row).
    behaviour_length: Approximate mean behaviour entries (``*_14`` fields) per
      user, i.e. the length of a common row.
    unclicked_conversion_rate: Fraction of unclicked impressions logged with
      conversion=1 anyway, as some rows of the real release are.
    format: ``"aliccp"`` (Tianchi) or ``"paddlerec"``.
    click_conversion_correlation: How much the conversion propensity shares
      with the click propensity, in [0, 1): the conversion logit becomes
      ``c·z_click + sqrt(1 - c²)·z_own`` at the default logit's spread, where
      ``z_click`` is the standardised click logit without its position term
      and ``z_own`` a standardised conversion-only logit (an item quality
      independent of the click quality, the user's conversion bias, the price
      tier's fit). The two logits then correlate at about ``c``; high values
      make clicks select the impressions that convert (strong selection
      bias), low ones make clicks uninformative about conversion. ``None``
      keeps the default conversion logit, which shares the behaviour overlap
      and part of the item quality with the click (logit correlation about
      0.6) and leaves existing seeds' files unchanged.
    hidden_intent: Standard deviation, in logit units, of a per-request
      intent that no feature carries and that raises the click and the
      conversion logits alike: a shopper who came to buy clicks and converts
      more. Clicked impressions then convert more often than unclicked ones
      with the same features, so ESMM stays biased with unlimited data and a
      propensity learnt from the features misses part of the selection;
      the ground truth's p_click includes the intent, so IPW with the true
      p_click stays unbiased. 0 draws no intent and leaves existing seeds'
      files unchanged.
    user_intent: Standard deviation, in logit units, of a per-user intent
      added to both logits of every impression of the user, like
      ``hidden_intent`` but lasting: only the user id reveals it, as far as
      the user's impressions allow. 0 draws none and leaves existing seeds'
      files unchanged.
  """
  num_train: int = option(200_000, minimum=1, group="size")
  num_test: int = option(50_000, minimum=1, group="size")
  seed: int = option(42, minimum=0, group="size")
  num_users: int = option(10_000, minimum=1)
  num_items: int = option(20_000, minimum=1)
  num_categories: int = option(300, minimum=1)
  num_shops: int = option(3_000, minimum=1)
  num_brands: int = option(2_000, minimum=1)
  num_intentions: int = option(3_000, minimum=1)
  num_positions: int = option(10, minimum=1)
  ctr: float = 0.04
  cvr: float = 0.04
  impressions_per_request: int = option(25, minimum=1)
  behaviour_length: int = option(510, minimum=1)
  unclicked_conversion_rate: float = 0.0005
  format: str = option("aliccp", choices=layout.RAW_FORMATS, group="output")
  click_conversion_correlation: float | None = None
  hidden_intent: float = option(0.0, minimum=0.0)
  user_intent: float = option(0.0, minimum=0.0)

  def __post_init__(self):
    options.check_declared(self)
    for name in ("num_shops", "num_brands", "num_intentions", "num_items"):
      if getattr(self, name) < self.num_categories:
        raise ConfigError(name, "must be at least num_categories "
                          f"({self.num_categories}), got {getattr(self, name)}")
    for name in ("ctr", "cvr"):
      _check_rate(name, getattr(self, name), closed=False)
    _check_rate("unclicked_conversion_rate", self.unclicked_conversion_rate,
                closed=True)
    if self.click_conversion_correlation is not None:
      _check_rate("click_conversion_correlation",
                  self.click_conversion_correlation, closed=True)


def _check_rate(name: str, value: Any, closed: bool) -> None:
  """A probability in (0, 1), or [0, 1) when ``closed``."""
  if not (options.is_number(value) and
          (0.0 <= value < 1.0 if closed else 0.0 < value < 1.0)):
    bounds = "[0, 1)" if closed else "(0, 1)"
    raise ConfigError(name, f"must lie in {bounds}, got {value!r}")


def _prepare_output_dir(output_dir: str) -> None:
  """Creates ``output_dir`` and checks that files can be created in it."""
  probe = os.path.join(output_dir, f".escm2-synth-probe-{os.getpid()}")
  try:
    os.makedirs(output_dir, exist_ok=True)
    with open(probe, "x", encoding="utf-8"):
      pass
    os.remove(probe)
  except OSError as err:
    raise ConfigError("output_dir", f"{output_dir!r} is not a writable "
                      f"directory: {err.strerror or err}") from None


def _outcomes(truth: dict[str, np.ndarray], rate: float,
              rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Draws clicks, conversions and the counterfactual conversions.

  An observed conversion needs a click, except for the ``rate`` of unclicked
  impressions logged as converted anyway.
  """
  num = len(truth["p_click"])
  click = rng.random(num) < truth["p_click"]
  counterfactual = rng.random(num) < truth["p_conversion"]
  stray = ~click & (rng.random(num) < rate)
  return {"click": click.astype(np.int64),
          "conversion": ((click & counterfactual) | stray).astype(np.int64),
          "conversion_counterfactual": counterfactual.astype(np.int64)}


def _rng(seed: int, stream: str) -> np.random.Generator:
  """Independent generators for the world, its calibration and each split."""
  streams = ("world", "calibration") + layout.SPLITS
  return np.random.default_rng(
      np.random.SeedSequence(seed).spawn(len(streams))[streams.index(stream)])


def build_world(config: SimulatorConfig) -> simulator_world.World:
  """The calibrated world of ``config``; the same for every split size."""
  rng = _rng(config.seed, "world")
  world = simulator_world.build_world(config, rng)
  if config.user_intent > 0:
    # Drawn last, so that the rest of the world does not depend on it.
    world = dataclasses.replace(world, user_intent=config.user_intent
                                * rng.standard_normal(config.num_users))
  sample = simulator_traffic.sample_impressions(
      world, _CALIBRATION_IMPRESSIONS, config.impressions_per_request,
      _rng(config.seed, "calibration"), config.hidden_intent)
  return simulator_traffic.calibrate(world, sample, config.ctr, config.cvr,
                                     config.click_conversion_correlation)


def sample_split(config: SimulatorConfig, world: simulator_world.World,
                 split: str) -> tuple[simulator_traffic.Impressions,
                                      dict[str, np.ndarray]]:
  """One split's impressions and their truth and labels, in file order."""
  num = config.num_train if split == layout.TRAIN else config.num_test
  rng = _rng(config.seed, split)
  imp = simulator_traffic.sample_impressions(
      world, num, config.impressions_per_request, rng, config.hidden_intent)
  truth = simulator_traffic.probabilities(world, imp)
  truth.update(_outcomes(truth, config.unclicked_conversion_rate, rng))
  return imp, truth


def _summary(truth: dict[str, np.ndarray]) -> dict[str, Any]:
  click = truth["click"].astype(bool)
  return {
      "rows": int(len(click)),
      "clicks": int(click.sum()),
      "conversions": int(truth["conversion"].sum()),
      "unclicked_conversions": int(truth["conversion"][~click].sum()),
      "true_ctr": float(truth["p_click"].mean()),
      "true_cvr_all": float(truth["p_conversion"].mean()),
      "true_cvr_clicked": float(truth["p_conversion"][click].mean())
                          if click.any() else float("nan"),
      "logit_correlation": logit_correlation(truth),
  }


def logit_correlation(truth: dict[str, np.ndarray]) -> float:
  """Pearson correlation of the true click and conversion logits."""
  logits = [simulator_traffic.logit(truth[name])
            for name in ("p_click", "p_conversion")]
  if len(logits[0]) < 2:
    return float("nan")
  return float(np.corrcoef(logits[0], logits[1])[0, 1])


def simulate(config: SimulatorConfig, output_dir: str,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Writes both splits and their ground truth into ``output_dir``.

  Args:
    config: What to simulate.
    output_dir: Where the files go (created if needed).
    progress: Called with a line saying what is being done, at each step.

  Returns:
    ``{"config": {...}, "train": {...}, "test": {...}, "files": [paths]}``
    where each split holds ``rows``, ``clicks``, ``conversions`` (observed, including
    ``unclicked_conversions``), the true mean rates and the
    ``logit_correlation`` of the true click and conversion probabilities.

  Raises:
    ConfigError: if ``output_dir`` cannot be written. Nothing is left under
      a final file name unless the whole simulation succeeded.
  """
  report = progress or (lambda line: None)
  _prepare_output_dir(output_dir)
  report(f"building a world of {config.num_users:,} users and "
         f"{config.num_items:,} items")
  world = build_world(config)
  featurizer = simulator_io.Featurizer(world)
  names = {split: layout.raw_file_names(config.format, split)
           for split in layout.SPLITS}
  summary: dict[str, Any] = {"config": dataclasses.asdict(config)}
  user_text: dict[int, str] = {}
  vocabulary: dict[int, int] = {}
  all_names = [name for split in layout.SPLITS
               for name in names[split].values()]
  with simulator_io.atomic_files(output_dir, all_names) as out:
    for split in layout.SPLITS:
      report(f"simulating the {split} split ("
             f"{getattr(config, f'num_{split}'):,} impressions)")
      imp, truth = sample_split(config, world, split)
      files = {role: out[name] for role, name in names[split].items()}
      id_prefix = simulator_io.sample_id_prefix(config.seed, split)
      if config.format == "paddlerec":
        simulator_io.write_paddlerec(featurizer, imp, truth, files["paddlerec"],
                                     vocabulary, user_text, id_prefix)
      else:
        indexes = simulator_io.request_indexes(config.seed, split,
                                               len(imp.request_size))
        simulator_io.write_aliccp(featurizer, imp, truth, indexes,
                                  files["skeleton"], files["common"], user_text,
                                  id_prefix)
      simulator_io.write_ground_truth(files["ground_truth"], truth, id_prefix)
      summary[split] = _summary(truth)
  summary["files"] = sorted(os.path.join(output_dir, n) for n in all_names)
  return summary
