"""What one conversion run does: a validated, frozen configuration."""

import dataclasses
from typing import Optional

INPUT_FORMATS = ("aliccp", "paddlerec")
JOINS = ("side_input", "cogroup")

# A user's four behaviour fields carry ~500 ids. Measured on 100k simulated
# impressions (gzip bytes / ids per example / tf.data parse rate on 2 cores):
# all 182 B / 529 / 39k/s, 50: 89 B / 215 / 98k/s, 20: 67 B / 99 / 155k/s,
# 10: 60 B / 59 / 154k/s. 20 keeps each user's 80 heaviest behaviours at the
# parse rate of 10; more ids cost input rate and model time per example.
DEFAULT_MAX_VALUES_PER_FIELD = 20
DEFAULT_MAX_BAD_FRACTION = 0.01


class ConfigError(ValueError):
  """An invalid setting.

  Attributes:
    setting: The offending setting, named as its command-line flag.
  """

  def __init__(self, setting: str, message: str):
    super().__init__(f"--{setting}: {message}")
    self.setting = setting


@dataclasses.dataclass(frozen=True)
class ConvertConfig:
  """A conversion run. Invalid values raise ``ConfigError`` on construction.

  Attributes:
    output_dir: Where the TFRecords, ``vocab/``, ``stats.json`` and
      ``rejected/`` go; must be empty or absent.
    input_format: ``"aliccp"`` (the Tianchi release) or ``"paddlerec"``.
    skeleton: Glob of ``sample_skeleton`` files (aliccp).
    common_features: Glob of ``common_features`` files (aliccp).
    input: Glob of PaddleRec text files (paddlerec).
    max_values_per_field: The most ids kept per field and row, the heaviest
      by value; 0 keeps all.
    keep_unclicked_conversions: Keep rows logged with click=0 and
      conversion=1 instead of dropping them.
    max_bad_fraction: The run fails when more than this fraction of the rows
      read is rejected (the outputs are still written).
    num_shards: Output TFRecord shards. 0: on the local runner, 8 per worker
      process but none from less than 4 MiB of input; on Beam runners, the
      runner decides (a fixed count there shuffles every example, which
      Beam's own local runners hold in memory).
    join: How impressions meet their user's common features: ``"side_input"``
      (a dict on every worker, no shuffle of impressions) or ``"cogroup"``
      (CoGroupByKey, for runners with a disk-backed shuffle).
    num_workers: Processes of the local runner (and of Beam's local runner
      when it runs this pipeline); 0 starts one per core.
  """
  output_dir: str
  input_format: str
  skeleton: Optional[str] = None
  common_features: Optional[str] = None
  input: Optional[str] = None
  max_values_per_field: int = DEFAULT_MAX_VALUES_PER_FIELD
  keep_unclicked_conversions: bool = False
  max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION
  num_shards: int = 0
  join: str = "side_input"
  num_workers: int = 0

  def __post_init__(self):
    if not self.output_dir:
      raise ConfigError("output_dir", "is required")
    if self.input_format not in INPUT_FORMATS:
      raise ConfigError("input_format",
                        f"must be one of {', '.join(INPUT_FORMATS)}, got "
                        f"{self.input_format!r}")
    if self.input_format == "aliccp":
      self._require(("skeleton", "common_features"), forbidden="input")
    else:
      self._require(("input",), forbidden="skeleton")
      if self.common_features:
        raise ConfigError("common_features",
                          "is only read with --input_format=aliccp")
    if self.max_values_per_field < 0:
      raise ConfigError("max_values_per_field", "must be >= 0 (0 keeps all), "
                        f"got {self.max_values_per_field}")
    if not 0.0 <= self.max_bad_fraction <= 1.0:
      raise ConfigError("max_bad_fraction", "must be in [0, 1], got "
                        f"{self.max_bad_fraction}")
    if self.num_shards < 0:
      raise ConfigError("num_shards", f"must be >= 0, got {self.num_shards}")
    if self.num_workers < 0:
      raise ConfigError("num_workers", "must be >= 0 (0: one per core), got "
                        f"{self.num_workers}")
    if self.join not in JOINS:
      raise ConfigError("join", f"must be one of {', '.join(JOINS)}, got "
                        f"{self.join!r}")

  def _require(self, required: tuple[str, ...], forbidden: str) -> None:
    for name in required:
      if not getattr(self, name):
        raise ConfigError(name, "is required with "
                          f"--input_format={self.input_format}")
    if getattr(self, forbidden):
      raise ConfigError(forbidden, "is not read with "
                        f"--input_format={self.input_format}")
