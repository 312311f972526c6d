"""Counts kept while converting, and the ``stats.json`` built from them.

Workers count into a ``Tally`` per bundle and emit it once, so the hot loop
only bumps dict entries; the counts travel as flat ``collections.Counter``
objects keyed by the names below and are summed into one before
``build_stats`` turns them into the report. Counting is exact (not Beam
metrics, which runners may only report as "attempted" under retries), so the
report reconciles: ``rows_read == rows_written + rows_rejected +
rows_dropped``.
"""

import collections
from typing import Any, Iterable, Mapping, Sequence

from escm2_tf import schema

ROWS_READ = "rows_read"
ROWS_WRITTEN = "rows_written"
ROWS_REJECTED = "rows_rejected"
ROWS_DROPPED = "rows_dropped"
CLICKS = "clicks"
CONVERSIONS = "conversions"
COMMON_ROWS_READ = "common_rows_read"
COMMON_ROWS_REJECTED = "common_rows_rejected"
COMMON_ROWS_DUPLICATE = "common_rows_duplicate"
COMMON_ROWS_USED = "common_rows_used"
IDS_OUTSIDE_SCHEMA = "ids_outside_schema"
VALUES_NOT_STORED = "values_not_stored"
PADDING_IDS = "padding_ids_skipped"

_REJECTED = "rejected/"
_COMMON_REJECTED = "common_rejected/"
_FIELD_ROWS = {f: f"field_rows/{f}" for f in schema.FIELD_NAMES}
_FIELD_IDS = {f: f"field_ids/{f}" for f in schema.FIELD_NAMES}
_TRUNCATED = {f: f"truncated_ids/{f}" for f in schema.FIELD_NAMES}
# Examples whose ids wait before they are counted: bounds the lists' memory.
_PENDING_ROWS = 4096


class Tally:
  """The counts of one bundle.

  Attributes:
    counts: Row outcomes, keyed by the names above; ``finish`` adds the
      per-field coverage.
    vocab: Field to ``Counter({id: count})``: how often each id occurs in the
      written examples (complete after ``finish``).
  """

  def __init__(self):
    self.counts: collections.Counter = collections.Counter()
    self.vocab: collections.defaultdict = collections.defaultdict(
        collections.Counter)
    self._field_rows = dict.fromkeys(schema.FIELD_NAMES, 0)
    self._pending: collections.defaultdict = collections.defaultdict(list)
    self._num_pending = 0

  def reject(self, reason: str) -> None:
    self.counts[ROWS_REJECTED] += 1
    self.counts[_REJECTED + reason] += 1

  def reject_common(self, reason: str) -> None:
    self.counts[COMMON_ROWS_REJECTED] += 1
    self.counts[_COMMON_REJECTED + reason] += 1

  def written(self, click: int, conversion: int) -> None:
    self.counts[ROWS_WRITTEN] += 1
    self.counts[CLICKS] += click
    self.counts[CONVERSIONS] += conversion

  def ids(self, ids_by_field: Iterable[tuple[str, Sequence[int]]],
          times: int = 1) -> None:
    """Counts the ids of ``times`` written examples sharing these fields."""
    field_rows = self._field_rows
    if times == 1:
      # One example's ids wait in lists that Counter.update counts in C.
      pending = self._pending
      for field, ids in ids_by_field:
        field_rows[field] += 1
        pending[field].extend(ids)
      self._num_pending += 1
      if self._num_pending >= _PENDING_ROWS:
        self._count_pending()
      return
    vocab = self.vocab
    for field, ids in ids_by_field:
      field_rows[field] += times
      counts = vocab[field]
      for feature_id in ids:
        counts[feature_id] += times

  def _count_pending(self) -> None:
    for field, ids in self._pending.items():
      if ids:
        self.vocab[field].update(ids)
        ids.clear()
    self._num_pending = 0

  def parsed(self, truncated: Mapping[str, int], ignored: int,
             unstored_values: int, padding_ids: int = 0,
             times: int = 1) -> None:
    """Counts what ``times`` parsed rows (or row parts) lose alike."""
    for field, dropped in truncated.items():
      self.counts[_TRUNCATED[field]] += dropped * times
    if ignored:
      self.counts[IDS_OUTSIDE_SCHEMA] += ignored * times
    if unstored_values:
      self.counts[VALUES_NOT_STORED] += unstored_values * times
    if padding_ids:
      self.counts[PADDING_IDS] += padding_ids * times

  def finish(self) -> collections.Counter:
    """``counts`` with the per-field coverage added; call once, at the end.

    ``vocab`` is complete only after this call.
    """
    self._count_pending()
    for field, rows in self._field_rows.items():
      if rows:
        self.counts[_FIELD_ROWS[field]] += rows
    for field, ids in self.vocab.items():
      self.counts[_FIELD_IDS[field]] += sum(ids.values())
    return self.counts


