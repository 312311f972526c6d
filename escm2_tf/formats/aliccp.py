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
_ONLY_PADDLEREC_SEPARATORS = dict.fromkeys(c for c in range(128)
                                           if chr(c) not in ",:")


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


@dataclasses.dataclass(frozen=True)
class PaddleRecRow:
  sample_id: str
  click: int
  conversion: int
  features: Features
  ignored_items: int = 0
  padding_ids: int = 0


def _parse_int(text: str, what: str, reason: str = "non_numeric") -> int:
  try:
    return int(text)
  except ValueError:
    raise BadRowError(reason,
                      f"{what} {text[:40]!r} is not an integer") from None


def _parse_label(text: str, what: str) -> int:
  label = _parse_int(text, what, reason="bad_label")
  if label not in (0, 1):
    raise BadRowError("bad_label", f"{what} is {label}, expected 0 or 1")
  return label


def _check_ids(ids: list[int]) -> None:
  if ids and (min(ids) < 1 or max(ids) > MAX_ID):
    bad = next(i for i in ids if not 1 <= i <= MAX_ID)
    raise BadRowError("bad_id", f"feature id {bad} is outside [1, 2^63)")


def _group(fields: list[str], ids: list[int],
           values: list[float]) -> tuple[dict[str, tuple[list[int],
                                                         list[float]]], int]:
  """Groups parallel item lists by field, dropping fields outside the schema.

  Rows list a field's items together, so runs are sliced rather than items
  appended one by one.
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
  _check_ids(ids)
  if not all(map(math.isfinite, values)):
    raise BadRowError("bad_value", "a feature value is not finite")
  return _group(fields, ids, values)


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
      click=_parse_label(click, "click"),
      conversion=_parse_label(conversion, "conversion"),
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


def _paddlerec_tokens_well_formed(tokens: str, num_tokens: int) -> bool:
  """Whether every ``field:gid`` token of ``tokens`` has exactly one colon."""
  separators = tokens.translate(_ONLY_PADDLEREC_SEPARATORS)
  if separators == (":," * num_tokens)[:-1]:
    return True
  return not separators.isascii() and all(
      token.count(":") == 1 for token in tokens.split(","))


def split_paddlerec_line(line: str) -> tuple[str, int, int, str]:
  """``(sample_id, click, conversion, tokens)`` of a PaddleRec line.

  The labels are checked; ``tokens`` (``field:gid,...``) is not parsed.
  """
  columns = line.rstrip("\r\n").split(",", 3)
  if len(columns) < 4:
    raise BadRowError("column_count",
                      f"paddlerec line has {len(columns)} columns, expected "
                      "at least 4")
  sample_id, click_text, buy_text, tokens = columns
  if not sample_id:
    raise BadRowError("empty_column", "empty sample_id")
  return (sample_id, _parse_label(click_text, "click"),
          _parse_label(buy_text, "buy"), tokens)


class PaddleRecTokens:
  """``field:gid,...`` text parsed in stages, each raising its own reasons.

  Stages run in this order in ``parse_paddlerec_tokens``: ``check_tokens``
  (``broken_separator``), ``parse_ids`` (``non_numeric``), ``check_ids``
  (``bad_id``), ``group``. A caller that parses a line in two parts runs each
  stage on both parts before the next, so a row with several problems gets
  the reason a whole-line parse gives.

  Attributes:
    fields, ids: The tokens' fields and ids, id 0 (padding) removed after
      ``check_ids``.
    padding: The padding ids (0) removed.
  """

  def __init__(self, tokens: str):
    self._tokens = tokens
    self.fields: list[str] = []
    self.ids: list[int] = []
    self.padding = 0
    self._gids: list[str] = []

  def check_tokens(self) -> None:
    # One split of the whole list instead of one per token: rows carry ~90
    # (up to ~500) tokens.
    tokens = self._tokens
    num_tokens = tokens.count(",") + 1
    if not _paddlerec_tokens_well_formed(tokens, num_tokens):
      bad = next(t for t in tokens.split(",") if t.count(":") != 1)
      raise BadRowError("broken_separator", f"token {bad[:40]!r}")
    parts = tokens.replace(":", ",").split(",")
    self.fields, self._gids = parts[0::2], parts[1::2]
    if "" in self.fields:
      raise BadRowError("broken_separator", "a token has an empty field id")

  def parse_ids(self) -> None:
    try:
      self.ids = list(map(int, self._gids))
    except ValueError as e:
      raise BadRowError("non_numeric", f"paddlerec token: {e}") from None

  def check_ids(self) -> None:
    self.padding = self.ids.count(schema.PAD_ID)
    if self.padding:
      kept = [k for k, i in enumerate(self.ids) if i != schema.PAD_ID]
      self.fields = [self.fields[k] for k in kept]
      self.ids = [self.ids[k] for k in kept]
    _check_ids(self.ids)

  def group(self) -> tuple[dict[str, tuple[list[int], list[float]]], int]:
    """``(features, ignored_items)``; every value is 1.0."""
    return _group(self.fields, self.ids, [1.0] * len(self.ids))


def parse_paddlerec_tokens(tokens: str) -> tuple[Features, int, int]:
  """``(features, ignored_items, padding_ids)`` of ``field:gid,...`` text."""
  parsed = PaddleRecTokens(tokens)
  parsed.check_tokens()
  parsed.parse_ids()
  parsed.check_ids()
  features, ignored = parsed.group()
  return features, ignored, parsed.padding


def parse_paddlerec_line(line: str) -> PaddleRecRow:
  """Parses one PaddleRec line ``sample_id,click,buy,field:gid,...``.

  Every ``field:gid`` token is kept, including the first one, which
  PaddleRec's own reader drops. Values are 1.0: the format carries none.
  Id 0 is PaddleRec's padding (its reader fills a field without ids with
  ``[0]``): such tokens are skipped and counted in ``padding_ids``, never a
  reason to reject the row.
  """
  sample_id, click, conversion, tokens = split_paddlerec_line(line)
  features, ignored, padding = parse_paddlerec_tokens(tokens)
  return PaddleRecRow(sample_id, click, conversion, features, ignored,
                      padding)


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


def format_paddlerec_line(sample_id: str, click: int, conversion: int,
                          items: Iterable[tuple[str, int]]) -> str:
  """Formats one PaddleRec line from ``(field, global_id)`` pairs."""
  tokens = ",".join(f"{field}:{gid}" for field, gid in items)
  return f"{sample_id},{click},{conversion},{tokens}"
