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
DIR/rejected/. When more than --max_bad_fraction of the rows is rejected it
exits non-zero leaving only DIR/rejected/ and DIR/FAILED.json (the error and
the counts), so that no later glob of DIR's shards finds the failed run.
"""

import sys
from typing import Sequence

from escm2_pipelines import config as config_lib
from escm2_tf import flagbind

_PROGRAM = "escm2-convert"
_FAILED = 1
_FLAGS = flagbind.Binding(flagbind.Section(config_lib.ConvertConfig,
                                           "conversion"))


def parse_flags(argv: Sequence[str]) -> list[str]:
  """Parses the converter's flags; returns argv[0] and the Beam options."""
  return flagbind.parser(_PROGRAM, _FLAGS, __doc__, known_only=True)(
      list(argv))


def main(argv: Sequence[str]) -> int:
  if len(argv) == 1:
    try:
      config = _FLAGS.build(config_lib.ConvertConfig)
    except config_lib.ConfigError as e:
      return flagbind.fail(_PROGRAM, flagbind.error_line(e))
  # Imported once the flags are known to be good: Beam loads slowly. Flags
  # left over are Beam's, or typos, which are the likelier mistake to report.
  from escm2_pipelines import convert  # pylint: disable=g-import-not-at-top
  try:
    convert.check_pipeline_args(argv[1:])
    config = _FLAGS.build(config_lib.ConvertConfig)
  except config_lib.ConfigError as e:
    return flagbind.fail(_PROGRAM, flagbind.error_line(e))
  print(f"{_PROGRAM}: converting {config.input_format} logs into "
        f"{config.output_dir}", file=sys.stderr, flush=True)
  try:
    stats = convert.run(config, pipeline_args=argv[1:])
  except config_lib.ConfigError as e:
    return flagbind.fail(_PROGRAM, flagbind.error_line(e))
  except (convert.TooManyBadRowsError, convert.OutOfSpaceError) as e:
    return flagbind.fail(_PROGRAM, str(e), _FAILED)
  print(f"{_PROGRAM}: {stats['rows_written']:,} of {stats['rows_read']:,} "
        f"rows written to {config.output_dir} ({stats['rows_rejected']:,} "
        f"rejected, {stats['rows_dropped']:,} dropped; vocab/, stats.json)")
  return 0


def run() -> None:
  flagbind.run(main, _PROGRAM, _FLAGS, __doc__, known_only=True,
               interrupted="interrupted; nothing was left in --output_dir")


if __name__ == "__main__":
  run()
