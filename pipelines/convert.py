"""Builds and runs the Ali-CCP to TFRecord pipeline."""

import dataclasses
import errno
import json
import os
import uuid
from typing import Any, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options import pipeline_options

from escm2_pipelines import config as config_lib
from escm2_pipelines import local
from escm2_pipelines import pool
from escm2_pipelines import progress
from escm2_pipelines import resources
from escm2_pipelines import sinks
from escm2_pipelines import tally as tally_lib
from escm2_pipelines import transforms
from escm2_tf import console
from escm2_tf import layout

# Without --runner, Beam's DirectRunner first tries to download the Prism
# runner; the in-process FnApiRunner (which honours --direct_num_workers and
# --direct_running_mode) behaves the same offline and online.
DEFAULT_RUNNER = "FnApiRunner"
# Beam's runners in this process, which honour --direct_running_mode.
LOCAL_BEAM_RUNNERS = ("FnApiRunner", "DirectRunner")
# Every output is written here, inside --output_dir, and moved out only once
# the run has passed its checks. Hidden: no glob of the directory matches it.
_STAGING_DIR = ".escm2-convert-staging"


class OutOfSpaceError(RuntimeError):
  """The disk of the output directory filled up; no output was completed."""


def _out_of_space(error: BaseException) -> bool:
  # Beam's runners re-raise a worker's OSError inside their own errors.
  return (isinstance(error, OSError) and error.errno == errno.ENOSPC
          ) or os.strerror(errno.ENOSPC) in str(error)


class TooManyBadRowsError(RuntimeError):
  """More rows were rejected than ``max_bad_fraction`` allows.

  Attributes:
    stats: The run's statistics. Only the rejected rows and
      ``layout.FAILED_FILE`` were left in the output directory.
  """

  def __init__(self, message: str, stats: dict[str, Any]):
    super().__init__(message)
    self.stats = stats


def _check_glob(setting: str, pattern: Optional[str]) -> None:
  if pattern is None:
    return
  if not FileSystems.match([pattern])[0].metadata_list:
    raise config_lib.ConfigError(setting, f"no file matches {pattern!r}")


def _check_output_dir(output_dir: str) -> None:
  pattern = FileSystems.join(output_dir, "*")
  if FileSystems.exists(output_dir) and FileSystems.match(
      [pattern])[0].metadata_list:
    raise config_lib.ConfigError("output_dir",
                                 f"{output_dir!r} is not empty; choose a new "
                                 "directory so no stale shard is mixed in")


def check_pipeline_args(pipeline_args: Sequence[str]) -> None:
  """Rejects arguments no Beam option recognises, instead of ignoring them."""
  # PipelineOptions only logs what it cannot parse; this builds the same
  # parser from every registered options class to find those arguments.
  # pylint: disable=protected-access
  parser = pipeline_options._BeamArgumentParser(allow_abbrev=False)
  for options_class in pipeline_options.PipelineOptions.__subclasses__():
    options_class._add_argparse_args(parser)
  # pylint: enable=protected-access
  _, unknown = parser.parse_known_args(list(pipeline_args))
  if unknown:
    raise config_lib.ConfigError(
        unknown[0].lstrip("-").split("=")[0],
        "unknown flag (neither a converter flag nor a Beam pipeline option): "
        f"{' '.join(unknown)}")


def _remove_partial(output_dir: str) -> None:
  if FileSystems.exists(output_dir):
    FileSystems.delete([output_dir])


def _move(staging: str, output_dir: str, names: Sequence[str]) -> None:
  """Moves the files matching ``names`` (globs) from staging to output."""
  sources = [metadata.path for result in FileSystems.match(
      [FileSystems.join(staging, name) for name in names])
             for metadata in result.metadata_list]
  for directory in {os.path.dirname(os.path.relpath(path, staging))
                    for path in sources}:
    target = FileSystems.join(output_dir, directory)
    if directory and not FileSystems.exists(target):
      FileSystems.mkdirs(target)
  if sources:
    FileSystems.rename(sources, [
        FileSystems.join(output_dir, os.path.relpath(path, staging))
        for path in sources])


