"""Pure parsers and writers for the raw Tianchi release of Ali-CCP.

``sample_skeleton_*.csv`` lines are
``sample_id,click,conversion,common_feature_index,feature_num,feature_list``
and ``common_features_*.csv`` lines are
``common_feature_index,feature_num,feature_list``. A feature list joins items
with ``\\x01``; an item is ``field_id\\x02feature_id\\x03value``.

The row checks (``parse_label``, ``check_ids``), ``group_by_field`` and
``BadRowError`` are shared with PaddleRec's text format (``paddlerec``), so
both formats reject a row for the same reason.

These functions never touch Beam or TensorFlow, so they are unit-tested alone
and shared by the converter, the simulator and the batch scorer. Every problem
raises ``BadRowError`` with a short machine-readable ``reason``.

Parsed features map a schema field to ``(ids, values)``, two equally long lists
in file order. Items of fields outside the schema are not kept but counted in
the row's ``ignored_items``, so a caller can report them.
"""

import dataclasses
import itertools
import math
import re
from typing import Iterable, Mapping

from escm2_tf import schema

ITEM_SEP = "\x01"
FIELD_SEP = "\x02"
VALUE_SEP = "\x03"

# Feature ids are int64 and id 0 is the padding id (schema.PAD_ID).
MAX_ID = (1 << 63) - 1

# Field name -> (ids, values) in file order.
Features = Mapping[str, tuple[list[int], list[float]]]

_SEPARATORS = ITEM_SEP + FIELD_SEP + VALUE_SEP
_TEXT = f"[^{_SEPARATORS}]*"
_ITEM = f"{_TEXT}{FIELD_SEP}{_TEXT}{VALUE_SEP}{_TEXT}"
_FEATURE_LIST = re.compile(f"{_ITEM}(?:{ITEM_SEP}{_ITEM})*")
# Deletes every ASCII character but the separators.
_ONLY_SEPARATORS = dict.fromkeys(c for c in range(128)
                                 if chr(c) not in _SEPARATORS)
_ITEM_SEPARATORS = FIELD_SEP + VALUE_SEP + ITEM_SEP


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
  ignored_items: int = 0


@dataclasses.dataclass(frozen=True)
class CommonRow:
  common_feature_index: str
  features: Features
  ignored_items: int = 0


def _parse_int(text: str, what: str, reason: str = "non_numeric") -> int:
  try:
    return int(text)
  except ValueError:
    raise BadRowError(reason,
                      f"{what} {text[:40]!r} is not an integer") from None


def parse_label(text: str, what: str) -> int:
  """A 0/1 label column; ``what`` names it in the error.

  Raises:
    BadRowError: ``bad_label`` for text that is not 0 or 1.
  """
  label = _parse_int(text, what, reason="bad_label")
  if label not in (0, 1):
    raise BadRowError("bad_label", f"{what} is {label}, expected 0 or 1")
  return label


def check_ids(ids: list[int]) -> None:
  """Raises ``BadRowError`` (``bad_id``) for an id outside [1, 2^63)."""
  if ids and (min(ids) < 1 or max(ids) > MAX_ID):
    bad = next(i for i in ids if not 1 <= i <= MAX_ID)
    raise BadRowError("bad_id", f"feature id {bad} is outside [1, 2^63)")


def group_by_field(
    fields: list[str], ids: list[int],
    values: list[float]) -> tuple[dict[str, tuple[list[int], list[float]]],
                                  int]:
  """Groups parallel item lists by field, dropping fields outside the schema.

  Rows list a field's items together, so runs are sliced rather than items
  appended one by one.

  Returns:
    ``(features, ignored_items)``: the schema's fields and the number of
    items of other fields.
  """
  features: dict[str, tuple[list[int], list[float]]] = {}
  start = 0
  for field, run in itertools.groupby(fields):
    end = start + len(list(run))
    entry = features.get(field)
    if entry is None:
      features[field] = (ids[start:end], values[start:end])
    else:
      entry[0].extend(ids[start:end])
      entry[1].extend(values[start:end])
    start = end
  ignored = 0
  for field in [f for f in features if f not in schema.FIELDS_BY_NAME]:
    ignored += len(features.pop(field)[0])
  return features, ignored