def _ratio(numerator: int, denominator: int) -> float:
  return numerator / denominator if denominator else 0.0


def _by_prefix(counts: Mapping[str, int], prefix: str) -> dict[str, int]:
  return {k[len(prefix):]: v for k, v in sorted(counts.items())
          if k.startswith(prefix)}


def build_stats(counts: Mapping[str, int], *, input_format: str,
                settings: Mapping[str, Any]) -> dict[str, Any]:
  """The ``stats.json`` report from the summed counts of a run.

  Args:
    counts: The sum of all bundles' ``Tally.counts``.
    input_format: ``"aliccp"`` or ``"paddlerec"``.
    settings: The run's settings, copied into the report.

  Returns:
    Row outcomes, rejected counts by reason, label counts of written rows,
    per-field coverage (fraction of written rows with the field, mean ids per
    written row) and, for aliccp, the fate of the common rows. What parsing
    leaves out is counted per parsed row, a common row once: ids removed by
    ``max_values_per_field`` (``fields.<f>.truncated_ids``), items of fields
    outside the schema, non-1.0 values of unweighted fields and PaddleRec's
    padding ids (0), which are skipped.
  """
  written = counts.get(ROWS_WRITTEN, 0)
  stats: dict[str, Any] = {
      "input_format": input_format,
      ROWS_READ: counts.get(ROWS_READ, 0),
      ROWS_WRITTEN: written,
      ROWS_REJECTED: counts.get(ROWS_REJECTED, 0),
      ROWS_DROPPED: counts.get(ROWS_DROPPED, 0),
      "rejected_fraction": _ratio(counts.get(ROWS_REJECTED, 0),
                                  counts.get(ROWS_READ, 0)),
      "rejected_by_reason": _by_prefix(counts, _REJECTED),
      CLICKS: counts.get(CLICKS, 0),
      CONVERSIONS: counts.get(CONVERSIONS, 0),
      IDS_OUTSIDE_SCHEMA: counts.get(IDS_OUTSIDE_SCHEMA, 0),
      VALUES_NOT_STORED: counts.get(VALUES_NOT_STORED, 0),
      PADDING_IDS: counts.get(PADDING_IDS, 0),
      "fields": {
          field: {
              "coverage": _ratio(counts.get(_FIELD_ROWS[field], 0), written),
              "mean_ids": _ratio(counts.get(_FIELD_IDS[field], 0), written),
              "ids": counts.get(_FIELD_IDS[field], 0),
              "truncated_ids": counts.get(_TRUNCATED[field], 0),
          } for field in schema.FIELD_NAMES},
      "settings": dict(settings),
  }
  if input_format == "aliccp":
    read = counts.get(COMMON_ROWS_READ, 0)
    rejected = counts.get(COMMON_ROWS_REJECTED, 0)
    duplicate = counts.get(COMMON_ROWS_DUPLICATE, 0)
    used = counts.get(COMMON_ROWS_USED, 0)
    stats.update({
        COMMON_ROWS_READ: read,
        COMMON_ROWS_REJECTED: rejected,
        "common_rejected_by_reason": _by_prefix(counts, _COMMON_REJECTED),
        COMMON_ROWS_DUPLICATE: duplicate,
        COMMON_ROWS_USED: used,
        "common_rows_unused": read - rejected - duplicate - used,
    })
  return stats


def reconciles(stats: Mapping[str, Any]) -> bool:
  """Whether every row read is accounted for exactly once."""
  return stats[ROWS_READ] == (stats[ROWS_WRITTEN] + stats[ROWS_REJECTED]
                              + stats[ROWS_DROPPED])
