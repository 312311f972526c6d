"""The converter's DoFns: parse, join, encode and count.

Impressions arrive and leave in batches (lists), so the runner handles one
element per batch rather than per impression. Every DoFn counts into a
per-bundle ``tally.Tally`` and emits it (and its vocabulary counts) from
``finish_bundle``, so the per-row cost stays a few dict updates. Bad rows go
to the ``REJECTED`` output as ``reason<TAB>source<TAB>line`` and bump a Beam
metrics counter.
"""

import collections
from typing import Iterable, Iterator, Mapping, Optional

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.transforms import window

from escm2_tf.formats import aliccp
from escm2_tf.formats import encode
from escm2_tf.formats import examples
from escm2_pipelines import tally as tally_lib

REJECTED = "rejected"
TALLY = "tally"
VOCAB = "vocab"
USED = "used"

METRICS_NAMESPACE = "escm2_convert"
MISSING_COMMON = "missing_common_features"
DUPLICATE_COMMON = "duplicate_common_features"
PADDING_IDS = "padding_ids_skipped"

# Vocabulary counts leave a bundle in chunks of this many ids, to keep
# elements small on runners that ship them between machines.
_VOCAB_CHUNK = 50_000
# Distinct user parts of PaddleRec lines that wait to be counted.
_MAX_SHARED = 4096

Line = tuple[str, bytes]  # (source file, line as read)


def _in_global_window(value):
  return window.GlobalWindows.windowed_value(value)


def _decoded(line: bytes) -> str:
  # Lines are read as bytes so that one undecodable line is rejected instead
  # of failing the whole pipeline.
  try:
    return line.decode()
  except UnicodeDecodeError as e:
    raise aliccp.BadRowError("not_utf8", str(e)) from None


class _CountingDoFn(beam.DoFn):
  """Keeps a ``Tally`` per bundle and emits it when the bundle ends."""

  def start_bundle(self):
    self._tally = tally_lib.Tally()

  def finish_bundle(self):
    yield from self._flush()
    yield pvalue.TaggedOutput(TALLY, _in_global_window(self._tally.finish()))
    for field, counts in self._tally.vocab.items():
      items = list(counts.items())
      for start in range(0, len(items), _VOCAB_CHUNK):
        chunk = dict(items[start:start + _VOCAB_CHUNK])
        yield pvalue.TaggedOutput(VOCAB, _in_global_window((field, chunk)))

  def _flush(self) -> Iterator:
    """Hook for subclasses that finish counting at the end of a bundle."""
    return iter(())

  def _rejected(self, reason: str, source: str, line: str | bytes, *,
                common: bool = False) -> pvalue.TaggedOutput:
    if isinstance(line, bytes):
      line = line.decode(errors="backslashreplace")
    if common:
      self._tally.reject_common(reason)
    else:
      self._tally.reject(reason)
    kind = "common_rejected_" if common else "rejected_"
    beam.metrics.Metrics.counter(METRICS_NAMESPACE, kind + reason).inc()
    return pvalue.TaggedOutput(REJECTED, f"{reason}\t{source}\t{line}")


class EncodeCommonFn(_CountingDoFn):
  """``(source, common line)`` to ``(common_feature_index, entries)``."""

  def __init__(self, max_values: int):
    self._max_values = max_values

  def process(self, element: Line):
    source, line = element
    self._tally.counts[tally_lib.COMMON_ROWS_READ] += 1
    try:
      index, encoded = encode.encode_common(_decoded(line), self._max_values)
    except aliccp.BadRowError as e:
      yield self._rejected(e.reason, source, line, common=True)
      return
    self._tally.parsed(encoded.truncated, encoded.ignored,
                       encoded.unstored_values)
    yield index, encoded.entries


class _ImpressionFn(_CountingDoFn):
  """Turns skeleton lines and their user's entries into Examples."""

  def __init__(self, max_values: int, keep_unclicked_conversions: bool):
    self._max_values = max_values
    self._keep_unclicked = keep_unclicked_conversions

  def _impression(self, source: str, line: str, user_entries: Optional[bytes],
                  missing_reason: str) -> bytes | pvalue.TaggedOutput | None:
    """The example of a line read, its rejection, or None if dropped."""
    try:
      row, encoded = encode.encode_skeleton(line, self._max_values)
    except aliccp.BadRowError as e:
      return self._rejected(e.reason, source, line)
    self._tally.parsed(encoded.truncated, encoded.ignored,
                       encoded.unstored_values)
    if user_entries is None:
      return self._rejected(missing_reason, source, line)
    if encode.is_unclicked_conversion(row) and not self._keep_unclicked:
      self._tally.counts[tally_lib.ROWS_DROPPED] += 1
      return None
    self._tally.written(row.click, row.conversion)
    self._tally.ids(encoded.ids)
    return examples.example_from_entries(user_entries, encoded.entries)


class KeySkeletonFn(_CountingDoFn):
  """``(source, skeleton line)`` keyed by its common_feature_index."""

  def process(self, element: Line):
    source, raw = element
    self._tally.counts[tally_lib.ROWS_READ] += 1
    try:
      line = _decoded(raw)
      index = aliccp.skeleton_index(line)
    except aliccp.BadRowError as e:
      yield self._rejected(e.reason, source, raw)
      return
    yield index, (source, line)


