"""The local runner: the converter's DoFns on a pool of worker processes.

Beam's local runners pass every element through coders (and, in
multi-processing mode, through gRPC between the runner and its workers), and
a fixed shard count there shuffles every example in memory. On 200k simulated
impressions Beam's in-process runner spent 16.1 CPU-seconds where this runner
spent 14.0 on the same DoFns (one sitting), and this one uses every core.
Without Beam options, ``escm2-convert`` runs the very same DoFn objects
(``dofns``) here instead: the input files are split into byte ranges
(``ranges``), each range is one bundle in a forked worker process (``pool``)
and becomes one output shard. A record is therefore byte-identical to the one
the Beam pipeline writes; cluster runners and ``--join=cogroup`` take the Beam
pipeline (``convert.build_pipeline``).

For the Tianchi format the common rows are encoded first, in the pool, into
an SQLite table on disk (``common_store``), which the workers that join the
impressions then read: memory stays a few hundred MB whatever the number of
users.
"""

import collections
import dataclasses
import uuid
from typing import Iterator, Optional

from apache_beam.io.filesystems import FileSystems

from escm2_tf import console
from escm2_tf import layout
from escm2_tf import schema
from escm2_tf.formats import common_store
from escm2_pipelines import config as config_lib
from escm2_pipelines import pool
from escm2_pipelines import ranges as ranges_lib
from escm2_pipelines import sinks
from escm2_pipelines import tally as tally_lib

# Default shard count: this many shards per worker process (so tf.data can
# interleave many files and the pool balances its load), but no shard made
# from less input than MIN_SHARD_INPUT_BYTES (small inputs stay one file).
SHARDS_PER_WORKER = 8
MIN_SHARD_INPUT_BYTES = 4 << 20
# Ranges per worker for the common rows, which only feed the side input.
_COMMON_RANGES_PER_WORKER = 4
_TEMP_DIR = ".escm2-convert-temp"