def _keep_rejected(staging: str, output_dir: str, message: str,
                   stats: dict[str, Any]) -> None:
  """What a failed run leaves: its rejected rows and ``FAILED.json``."""
  _move(staging, output_dir, [FileSystems.join(layout.REJECTED_DIR, "*.tsv")])
  layout.atomic_write(
      layout.failed_file(output_dir),
      json.dumps({"error": message, "stats": stats}, indent=2,
                 sort_keys=True) + "\n", sinks.BEAM_FILE_SYSTEM)


def _publish(staging: str, output_dir: str) -> None:
  """Moves every output to its final name, ``stats.json`` last."""
  _move(staging, output_dir, [
      "*" + layout.EXAMPLES_SUFFIX,
      FileSystems.join(layout.VOCAB_DIR, "*" + layout.VOCAB_SUFFIX),
      FileSystems.join(layout.REJECTED_DIR, "*.tsv")])
  _move(staging, output_dir, [layout.STATS_FILE])


def _has_option(args: Sequence[str], name: str) -> bool:
  return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in args)


def _pipeline_options(pipeline_args: Sequence[str],
                      workers: int) -> pipeline_options.PipelineOptions:
  """Beam's options; its local runners get one worker process per core."""
  args = list(pipeline_args)
  if not _has_option(args, "runner"):
    args.append(f"--runner={DEFAULT_RUNNER}")
  runner = pipeline_options.PipelineOptions(args).view_as(
      pipeline_options.StandardOptions).runner
  if runner in LOCAL_BEAM_RUNNERS and not _has_option(
      args, "direct_running_mode"):
    args.append("--direct_running_mode="
                + ("multi_processing" if workers > 1 else "in_memory"))
    if not _has_option(args, "direct_num_workers"):
      args.append(f"--direct_num_workers={workers}")
  return pipeline_options.PipelineOptions(args)


def uses_local_runner(config: config_lib.ConvertConfig,
                      pipeline_args: Sequence[str]) -> bool:
  """Whether ``local`` runs the conversion rather than a Beam runner.

  It does for the side-input join when no Beam option is given.
  """
  return config.join == "side_input" and not pipeline_args


def build_pipeline(pipeline: beam.Pipeline, config: config_lib.ConvertConfig,
                   out: str) -> None:
  """Adds the whole conversion of ``config``, into ``out``, to ``pipeline``."""
  def read(pattern):
    label = f"escm2-convert: reading {pattern}"
    return (beam.io.ReadFromTextWithFilename(pattern,
                                             coder=beam.coders.BytesCoder())
            | beam.ParDo(progress.ReportProgress(
                label, progress.input_bytes([pattern]))))
  if config.input_format == "aliccp":
    inputs = {
        "skeleton": pipeline | "ReadSkeleton" >> read(config.skeleton),
        "common": pipeline | "ReadCommonFeatures" >> read(
            config.common_features),
    }
    outputs = inputs | "ConvertAliCcp" >> transforms.ConvertAliCcp(
        config.max_values_per_field, config.keep_unclicked_conversions,
        config.join)
  else:
    lines = pipeline | "ReadPaddleRec" >> read(config.input)
    outputs = lines | "ConvertPaddleRec" >> transforms.ConvertPaddleRec(
        config.max_values_per_field, config.keep_unclicked_conversions)
  _ = outputs["examples"] | "WriteExamples" >> sinks.WriteExamples(
      out, config.num_shards)
  _ = outputs["rejected"] | "WriteRejected" >> sinks.WriteRejected(out)
  _ = (outputs["vocab"] | "SumVocabularies" >> transforms.SumVocabularies()
       | "WriteVocabularies" >> sinks.WriteVocabularies(out))
  _ = (outputs["tallies"] | "SumTallies" >> transforms.SumTallies()
       | "WriteStats" >> sinks.WriteStats(out, config.input_format,
                                          dataclasses.asdict(config)))