def _well_formed(text: str, num_items: int) -> bool:
  """Whether every item reads ``field\x02id\x03value``."""
  # Comparing the separators alone is several times cheaper than the regular
  # expression, which only decides for text with non-ASCII characters.
  separators = text.translate(_ONLY_SEPARATORS)
  if separators == (_ITEM_SEPARATORS * num_items)[:-1]:
    return True
  return not separators.isascii() and bool(_FEATURE_LIST.fullmatch(text))


def parse_feature_list(text: str, feature_num: int) -> tuple[Features, int]:
  """Parses a Tianchi feature list.

  The list is checked, split and converted with ``str`` and ``map`` calls: a
  user's common row carries hundreds of items, and a per-item Python loop
  would dominate the converter.

  Args:
    text: Items ``field\\x02id\\x03value`` joined by ``\\x01``.
    feature_num: The item count the row declares.

  Returns:
    ``(features, ignored_items)``: the schema's fields and the number of
    items of other fields.

  Raises:
    BadRowError: on a broken item, a count that disagrees with the list, a
      non-numeric or out-of-range id, or a non-finite value.
  """
  num_items = text.count(ITEM_SEP) + 1 if text else 0
  if num_items != feature_num:
    raise BadRowError("feature_num_mismatch",
                      f"feature_num is {feature_num} but the list has "
                      f"{num_items} items")
  if text and not _well_formed(text, num_items):
    raise BadRowError("broken_separator",
                      f"separators of the feature list {text[:60]!r}")
  parts = text.replace(ITEM_SEP, FIELD_SEP).replace(
      VALUE_SEP, FIELD_SEP).split(FIELD_SEP) if text else []
  fields = parts[0::3]
  if "" in fields:
    raise BadRowError("broken_separator", "an item has an empty field id")
  value_texts = parts[2::3]
  try:
    ids = list(map(int, parts[1::3]))
    # Most values are logged as "1": no float() for those rows.
    values = ([1.0] * num_items if value_texts.count("1") == num_items
              else list(map(float, value_texts)))
  except ValueError as e:
    raise BadRowError("non_numeric", f"feature list item: {e}") from None
  check_ids(ids)
  if not all(map(math.isfinite, values)):
    raise BadRowError("bad_value", "a feature value is not finite")
  return group_by_field(fields, ids, values)


def _split(line: str, columns: int, what: str) -> list[str]:
  parts = line.rstrip("\r\n").split(",", columns - 1)
  if len(parts) != columns:
    raise BadRowError("column_count",
                      f"{what} line has {len(parts)} columns, expected "
                      f"{columns}")
  return parts


def skeleton_index(line: str) -> str:
  """The ``common_feature_index`` of a skeleton line, checked only for shape.

  The converter groups skeleton lines by this key before parsing them.
  """
  parts = line.split(",", 4)
  if len(parts) != 5:
    raise BadRowError("column_count",
                      f"sample_skeleton line has {len(parts)} columns, "
                      "expected 6")
  if not parts[3]:
    raise BadRowError("empty_column", "empty common_feature_index")
  return parts[3]


def parse_skeleton_line(line: str) -> SkeletonRow:
  """Parses one ``sample_skeleton_*.csv`` line."""
  sample_id, click, conversion, index, num, feature_list = _split(
      line, 6, "sample_skeleton")
  if not index:
    raise BadRowError("empty_column", "empty common_feature_index")
  if not sample_id:
    raise BadRowError("empty_column", "empty sample_id")
  features, ignored = parse_feature_list(feature_list,
                                         _parse_int(num, "feature_num"))
  return SkeletonRow(
      sample_id=sample_id,
      click=parse_label(click, "click"),
      conversion=parse_label(conversion, "conversion"),
      common_feature_index=index,
      features=features,
      ignored_items=ignored)


def parse_common_line(line: str) -> CommonRow:
  """Parses one ``common_features_*.csv`` line."""
  index, num, feature_list = _split(line, 3, "common_features")
  if not index:
    raise BadRowError("empty_column", "empty common_feature_index")
  features, ignored = parse_feature_list(feature_list,
                                         _parse_int(num, "feature_num"))
  return CommonRow(index, features, ignored)


def _format_value(value: float) -> str:
  return "1" if value == 1.0 else repr(float(value))


def format_feature_list(
    items: Iterable[tuple[str, int, float]]) -> tuple[int, str]:
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