def default_num_shards(input_bytes: int, workers: int) -> int:
  """Output shards when ``--num_shards`` is 0 (see the constants above)."""
  return max(1, min(SHARDS_PER_WORKER * workers,
                    input_bytes // MIN_SHARD_INPUT_BYTES))


class _Run:
  """One local conversion: its temporary files and summed counts."""

  def __init__(self, config: config_lib.ConvertConfig, output_dir: str,
               workers: int):
    self.config = config
    self.output_dir = output_dir
    self.workers = workers
    self.temp_dir = FileSystems.join(output_dir,
                                     f"{_TEMP_DIR}-{uuid.uuid4().hex[:8]}")
    self.counts: collections.Counter = collections.Counter()
    self.vocab: dict[str, dict[int, int]] = {}
    self.rejected_files: list[str] = []
    self._tasks = 0

  def task(self, kind: str, task_ranges: list[ranges_lib.Range],
           shard: Optional[str] = None) -> pool.Task:
    self._tasks += 1
    return pool.Task(kind, self._tasks, task_ranges, shard,
                     FileSystems.join(self.temp_dir, f"rejected-{self._tasks}"))

  def results(self, tasks: list[pool.Task],
              label: str) -> Iterator[pool.Result]:
    """Runs the tasks; sums their counts and yields their results.

    Prints a progress line (``label``: rows/s, share of the input, ETA)
    every 10 seconds.
    """
    total = sum(r.end - r.start for task in tasks for r in task.ranges)
    progress = console.Progress(f"escm2-convert: {label}", "rows")
    rows = done = 0
    for result in pool.map_tasks(tasks, self.config, self.workers):
      done += sum(r.end - r.start for r in result.task.ranges)
      rows += sum(result.counts.get(name, 0) for name in (
          tally_lib.ROWS_READ, tally_lib.COMMON_ROWS_READ))
      progress.update(rows, share=done / total if total else None)
      self.counts.update(result.counts)
      for field, counts in result.vocab.items():
        pool.add_counts(self.vocab, field, counts)
      if result.rejected:
        self.rejected_files.append(result.task.rejected)
      yield result


def _encode_commons(run: _Run) -> None:
  """Encodes the common rows into a table on disk: ``pool.side_input``."""
  files = ranges_lib.match(run.config.common_features)
  parts = ranges_lib.split(files, run.workers * _COMMON_RANGES_PER_WORKER)
  table = FileSystems.join(run.temp_dir, "commons.sqlite")
  builder = common_store.Builder(table)
  tasks = [run.task("common", p, FileSystems.join(run.temp_dir,
                                                  f"commons-{k}.sqlite"))
           for k, p in enumerate(parts) if p]
  for result in run.results(tasks, f"encoding {run.config.common_features}"):
    builder.add_part(result.task.shard)
  duplicates = builder.finish()
  run.counts[tally_lib.COMMON_ROWS_DUPLICATE] += sum(duplicates.values())
  pool.side_input.update(commons=common_store.Table(table),
                         duplicates=frozenset(duplicates))


def _convert(run: _Run) -> list[tuple[str, str]]:
  """Writes shards and rejected rows under temporary names.

  Returns:
    ``(temporary, final)`` paths of the files written.
  """
  config = run.config
  if config.input_format == "aliccp":
    _encode_commons(run)
    pattern, kind = config.skeleton, "join"
  else:
    pattern, kind = config.input, "paddlerec"
  files = ranges_lib.match(pattern)
  num_shards = config.num_shards or default_num_shards(
      sum(size for _, size in files), run.workers)
  renames = []
  tasks = []
  for k, part in enumerate(ranges_lib.split(files, num_shards)):
    name = (f"{layout.EXAMPLES_PREFIX}-{k:05d}-of-{num_shards:05d}"
            f"{layout.EXAMPLES_SUFFIX}")
    temporary = FileSystems.join(run.temp_dir, name)
    renames.append((temporary, FileSystems.join(run.output_dir, name)))
    tasks.append(run.task(kind, part, temporary))
  used: set[str] = set()
  try:
    for result in run.results(tasks, f"converting {pattern}"):
      used |= result.used
  finally:
    pool.side_input.clear()
  if config.input_format == "aliccp":
    run.counts[tally_lib.COMMON_ROWS_USED] += len(used)
  rejected_dir = FileSystems.join(run.output_dir, layout.REJECTED_DIR)
  for k, temporary in enumerate(sorted(run.rejected_files)):
    renames.append((temporary, FileSystems.join(
        rejected_dir,
        f"rejected-{k:05d}-of-{len(run.rejected_files):05d}.tsv")))
  return renames


def _mkdirs(path: str) -> None:
  if not FileSystems.exists(path):
    FileSystems.mkdirs(path)


def run(config: config_lib.ConvertConfig, output_dir: str) -> None:
  """Writes every output of ``config`` (see ``sinks``) into ``output_dir``.

  Shards and rejected rows are written under a temporary directory inside
  ``output_dir`` and renamed when all are complete, so a failed run
  (out of disk, say) leaves no partial file under a final name; stats.json
  is written last.
  """
  run_ = _Run(config, output_dir, pool.num_workers(config))
  _mkdirs(run_.temp_dir)
  try:
    renames = _convert(run_)
    _mkdirs(FileSystems.join(output_dir, layout.REJECTED_DIR))
    if renames:
      FileSystems.rename(*map(list, zip(*renames)))
    vocab_dir = FileSystems.join(output_dir, layout.VOCAB_DIR)
    _mkdirs(vocab_dir)
    for field in schema.FIELD_NAMES:
      sinks.write_vocabulary((field, run_.vocab.get(field, {})), vocab_dir)
    sinks.write_stats(run_.counts,
                      FileSystems.join(output_dir, layout.STATS_FILE),
                      config.input_format, dataclasses.asdict(config))
  finally:
    if FileSystems.exists(run_.temp_dir):
      FileSystems.delete([run_.temp_dir])
