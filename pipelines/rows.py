"""One text line to encoded Example parts: the converter's per-row work.

Pure functions over ``escm2_tf.aliccp`` and ``escm2_tf.examples``, shared by
the DoFns and tested without Beam. Each raises ``aliccp.BadRowError`` for a row
that cannot become (part of) an example.
"""

from typing import Mapping, NamedTuple, Sequence

from escm2_tf.formats import aliccp
from escm2_tf.formats import examples
from escm2_tf import schema

_COMMON = frozenset(schema.COMMON_FIELDS)
_SAMPLE = frozenset(schema.SAMPLE_FIELDS)
_WEIGHTED = frozenset(schema.WEIGHTED_FIELDS)


class Encoded(NamedTuple):
  """The encoded parts of one row.

  Attributes:
    entries: Encoded ``Features`` entries (see ``examples``).
    ids: ``(field, ids kept)`` pairs, for coverage and vocabulary counts.
    truncated: Field to the ids ``max_values_per_field`` removed.
    ignored: Items of fields outside the schema.
    unstored_values: Values other than 1.0 of unweighted fields, which the
      Example has no place for (Ali-CCP logs 1.0 there).
    padding_ids: PaddleRec's padding ids (0) skipped.
  """
  entries: bytes
  ids: Sequence[tuple[str, list[int]]]
  truncated: Mapping[str, int]
  ignored: int
  unstored_values: int
  padding_ids: int = 0


def _check_source(features: aliccp.Features, allowed: frozenset[str],
                  where: str) -> None:
  # A field on both sides of the join would reach the Example twice and a
  # parser keeps only the last copy: reject rather than lose ids quietly.
  if not allowed.issuperset(features):
    wrong = sorted(set(features) - allowed)
    raise aliccp.BadRowError("wrong_source_field",
                             f"{where} row carries field(s) {', '.join(wrong)}"
                             " that the schema places on the other side")


def _unstored_values(features: aliccp.Features) -> int:
  return sum(len(values) - values.count(1.0)
             for field, (_, values) in features.items()
             if field not in _WEIGHTED)


def _encode(features: aliccp.Features, ignored: int, max_values: int,
            labels: bytes = b"", unstored: int = 0,
            padding: int = 0) -> Encoded:
  kept, truncated = examples.limit_values(features, max_values)
  return Encoded(labels + examples.field_entries(kept),
                 [(field, ids) for field, (ids, _) in kept.items()],
                 truncated, ignored, unstored, padding)


def encode_common(line: str, max_values: int) -> tuple[str, Encoded]:
  """A ``common_features`` line as ``(common_feature_index, encoded)``."""
  row = aliccp.parse_common_line(line)
  _check_source(row.features, _COMMON, "common_features")
  return row.common_feature_index, _encode(
      row.features, row.ignored_items, max_values,
      unstored=_unstored_values(row.features))


def encode_skeleton(line: str,
                    max_values: int) -> tuple[aliccp.SkeletonRow, Encoded]:
  """A ``sample_skeleton`` line; ``entries`` include the labels and id."""
  row = aliccp.parse_skeleton_line(line)
  _check_source(row.features, _SAMPLE, "sample_skeleton")
  labels = examples.label_entries(row.sample_id, row.click, row.conversion)
  return row, _encode(row.features, row.ignored_items, max_values, labels,
                      unstored=_unstored_values(row.features))


def encode_paddlerec(line: str,
                     max_values: int) -> tuple[aliccp.PaddleRecRow, Encoded]:
  """A PaddleRec line; ``entries`` hold the whole example's features.

  The format has no values, so none goes unstored; padding ids are counted.
  """
  row = aliccp.parse_paddlerec_line(line)
  labels = examples.label_entries(row.sample_id, row.click, row.conversion)
  return row, _encode(row.features, row.ignored_items, max_values, labels,
                      padding=row.padding_ids)


def is_unclicked_conversion(
    row: aliccp.SkeletonRow | aliccp.PaddleRecRow) -> bool:
  """Rows logged as converted without a click, which ESMM-style data drops."""
  return row.click == 0 and row.conversion == 1
