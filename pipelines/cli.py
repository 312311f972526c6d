"""escm2-convert: Ali-CCP (or PaddleRec text) to sharded GZIP TFRecords.

  escm2-convert --input_format=aliccp \\
      --skeleton='raw/sample_skeleton_train.csv' \\
      --common_features='raw/common_features_train.csv' --output_dir=data/train

  escm2-convert --input_format=paddlerec --input='demo/*.txt' --output_dir=out

Flags not defined here are Apache Beam pipeline options and go to the
pipeline unchanged, e.g. --runner=DataflowRunner --project=.... Without any
Beam option the default --join=side_input runs on the local runner: one
worker process per core (--num_workers), one output shard per byte range of
the input. With Beam options (or --join=cogroup) the Beam pipeline runs;
without --runner on Beam's FnApiRunner, multi-processing with one worker per
core unless --direct_running_mode says otherwise.

Writes DIR/part-*.tfrecord.gz, DIR/vocab/<field>.tsv, DIR/stats.json and
DIR/rejected/; exits non-zero when more than --max_bad_fraction of the rows
is rejected (after writing everything).
"""

import sys
from typing import Sequence

from absl import app
from absl import flags

from escm2_pipelines import config as config_lib
from escm2_pipelines import convert

_INPUT_FORMAT = flags.DEFINE_enum(
    "input_format", "aliccp", config_lib.INPUT_FORMATS,
    "aliccp: the Tianchi release (--skeleton, --common_features); "
    "paddlerec: PaddleRec's id,click,buy,field:id,... lines (--input).")
_SKELETON = flags.DEFINE_string(
    "skeleton", None, "Glob of sample_skeleton_*.csv files (aliccp).")
_COMMON_FEATURES = flags.DEFINE_string(
    "common_features", None, "Glob of common_features_*.csv files (aliccp).")
_INPUT = flags.DEFINE_string(
    "input", None, "Glob of PaddleRec text files (paddlerec).")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Empty or new directory for the outputs.")
_MAX_VALUES_PER_FIELD = flags.DEFINE_integer(
    "max_values_per_field", config_lib.DEFAULT_MAX_VALUES_PER_FIELD,
    "Keep at most this many ids per field and row, the heaviest by value "
    "(ties: file order); 0 keeps all.", lower_bound=0)
_KEEP_UNCLICKED_CONVERSIONS = flags.DEFINE_bool(
    "keep_unclicked_conversions", False,
    "Keep rows logged with click=0 and conversion=1 (dropped by default).")
_MAX_BAD_FRACTION = flags.DEFINE_float(
    "max_bad_fraction", config_lib.DEFAULT_MAX_BAD_FRACTION,
    "Fail (after writing all outputs) when a larger fraction of the rows read "
    "is rejected.", lower_bound=0.0, upper_bound=1.0)
_NUM_SHARDS = flags.DEFINE_integer(
    "num_shards", 0,
    "Output shards; 0: 8 per worker process on the local runner (none from "
    "less than 4 MiB of input), the runner's choice on Beam runners.",
    lower_bound=0)
_NUM_WORKERS = flags.DEFINE_integer(
    "num_workers", 0,
    "Worker processes of the local runner (and of Beam's local runners); "
    "0: one per core.", lower_bound=0)
_JOIN = flags.DEFINE_enum(
    "join", "side_input", config_lib.JOINS,
    "side_input: every worker holds all users' encoded features (no "
    "shuffle of impressions; right for one machine). cogroup: CoGroupByKey "
    "(for runners with a disk-backed shuffle when users do not fit a worker).")

_PROGRAM = "escm2-convert"


def parse_flags(argv: Sequence[str]) -> list[str]:
  """Parses this module's flags; returns argv[0] and the Beam options."""
  try:
    return flags.FLAGS(list(argv), known_only=True)
  except flags.Error as e:
    sys.exit(f"{_PROGRAM}: {e}")


def main(argv: Sequence[str]) -> None:
  try:
    stats = convert.convert(
        _OUTPUT_DIR.value, input_format=_INPUT_FORMAT.value,
        skeleton=_SKELETON.value, common_features=_COMMON_FEATURES.value,
        input=_INPUT.value, max_values_per_field=_MAX_VALUES_PER_FIELD.value,
        keep_unclicked_conversions=_KEEP_UNCLICKED_CONVERSIONS.value,
        max_bad_fraction=_MAX_BAD_FRACTION.value,
        num_shards=_NUM_SHARDS.value, join=_JOIN.value,
        num_workers=_NUM_WORKERS.value,
        pipeline_args=argv[1:])
  except (config_lib.ConfigError, convert.TooManyBadRowsError,
          convert.OutOfSpaceError) as e:
    sys.exit(f"{_PROGRAM}: {e}")
  print(f"{_PROGRAM}: {stats['rows_written']} of {stats['rows_read']} rows "
        f"written to {_OUTPUT_DIR.value} ({stats['rows_rejected']} rejected, "
        f"{stats['rows_dropped']} dropped)")


def run() -> None:
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
