"""Measurements behind ``escm2-bench``, each meant to run in its own process.

Every ``measure_*`` function returns a JSON-ready dict. ``run_isolated`` runs
one in a fresh (spawned) Python process and adds that process's peak
resident memory and CPU seconds, so the memory of one part (conversion,
training, serving) is not mixed up with another's, and every part starts
with cold TensorFlow state.

Wall-clock rates count whatever else the machine runs; the CPU seconds (all
threads of the measuring process) do not, so each rate also comes per CPU
second.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import multiprocessing
import resource
import time
import traceback
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from escm2_tf import data
from escm2_tf import export
from escm2_tf import schema
from escm2_tf import serving

Result = dict[str, Any]
_PERCENTILES = (50, 90, 99)


class PartError(RuntimeError):
  """A measurement failed in its child process (the message has its trace)."""


def cpu_seconds() -> float:
  """User plus system CPU seconds of this process and its waited-for children.

  All threads count; the children are the converter's worker processes.
  """
  total = 0.0
  for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
    usage = resource.getrusage(who)
    total += usage.ru_utime + usage.ru_stime
  return total


def peak_rss_mb() -> float:
  """The peak resident memory of this process and its waited-for children."""
  kilobytes = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
  return kilobytes / 1024


class Stopwatch:
  """Wall and CPU seconds since construction (or the last ``restart``)."""

  def __init__(self):
    self.restart()

  def restart(self) -> None:
    self._wall, self._cpu = time.perf_counter(), cpu_seconds()

  def read(self) -> tuple[float, float]:
    return time.perf_counter() - self._wall, cpu_seconds() - self._cpu


def rates(count: float, wall: float, cpu: float, unit: str) -> Result:
  """``count`` things in ``wall``/``cpu`` seconds as rates named by unit."""
  return {f"{unit}_per_s": count / wall, f"{unit}_per_cpu_s": count / cpu,
          "seconds": wall, "cpu_seconds": cpu, "cores_busy": cpu / wall}


def _child(connection, function: Callable[..., Result],
           kwargs: dict[str, Any]) -> None:
  try:
    result = function(**kwargs)
    result["process_peak_rss_mb"] = peak_rss_mb()
    result["process_cpu_seconds"] = cpu_seconds()
    connection.send(("ok", result))
  except BaseException:  # pylint: disable=broad-except
    connection.send(("error", traceback.format_exc()))
  finally:
    connection.close()


def run_isolated(function: Callable[..., Result], **kwargs) -> Result:
  """``function(**kwargs)`` in a spawned process, plus its peak RSS and CPU.

  Raises:
    PartError: The function raised (the message holds its traceback) or the
      process died without an answer.
  """
  context = multiprocessing.get_context("spawn")
  receiver, sender = context.Pipe(duplex=False)
  process = context.Process(target=_child, args=(sender, function, kwargs))
  process.start()
  sender.close()
  try:
    status, payload = receiver.recv()
  except EOFError:
    status, payload = "error", "the process died without a result"
  process.join()
  if status != "ok":
    raise PartError(f"{function.__name__} failed: {payload}")
  return payload


def _parse_rate(files: list[str], batch_size: int, batches: int,
                with_weights: bool) -> Result:
  """Examples/s of reading and parsing ``batches`` full batches of files."""
  spec = schema.feature_spec(with_weights=with_weights)
  dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").repeat()
  dataset = dataset.batch(batch_size, drop_remainder=True).map(
      lambda records: tf.io.parse_example(records, spec),
      num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
  iterator = iter(dataset)
  # Untimed first batches: thread pools start and tf.data tunes itself.
  for _ in range(min(batches, 20)):
    next(iterator)
  stopwatch = Stopwatch()
  for _ in range(batches):
    next(iterator)
  result = rates(batches * batch_size, *stopwatch.read(), "examples")
  result.update(examples=batches * batch_size, with_weights=with_weights)
  return result


def _ids_per_example(files: list[str], batch_size: int) -> float:
  spec = schema.feature_spec(with_weights=False)
  batch = next(iter(tf.data.TFRecordDataset(
      files, compression_type="GZIP").batch(batch_size)))
  parsed = tf.io.parse_example(batch, spec)
  ids = sum(int(tf.size(parsed[field].flat_values))
            for field in schema.FIELD_NAMES)
  return ids / int(tf.size(batch))


def measure_parse(file_pattern: str, batch_size: int, num_examples: int,
                  min_batches: int = 100) -> Result:
  """tf.data reading plus parsing of the converter's TFRecords.

  GZIP records, batched before ``tf.io.parse_example`` with
  ``schema.feature_spec`` (ids, labels and weights), mapped with autotuned
  parallelism and prefetched: the ceiling of any input pipeline over these
  files. Also without the weights, as training reads the files when the
  model does not use them. Each times one pass over ``num_examples`` (at
  least ``min_batches`` batches, repeating the files), after warm-up.
  """
  files = data.list_files(file_pattern)
  batches = max(num_examples // batch_size, min_batches)
  return {"ceiling": _parse_rate(files, batch_size, batches, True),
          "without_weights": _parse_rate(files, batch_size, batches, False),
          "ids_per_example": _ids_per_example(files, batch_size),
          "batch_size": batch_size}


def _latencies(signature, batches: list[tf.Tensor], requests: int,
               warmup: int) -> Result:
  """Times ``requests`` calls, cycling through ``batches``, after warm-up."""
  for index in range(warmup):
    signature(**{serving.EXAMPLES_INPUT: batches[index % len(batches)]})[
        "ctcvr"].numpy()
  seconds = []
  stopwatch = Stopwatch()
  for index in range(requests):
    start = time.perf_counter()
    signature(**{serving.EXAMPLES_INPUT: batches[index % len(batches)]})[
        "ctcvr"].numpy()
    seconds.append(time.perf_counter() - start)
  _, cpu = stopwatch.read()
  milliseconds = 1000 * np.percentile(seconds, _PERCENTILES)
  result = {f"p{p}_ms": float(ms) for p, ms in zip(_PERCENTILES, milliseconds)}
  result.update(requests=requests, cpu_ms_per_request=1000 * cpu / requests,
                examples_per_s=int(batches[0].shape[0]) / float(
                    np.median(seconds)))
  return result


def measure_serving(saved_model: str, file_pattern: str,
                    batch_sizes: list[int], requests: int,
                    warmup: int) -> Result:
  """Latency of ``serving_default`` on real records, one request at a time.

  The SavedModel is loaded with ``tf.saved_model.load``; each request is a
  batch of serialized tf.Examples from ``file_pattern`` (parsing, lookup,
  network and the copy of the outputs to numpy are all timed).
  """
  signature = export.load_serving_signature(saved_model)[1]
  needed = 4 * max(batch_sizes)
  records = [record.numpy() for record in tf.data.TFRecordDataset(
      data.list_files(file_pattern), compression_type="GZIP").take(needed)]
  if not records:
    raise ValueError(f"{file_pattern} holds no records to send.")
  records = (records * (needed // len(records) + 1))[:needed]
  result = {}
  for batch_size in batch_sizes:
    batches = [tf.constant(records[start:start + batch_size])
               for start in range(0, 4 * batch_size, batch_size)]
    result[f"batch_{batch_size}"] = _latencies(signature, batches, requests,
                                               warmup)
  return result
