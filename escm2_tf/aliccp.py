"""Pure parsers and writers for the Ali-CCP text formats.

Two formats are supported:

* The raw Tianchi release. ``sample_skeleton_*.csv`` lines are
  ``sample_id,click,conversion,common_feature_index,feature_num,feature_list``
  and ``common_features_*.csv`` lines are
  ``common_feature_index,feature_num,feature_list``. A feature list joins items
  with ``\\x01``; an item is ``field_id\\x02feature_id\\x03value``.
* PaddleRec's text format: ``sample_id,click,buy,field:gid,field:gid,...``.

These functions never touch Beam or TensorFlow, so they are unit-tested alone
and shared by the converter, the simulator and the batch scorer. Every problem
raises ``BadRowError`` with a short machine-readable ``reason``.
"""

import dataclasses
from typing import Iterable, Mapping, Sequence

from escm2_tf import schema

ITEM_SEP = "\x01"
FIELD_SEP = "\x02"
VALUE_SEP = "\x03"

# Features of one row: field name -> ids and their values, in file order.
Features = Mapping[str, Sequence[tuple[int, float]]]


class BadRowError(ValueError):
  """A line that does not follow its format.

  Attributes:
    reason: A short stable label, e.g. ``"column_count"``, used to count
      rejected rows by kind.
  """

  def __init__(self, reason: str, detail: str):
    super().__init__(f"{reason}: {detail}")
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class SkeletonRow:
  sample_id: str
  click: int
  conversion: int
  common_feature_index: str
  features: Features


@dataclasses.dataclass(frozen=True)
class CommonRow:
  common_feature_index: str
  features: Features


@dataclasses.dataclass(frozen=True)
class PaddleRecRow:
  sample_id: str
  click: int
  conversion: int
  features: Features


def _parse_int(text: str, what: str, reason: str = "non_numeric") -> int:
  try:
    return int(text)
  except ValueError:
    raise BadRowError(reason, f"{what} {text[:40]!r} is not an integer") from None


def _parse_label(text: str, what: str) -> int:
  label = _parse_int(text, what, reason="bad_label")
  if label not in (0, 1):
    raise BadRowError("bad_label", f"{what} is {label}, expected 0 or 1")
  return label


def parse_feature_list(text: str, feature_num: int) -> dict[str, list[tuple[int, float]]]:
  """Parses a Tianchi feature list, keeping only the schema's fields.

  Args:
    text: Items ``field\\x02id\\x03value`` joined by ``\\x01``.
    feature_num: The item count the row declares.

  Returns:
    Field name to ``(feature_id, value)`` pairs, for fields of the schema.

  Raises:
    BadRowError: on a broken item or a count that disagrees with the list.
  """
  items = text.split(ITEM_SEP) if text else []
  if len(items) != feature_num:
    raise BadRowError("feature_num_mismatch",
                      f"feature_num is {feature_num} but the list has "
                      f"{len(items)} items")
  features: dict[str, list[tuple[int, float]]] = {}
  for item in items:
    field, sep1, rest = item.partition(FIELD_SEP)
    feature_id, sep2, value = rest.partition(VALUE_SEP)
    if not (sep1 and sep2 and field):
      raise BadRowError("broken_separator", f"item {item[:40]!r}")
    try:
      pair = (int(feature_id), float(value))
    except ValueError:
      raise BadRowError("non_numeric", f"item {item[:40]!r}") from None
    if field in schema.FIELDS_BY_NAME:
      features.setdefault(field, []).append(pair)
  return features


def _split(line: str, columns: int, what: str) -> list[str]:
  parts = line.rstrip("\r\n").split(",", columns - 1)
  if len(parts) != columns:
    raise BadRowError("column_count",
                      f"{what} line has {len(parts)} columns, expected {columns}")
  return parts


def parse_skeleton_line(line: str) -> SkeletonRow:
  """Parses one ``sample_skeleton_*.csv`` line."""
  sample_id, click, conversion, index, num, feature_list = _split(
      line, 6, "sample_skeleton")
  if not index:
    raise BadRowError("column_count", "empty common_feature_index")
  return SkeletonRow(
      sample_id=sample_id,
      click=_parse_label(click, "click"),
      conversion=_parse_label(conversion, "conversion"),
      common_feature_index=index,
      features=parse_feature_list(feature_list,
                                  _parse_int(num, "feature_num")))


def parse_common_line(line: str) -> CommonRow:
  """Parses one ``common_features_*.csv`` line."""
  index, num, feature_list = _split(line, 3, "common_features")
  if not index:
    raise BadRowError("column_count", "empty common_feature_index")
  return CommonRow(index, parse_feature_list(feature_list,
                                             _parse_int(num, "feature_num")))


def parse_paddlerec_line(line: str) -> PaddleRecRow:
  """Parses one PaddleRec line ``sample_id,click,buy,field:gid,...``.

  Every ``field:gid`` token is kept, including the first one, which
  PaddleRec's own reader drops. Tokens of fields outside the schema are
  ignored. Values are 1.0: the format carries none.
  """
  tokens = line.rstrip("\r\n").split(",")
  if len(tokens) < 4:
    raise BadRowError("column_count",
                      f"paddlerec line has {len(tokens)} columns, expected "
                      "at least 4")
  features: dict[str, list[tuple[int, float]]] = {}
  for token in tokens[3:]:
    field, sep, gid = token.partition(":")
    if not (sep and field):
      raise BadRowError("broken_separator", f"token {token[:40]!r}")
    feature_id = _parse_int(gid, f"id of field {field}")
    if field in schema.FIELDS_BY_NAME:
      features.setdefault(field, []).append((feature_id, 1.0))
  return PaddleRecRow(tokens[0], _parse_label(tokens[1], "click"),
                      _parse_label(tokens[2], "buy"), features)


def _format_value(value: float) -> str:
  return "1" if value == 1.0 else repr(float(value))


def format_feature_list(items: Iterable[tuple[str, int, float]]) -> tuple[int, str]:
  """Formats ``(field, feature_id, value)`` triples as a Tianchi feature list.

  Returns:
    ``(feature_num, feature_list)``.
  """
  parts = [f"{field}{FIELD_SEP}{feature_id}{VALUE_SEP}{_format_value(value)}"
           for field, feature_id, value in items]
  return len(parts), ITEM_SEP.join(parts)


def format_skeleton_line(sample_id: str, click: int, conversion: int,
                         common_feature_index: str,
                         items: Iterable[tuple[str, int, float]]) -> str:
  """Formats one ``sample_skeleton_*.csv`` line, without the newline."""
  num, text = format_feature_list(items)
  return f"{sample_id},{click},{conversion},{common_feature_index},{num},{text}"


def format_common_line(common_feature_index: str,
                       items: Iterable[tuple[str, int, float]]) -> str:
  """Formats one ``common_features_*.csv`` line, without the newline."""
  num, text = format_feature_list(items)
  return f"{common_feature_index},{num},{text}"


def format_paddlerec_line(sample_id: str, click: int, conversion: int,
                          items: Iterable[tuple[str, int]]) -> str:
  """Formats one PaddleRec line from ``(field, global_id)`` pairs."""
  tokens = ",".join(f"{field}:{gid}" for field, gid in items)
  return f"{sample_id},{click},{conversion},{tokens}"