def convert(output_dir: str, *, pipeline_args: Sequence[str] = (),
            **settings: Any) -> dict[str, Any]:
  """``run`` with the ``ConvertConfig`` of ``output_dir`` and ``settings``."""
  return run(config_lib.ConvertConfig(output_dir=output_dir, **settings),
             pipeline_args)


def run(config: config_lib.ConvertConfig,
        pipeline_args: Sequence[str] = ()) -> dict[str, Any]:
  """Converts Ali-CCP text files into TFRecords and returns the statistics.

  Args:
    config: What to convert, where, and how.
    pipeline_args: Beam pipeline options, e.g. ``["--runner=DataflowRunner"]``.
      Without any, the side-input join runs on the local runner
      (``local``), every other conversion on Beam.

  Returns:
    The contents of ``config.output_dir/stats.json``.

  Raises:
    ConfigError: for an invalid setting, an input glob matching nothing, a
      non-empty output directory, an unknown pipeline option, or common
      features too large for this machine's memory with the side-input join
      on one of Beam's local runners (checked before any work).
    TooManyBadRowsError: when the rejected fraction exceeds
      ``max_bad_fraction``; only the rejected rows and ``FAILED.json`` (the
      error and the statistics) are left in ``config.output_dir``, so that
      no glob of shards, vocabularies or ``stats.json`` finds the run.
    OutOfSpaceError: when the output's disk fills up; nothing is left
      under a final name.
    KeyboardInterrupt: on Ctrl-C, after removing what the run wrote.
  """
  output_dir = config.output_dir
  for setting in ("skeleton", "common_features", "input"):
    _check_glob(setting, getattr(config, setting))
  _check_output_dir(output_dir)
  check_pipeline_args(pipeline_args)
  workers = pool.num_workers(config)
  on_local_runner = uses_local_runner(config, pipeline_args)
  options = None if on_local_runner else _pipeline_options(pipeline_args,
                                                           workers)
  # The local runner keeps the side input on disk (``common_store``); Beam's
  # local runners hold it in memory.
  if (config.input_format == "aliccp" and config.join == "side_input"
      and not on_local_runner and options.view_as(
          pipeline_options.StandardOptions).runner in LOCAL_BEAM_RUNNERS):
    resources.check_side_input_fits(config, workers)
  staging = FileSystems.join(output_dir,
                             f"{_STAGING_DIR}-{uuid.uuid4().hex[:8]}")
  try:
    with console.interruptible():
      if on_local_runner:
        local.run(config, staging)
      else:
        with beam.Pipeline(options=options) as pipeline:
          build_pipeline(pipeline, config, staging)
    return _finish(config, staging)
  except KeyboardInterrupt:
    # output_dir was empty or absent: everything in it is this run's.
    _remove_partial(output_dir)
    raise
  except Exception as e:  # pylint: disable=broad-except
    if _out_of_space(e):
      raise OutOfSpaceError(
          f"no space left on the device of --output_dir={output_dir} ({e}); "
          "no shard, vocabulary or stats.json was left under its final "
          "name. Free space or choose a larger disk, and rerun into an empty "
          "directory") from e
    raise
  finally:
    _remove_partial(staging)


def _finish(config: config_lib.ConvertConfig, staging: str) -> dict[str, Any]:
  """Checks the staged run; publishes it, or keeps only its rejected rows."""
  output_dir = config.output_dir
  stats = json.loads(sinks.read_text(
      FileSystems.join(staging, layout.STATS_FILE)))
  if not tally_lib.reconciles(stats):
    raise RuntimeError(f"Row counts do not reconcile in {output_dir}: {stats}")
  if stats["rejected_fraction"] > config.max_bad_fraction:
    message = (
        f"{stats['rows_rejected']} of {stats['rows_read']} rows rejected "
        f"({stats['rejected_fraction']:.4%}), more than --max_bad_fraction="
        f"{config.max_bad_fraction}; reasons {stats['rejected_by_reason']}, "
        f"rows in {FileSystems.join(output_dir, layout.REJECTED_DIR)}; "
        f"no example was kept")
    _keep_rejected(staging, output_dir, message, stats)
    raise TooManyBadRowsError(message, stats)
  _publish(staging, output_dir)
  return stats