class CoGroupJoinFn(_ImpressionFn):
  """Joins the co-grouped common row and skeleton lines of one index."""

  def process(self, element: tuple[str, Mapping[str, Iterable]]):
    _, groups = element
    commons = list(groups["common"])
    user_entries, reason = None, MISSING_COMMON
    if len(commons) == 1:
      user_entries = commons[0]
    elif commons:
      self._tally.counts[tally_lib.COMMON_ROWS_DUPLICATE] += len(commons)
      reason = DUPLICATE_COMMON
    batch = []
    for source, line in groups["skeleton"]:
      result = self._impression(source, line, user_entries, reason)
      if isinstance(result, bytes):
        batch.append(result)
      elif result is not None:
        yield result
    if batch:
      self._tally.counts[tally_lib.COMMON_ROWS_USED] += 1
      self._tally.ids(examples.int64_lists(user_entries), times=len(batch))
      yield batch


class SideInputJoinFn(_ImpressionFn):
  """Joins batches of skeleton lines with a dict of all users' entries.

  A user's ids are counted once per bundle, times the user's examples
  written in it; the dict is kept from ``process`` for that, as side inputs
  are not passed to ``finish_bundle``.
  """

  def start_bundle(self):
    super().start_bundle()
    self._kept: collections.Counter = collections.Counter()
    self._commons: Mapping[str, bytes] = {}
    self._duplicates: Optional[frozenset] = None

  def process(self, lines: list[Line], commons: Mapping[str, bytes],
              duplicates: Iterable[str]):
    if self._duplicates is None:
      self._commons, self._duplicates = commons, frozenset(duplicates)
    counts = self._tally.counts
    batch = []
    for source, raw in lines:
      counts[tally_lib.ROWS_READ] += 1
      try:
        line = _decoded(raw)
        index = aliccp.skeleton_index(line)
      except aliccp.BadRowError as e:
        yield self._rejected(e.reason, source, raw)
        continue
      user_entries, reason = commons.get(index), MISSING_COMMON
      if index in self._duplicates:
        user_entries, reason = None, DUPLICATE_COMMON
      result = self._impression(source, line, user_entries, reason)
      if isinstance(result, bytes):
        batch.append(result)
        self._kept[index] += 1
      elif result is not None:
        yield result
    if batch:
      yield batch

  def _flush(self) -> Iterator:
    for index, kept in self._kept.items():
      self._tally.ids(examples.int64_lists(self._commons[index]), times=kept)
      yield pvalue.TaggedOutput(USED, _in_global_window((index, kept)))


class EncodePaddleRecFn(_CountingDoFn):
  """Batches of ``(source, PaddleRec line)`` to lists of Examples.

  The user's part of a line (``encode.encode_paddlerec_parts``) is one
  object for all of the user's adjacent lines: it is counted once per
  object, times its rows, when the bundle ends or ``_MAX_SHARED`` parts wait.
  """

  def __init__(self, max_values: int, keep_unclicked_conversions: bool):
    self._max_values = max_values
    self._keep_unclicked = keep_unclicked_conversions

  def start_bundle(self):
    super().start_bundle()
    # id(part) -> [part, rows parsed, rows written]; the part is kept, so
    # its id is not reused while it waits.
    self._shared: dict[int, list] = {}

  def process(self, lines: list[Line]):
    self._tally.counts[tally_lib.ROWS_READ] += len(lines)
    batch = []
    for source, line in lines:
      result = self._example(source, line)
      if isinstance(result, bytes):
        batch.append(result)
      elif result is not None:
        yield result
    if batch:
      yield batch

  def _example(self, source: str,
               line: bytes) -> bytes | pvalue.TaggedOutput | None:
    """The example of a line read, its rejection, or None if dropped."""
    try:
      row, own, shared = encode.encode_paddlerec_parts(_decoded(line),
                                                       self._max_values)
    except aliccp.BadRowError as e:
      return self._rejected(e.reason, source, line)
    tally = self._tally
    if own.truncated or own.ignored or own.padding_ids:
      tally.parsed(own.truncated, own.ignored, 0, own.padding_ids)
    written = self._keep_unclicked or not encode.is_unclicked_conversion(row)
    padding = own.padding_ids
    if shared is not None:
      padding += shared.padding_ids
      self._share(shared, written)
    if padding:
      beam.metrics.Metrics.counter(METRICS_NAMESPACE, PADDING_IDS).inc(padding)
    if not written:
      tally.counts[tally_lib.ROWS_DROPPED] += 1
      return None
    tally.written(row.click, row.conversion)
    tally.ids(own.ids)
    return examples.example_from_entries(
        own.entries, shared.entries if shared is not None else b"")

  def _share(self, shared: encode.Encoded, written: bool) -> None:
    """Notes one more row parsed (and maybe written) with a user's part."""
    counts = self._shared.get(id(shared))
    if counts is None:
      if len(self._shared) >= _MAX_SHARED:
        self._count_shared()
      counts = self._shared[id(shared)] = [shared, 0, 0]
    counts[1] += 1
    counts[2] += written

  def _count_shared(self) -> None:
    """Counts the waiting users' parts, each times its rows."""
    for shared, parsed, written in self._shared.values():
      self._tally.parsed(shared.truncated, shared.ignored, 0,
                         shared.padding_ids, times=parsed)
      if written:
        self._tally.ids(shared.ids, times=written)
    self._shared.clear()

  def _flush(self) -> Iterator:
    self._count_shared()
    return iter(())
