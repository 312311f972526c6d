"""The local runner: the converter's DoFns on a pool of worker processes.

Beam's local runners pass every element through coders (and, in
multi-processing mode, through gRPC between the runner and its workers), and
a fixed shard count there shuffles every example in memory. On 200k simulated
impressions Beam's in-process runner spent 16.1 CPU-seconds where this runner
spent 14.0 on the same DoFns (one sitting), and this one uses every core.
Without Beam options,
``escm2-convert`` runs the very same DoFn objects (``dofns``) here instead:
the input files are split into byte ranges (``ranges``), each range is one
bundle in a forked worker process and becomes one output shard. A record is
therefore byte-identical to the one the Beam pipeline writes; cluster runners
and ``--join=cogroup`` take the Beam pipeline (``convert.build_pipeline``).

For the Tianchi format the common rows are encoded first, in the pool, into
an SQLite table on disk (``common_store``), which the workers that join the
impressions then read: memory stays a few hundred MB whatever the number of
users.
"""

import collections
from concurrent import futures
import dataclasses
import multiprocessing
import os
import signal
import uuid
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional

from apache_beam import pvalue
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils import windowed_value

from escm2_tf import console
from escm2_tf import layout
from escm2_tf import schema
from escm2_tf.formats import common_store
from escm2_pipelines import config as config_lib
from escm2_pipelines import dofns
from escm2_pipelines import ranges as ranges_lib
from escm2_pipelines import sinks
from escm2_pipelines import tally as tally_lib
from escm2_pipelines import tfrecord
from escm2_pipelines import transforms

# Default shard count: this many shards per worker process (so tf.data can
# interleave many files and the pool balances its load), but no shard made
# from less input than MIN_SHARD_INPUT_BYTES (small inputs stay one file).
SHARDS_PER_WORKER = 8
MIN_SHARD_INPUT_BYTES = 4 << 20
# Ranges per worker for the common rows, which only feed the side input.
_COMMON_RANGES_PER_WORKER = 4
_TEMP_DIR = ".escm2-convert-temp"

# The side input of the join (the on-disk table and the duplicated indexes),
# set in the main process before the workers that read it are forked.
_side_input: dict[str, Any] = {}


def num_workers(config: config_lib.ConvertConfig) -> int:
  """Worker processes: ``config.num_workers``, or one per usable core."""
  if config.num_workers:
    return config.num_workers
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0)) or 1
  return os.cpu_count() or 1


