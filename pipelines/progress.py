"""A periodic progress line for the rows a pipeline reads.

The converter's input is text, so the bytes read so far against the size of
the input files give the share done and an ETA. Each worker process counts
its own rows; on one machine with the default in-process runner that is the
whole input.
"""

import time
from typing import Any, Iterator, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from escm2_tf import console


def input_bytes(patterns: Sequence[Optional[str]]) -> int:
  """The total size of the files the globs match."""
  patterns = [pattern for pattern in patterns if pattern]
  if not patterns:
    return 0
  return sum(metadata.size_in_bytes for result in FileSystems.match(patterns)
             for metadata in result.metadata_list)


class ReportProgress(beam.DoFn):
  """Passes ``(file name, line)`` pairs through; prints rows/s and an ETA.

  Args:
    label: Starts the progress line, e.g. ``"escm2-convert: skeleton"``.
    total_bytes: The size of the input; 0 when unknown (no ETA).
    interval: Seconds between two progress lines.
  """

  def __init__(self, label: str, total_bytes: int, interval: float = 10.0):
    super().__init__()
    self._label = label
    self._total = total_bytes
    self._interval = interval

  def setup(self):
    self._progress = console.Progress(self._label, "rows",
                                      interval=self._interval)
    self._rows = 0
    self._bytes = 0

  def start_bundle(self):
    # The clock starts with the first rows, not when the worker is built.
    if not self._rows:
      self._progress.start = time.monotonic()

  def process(self, element: tuple[str, Any]) -> Iterator[tuple[str, Any]]:
    self._rows += 1
    self._bytes += len(element[1]) + 1
    if self._rows % 4096 == 0:
      self._progress.update(self._rows, share=(
          self._bytes / self._total if self._total else None))
    yield element
