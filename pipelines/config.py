"""What one conversion run does: a validated, frozen configuration."""

import dataclasses
from typing import Optional

from escm2_tf import layout
from escm2_tf import options
from escm2_tf.formats import encode
from escm2_tf.options import ConfigError
from escm2_tf.options import option

JOINS = ("side_input", "cogroup")

DEFAULT_MAX_BAD_FRACTION = 0.01


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
  output_dir: str = option(group="output")
  input_format: str = option("aliccp", choices=layout.RAW_FORMATS,
                             group="input")
  skeleton: Optional[str] = option(None, group="input")
  common_features: Optional[str] = option(None, group="input")
  input: Optional[str] = option(None, group="input")
  max_values_per_field: int = option(
      encode.DEFAULT_MAX_VALUES_PER_FIELD, minimum=0)
  keep_unclicked_conversions: bool = False
  max_bad_fraction: float = option(DEFAULT_MAX_BAD_FRACTION, minimum=0.0,
                                   maximum=1.0)
  num_shards: int = option(0, minimum=0, group="output")
  join: str = option("side_input", choices=JOINS)
  num_workers: int = option(0, minimum=0)

  def __post_init__(self):
    if not self.output_dir:
      raise ConfigError("output_dir", "is required")
    options.check_declared(self)
    if self.input_format == "aliccp":
      self._require(("skeleton", "common_features"), forbidden="input")
    else:
      self._require(("input",), forbidden="skeleton")
      if self.common_features:
        raise ConfigError("common_features",
                          "is only read with --input_format=aliccp")

  def _require(self, required: tuple[str, ...], forbidden: str) -> None:
    for name in required:
      if not getattr(self, name):
        raise ConfigError(name, "is required with "
                          f"--input_format={self.input_format}")
    if getattr(self, forbidden):
      raise ConfigError(forbidden, "is not read with "
                        f"--input_format={self.input_format}")