def default_num_shards(input_bytes: int, workers: int) -> int:
  """Output shards when ``--num_shards`` is 0 (see the constants above)."""
  return max(1, min(SHARDS_PER_WORKER * workers,
                    input_bytes // MIN_SHARD_INPUT_BYTES))


class _Task(NamedTuple):
  kind: str  # "common", "join" or "paddlerec"
  index: int
  ranges: list[ranges_lib.Range]
  # Temporary path of what the task writes: a TFRecord shard, or for
  # "common" a part of the common rows' table.
  shard: Optional[str]
  rejected: str  # Temporary path for rejected lines (left absent if none).


class _Result(NamedTuple):
  task: _Task
  counts: collections.Counter
  vocab: dict[str, dict[int, int]]
  used: set[str]
  rejected: int


def _unwrap(value):
  if isinstance(value, windowed_value.WindowedValue):
    return value.value
  return value


class _Outputs:
  """Routes a DoFn's outputs: main ones to ``main``, tagged ones to files."""

  def __init__(self, main: Callable[[Any], None], rejected_path: str):
    self._main = main
    self._rejected_path = rejected_path
    self._rejected_file = None
    self.rejected = 0
    self.counts: collections.Counter = collections.Counter()
    self.vocab: dict[str, dict[int, int]] = {}
    self.used: set[str] = set()

  def take(self, outputs: Optional[Iterable]) -> None:
    for output in outputs or ():
      if not isinstance(output, pvalue.TaggedOutput):
        self._main(output)
        continue
      value = _unwrap(output.value)
      if output.tag == dofns.REJECTED:
        self._reject(value)
      elif output.tag == dofns.TALLY:
        self.counts.update(value)
      elif output.tag == dofns.VOCAB:
        _add_counts(self.vocab, *value)
      elif output.tag == dofns.USED:
        self.used.add(value[0])

  def _reject(self, line: str) -> None:
    if self._rejected_file is None:
      self._rejected_file = FileSystems.create(self._rejected_path)
    self._rejected_file.write(line.encode() + b"\n")
    self.rejected += 1

  def close(self) -> None:
    if self._rejected_file is not None:
      self._rejected_file.close()


def _add_counts(vocab: dict[str, dict[int, int]], field: str,
                counts: dict[int, int]) -> None:
  total = vocab.get(field)
  if total is None:
    vocab[field] = dict(counts)
    return
  get = total.get
  for feature_id, count in counts.items():
    total[feature_id] = get(feature_id, 0) + count


def _batches(lines: Iterator, size: int) -> Iterator[list]:
  batch = []
  for line in lines:
    batch.append(line)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch


def _run_task(task: _Task, config: config_lib.ConvertConfig) -> _Result:
  """One range through its DoFn, as one bundle; in a worker process."""
  keep = config.keep_unclicked_conversions
  if task.kind == "common":
    fn = dofns.EncodeCommonFn(config.max_values_per_field)
    writer = common_store.PartWriter(task.shard)
    main = writer.append
  else:
    # The name ends in .gz: keep FileSystems from compressing a second time.
    raw = FileSystems.create(task.shard,
                             compression_type=CompressionTypes.UNCOMPRESSED)
    writer = tfrecord.GzipWriter(raw, tfrecord.COMPRESSION_LEVEL)
    main = lambda records: writer.write(tfrecord.frame(records))
    if task.kind == "join":
      fn = dofns.SideInputJoinFn(config.max_values_per_field, keep)
    else:
      fn = dofns.EncodePaddleRecFn(config.max_values_per_field, keep)
  outputs = _Outputs(main, task.rejected)
  try:
    fn.start_bundle()
    lines = ranges_lib.read_lines(task.ranges)
    if task.kind == "common":
      for line in lines:
        outputs.take(fn.process(line))
    else:
      side = ((_side_input["commons"], _side_input["duplicates"])
              if task.kind == "join" else ())
      for batch in _batches(lines, transforms.BATCH_SIZE):
        outputs.take(fn.process(batch, *side))
    outputs.take(fn.finish_bundle())
  finally:
    outputs.close()
    writer.close()
  return _Result(task, outputs.counts, outputs.vocab, outputs.used,
                 outputs.rejected)


def _ignore_interrupts() -> None:
  # Ctrl-C reaches the whole process group; the main process handles it and
  # ends the pool, so the workers print no traceback of their own.
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def _map(tasks: list[_Task], config: config_lib.ConvertConfig,
         workers: int) -> Iterator[_Result]:
  """Runs the tasks in forked workers (in this process for one worker)."""
  # Workers are forked so that they share the side input; without fork
  # (Windows) the tasks run here, one after another.
  if (workers == 1 or len(tasks) == 1
      or "fork" not in multiprocessing.get_all_start_methods()):
    for task in tasks:
      yield _run_task(task, config)
    return
  # Not multiprocessing.Pool: its terminate(), which leaving a Pool on an
  # error calls, can hang for ever when it kills a worker that holds the
  # result queue's lock (seen on one core with a task failing in each worker).
  # The executor instead lets running tasks end and cancels the others.
  executor = futures.ProcessPoolExecutor(
      min(workers, len(tasks)), mp_context=multiprocessing.get_context("fork"),
      initializer=_ignore_interrupts)
  try:
    for future in futures.as_completed(
        [executor.submit(_run_task, task, config) for task in tasks]):
      yield future.result()
  except KeyboardInterrupt:
    # The workers ignore SIGINT; end them now, not after their tasks.
    for process in multiprocessing.active_children():
      process.terminate()
    raise
  finally:
    executor.shutdown(wait=True, cancel_futures=True)


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
           shard: Optional[str] = None) -> _Task:
    self._tasks += 1
    return _Task(kind, self._tasks, task_ranges, shard,
                 FileSystems.join(self.temp_dir, f"rejected-{self._tasks}"))

  def results(self, tasks: list[_Task], label: str) -> Iterator[_Result]:
    """Runs the tasks; sums their counts and yields their results.

    Prints a progress line (``label``: rows/s, share of the input, ETA)
    every 10 seconds.
    """
    total = sum(r.end - r.start for task in tasks for r in task.ranges)
    progress = console.Progress(f"escm2-convert: {label}", "rows")
    rows = done = 0
    for result in _map(tasks, self.config, self.workers):
      done += sum(r.end - r.start for r in result.task.ranges)
      rows += sum(result.counts.get(name, 0) for name in (
          tally_lib.ROWS_READ, tally_lib.COMMON_ROWS_READ))
      progress.update(rows, share=done / total if total else None)
      self.counts.update(result.counts)
      for field, counts in result.vocab.items():
        _add_counts(self.vocab, field, counts)
      if result.rejected:
        self.rejected_files.append(result.task.rejected)
      yield result


def _encode_commons(run: _Run) -> None:
  """Encodes the common rows into a table on disk, set in ``_side_input``."""
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
  _side_input.update(commons=common_store.Table(table),
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
    _side_input.clear()
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
  run_ = _Run(config, output_dir, num_workers(config))
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
