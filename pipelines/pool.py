"""The local runner's worker pool: byte ranges through the converter's DoFns.

A task is a few byte ranges of the input (``ranges``) that one worker process
runs through one of the Beam pipeline's own DoFns (``dofns``), as one bundle,
into one file: an output shard, or for the Tianchi format a part of the
common rows' table (``common_store``). Its tagged outputs (rejected lines,
tallies, vocabulary counts, used users) come back in the task's result.

The workers are forked, so that they share the side input of the join, which
the main process sets in ``side_input`` before the tasks that read it run.
"""

import collections
from concurrent import futures
import multiprocessing
import os
import signal
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional

from apache_beam import pvalue
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils import windowed_value

from escm2_tf.formats import common_store
from escm2_pipelines import config as config_lib
from escm2_pipelines import dofns
from escm2_pipelines import ranges as ranges_lib
from escm2_pipelines import tfrecord
from escm2_pipelines import transforms

# The side input of the join (the on-disk table and the duplicated indexes),
# set in the main process before the workers that read it are forked.
side_input: dict[str, Any] = {}


def num_workers(config: config_lib.ConvertConfig) -> int:
  """Worker processes: ``config.num_workers``, or one per usable core."""
  if config.num_workers:
    return config.num_workers
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0)) or 1
  return os.cpu_count() or 1


class Task(NamedTuple):
  """One bundle for a worker: its kind of DoFn, byte ranges and outputs."""

  kind: str  # "common", "join" or "paddlerec"
  index: int
  ranges: list[ranges_lib.Range]
  # Temporary path of what the task writes: a TFRecord shard, or for
  # "common" a part of the common rows' table.
  shard: Optional[str]
  rejected: str  # Temporary path for rejected lines (left absent if none).


class Result(NamedTuple):
  """What a task's DoFn tallied, besides the files it wrote."""

  task: Task
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
        add_counts(self.vocab, *value)
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


def add_counts(vocab: dict[str, dict[int, int]], field: str,
               counts: dict[int, int]) -> None:
  """Adds one field's vocabulary ``counts`` (id: count) into ``vocab``."""
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


def _run_task(task: Task, config: config_lib.ConvertConfig) -> Result:
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
      side = ((side_input["commons"], side_input["duplicates"])
              if task.kind == "join" else ())
      for batch in _batches(lines, transforms.BATCH_SIZE):
        outputs.take(fn.process(batch, *side))
    outputs.take(fn.finish_bundle())
  finally:
    outputs.close()
    writer.close()
  return Result(task, outputs.counts, outputs.vocab, outputs.used,
                 outputs.rejected)


def _ignore_interrupts() -> None:
  # Ctrl-C reaches the whole process group; the main process handles it and
  # ends the pool, so the workers print no traceback of their own.
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def map_tasks(tasks: list[Task], config: config_lib.ConvertConfig,
              workers: int) -> Iterator[Result]:
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
