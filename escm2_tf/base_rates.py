"""Base rates of the training data, and the output biases they start.

A tower whose output bias starts at the log-odds of its task's base rate
predicts that rate from the first step, instead of 0.5: training then spends
no steps (and no sparse-embedding updates) on moving the mean, and a run that
stops early stops calibrated. ``escm2-convert`` counts the rates into
``stats.json`` beside ``vocab/``; ``read_base_rates`` reads them from there.

    rates = base_rates.read_base_rates(layout.stats_beside(vocab_dir))
    model = model_lib.build_model(model_config, loss_config, vocabularies,
                                  base_rates=rates)
"""

import dataclasses
import json
import math

from escm2_tf import layout
from escm2_tf import schema

# A rate is kept this far from 0 and 1, so that its log-odds stay finite.
_MIN_RATE = 1e-6


class StatsError(ValueError):
  """``stats.json`` is missing or lacks the counts (names the file)."""


@dataclasses.dataclass(frozen=True)
class BaseRates:
  """The mean click rate and the mean post-click conversion rate.

  Attributes:
    ctr: Clicks per impression.
    cvr: Conversions per click (the post-click CVR the CVR tower predicts).
  """
  ctr: float
  cvr: float

  def __post_init__(self):
    for name in ("ctr", "cvr"):
      value = getattr(self, name)
      if (isinstance(value, bool) or not isinstance(value, (int, float))
          or not 0.0 < value < 1.0):
        raise ValueError(f"BaseRates.{name} must be in (0, 1), got "
                         f"{value!r}.")

  @classmethod
  def from_counts(cls, impressions: int, clicks: int,
                  conversions: int) -> "BaseRates":
    """The rates of these counts, kept within [1e-6, 1 - 1e-6].

    Raises:
      ValueError: No impressions or no clicks: there is no rate to start at.
    """
    if impressions <= 0 or clicks <= 0:
      raise ValueError(f"need impressions and clicks, got {impressions} "
                       f"impressions and {clicks} clicks")
    return cls(ctr=_clip(clicks / impressions), cvr=_clip(conversions / clicks))

  def output_biases(self, tasks: tuple[str, ...]) -> list[float]:
    """The initial output bias of each tower in ``tasks``.

    ``ctr`` and ``cvr`` (sigmoids): the log-odds of their rates, so the CTCVR
    product also starts at its rate, conversions per impression. Every
    estimator starts the CVR tower at the post-click rate: ESMM learns it
    through that product, and the naive, IPW and DR risks start from the
    clicked mean they then correct. ``imputation`` (DR, a softplus predicting
    the CVR cross-entropy): the inverse softplus of the mean cross-entropy of
    a constant prediction at the CVR rate, the error it imputes at the start.
    ``pseudo_label`` (DR-JL and MRDR, a sigmoid): the CVR's log-odds, so the
    imputed conversion starts at the rate the CVR tower starts from.
    """
    biases = {schema.CTR: _logit(self.ctr), schema.CVR: _logit(self.cvr),
              schema.IMPUTATION: _inverse_softplus(_entropy(self.cvr)),
              schema.PSEUDO_LABEL: _logit(self.cvr)}
    return [biases[task] for task in tasks]


def read_base_rates(path: str) -> BaseRates:
  """The base rates of the converter's ``stats.json`` at ``path``.

  Raises:
    StatsError: The file is missing, not JSON, or lacks ``rows_written``,
      ``clicks`` or ``conversions`` (the message names the file).
  """
  # Imported here so that the configs and the CLI check flags without it.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  if not tf.io.gfile.exists(path):
    raise StatsError(f"{path} not found; escm2-convert writes it beside "
                     f"{layout.VOCAB_DIR}/ of the data it converts")
  try:
    with tf.io.gfile.GFile(path) as f:
      stats = json.load(f)
    return BaseRates.from_counts(int(stats["rows_written"]),
                                 int(stats["clicks"]),
                                 int(stats["conversions"]))
  except (ValueError, KeyError, TypeError) as error:
    raise StatsError(f"{path} holds no usable rows_written, clicks and "
                     f"conversions: {error}") from None


def _clip(rate: float) -> float:
  return min(max(rate, _MIN_RATE), 1.0 - _MIN_RATE)


def _logit(rate: float) -> float:
  return math.log(rate / (1.0 - rate))


def _entropy(rate: float) -> float:
  return -(rate * math.log(rate) + (1.0 - rate) * math.log(1.0 - rate))


def _inverse_softplus(value: float) -> float:
  return math.log(math.expm1(value))
