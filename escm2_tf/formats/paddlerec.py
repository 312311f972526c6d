"""Pure parser and writer for PaddleRec's Ali-CCP text format.

A line is ``sample_id,click,buy,field:gid,field:gid,...``: the labels, then
one ``field:gid`` token per feature id, with no values. The row checks
(labels, ids, ``BadRowError`` and its reasons) and the grouping by schema
field are the Tianchi parser's, shared from ``aliccp``, so both formats
reject a row for the same reason and give the same ``Features``.

These functions never touch Beam or TensorFlow; the converter, the
simulator and the batch scorer share them.
"""

import dataclasses
from typing import Iterable

from escm2_tf import schema
from escm2_tf.formats import aliccp

_ONLY_PADDLEREC_SEPARATORS = dict.fromkeys(c for c in range(128)
                                           if chr(c) not in ",:")


@dataclasses.dataclass(frozen=True)
class PaddleRecRow:
  sample_id: str
  click: int
  conversion: int
  features: aliccp.Features
  ignored_items: int = 0
  padding_ids: int = 0


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
    raise aliccp.BadRowError("column_count",
                             f"paddlerec line has {len(columns)} columns, "
                             "expected at least 4")
  sample_id, click_text, buy_text, tokens = columns
  if not sample_id:
    raise aliccp.BadRowError("empty_column", "empty sample_id")
  return (sample_id, aliccp.parse_label(click_text, "click"),
          aliccp.parse_label(buy_text, "buy"), tokens)


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
      raise aliccp.BadRowError("broken_separator", f"token {bad[:40]!r}")
    parts = tokens.replace(":", ",").split(",")
    self.fields, self._gids = parts[0::2], parts[1::2]
    if "" in self.fields:
      raise aliccp.BadRowError("broken_separator",
                               "a token has an empty field id")

  def parse_ids(self) -> None:
    try:
      self.ids = list(map(int, self._gids))
    except ValueError as e:
      raise aliccp.BadRowError("non_numeric",
                               f"paddlerec token: {e}") from None

  def check_ids(self) -> None:
    self.padding = self.ids.count(schema.PAD_ID)
    if self.padding:
      kept = [k for k, i in enumerate(self.ids) if i != schema.PAD_ID]
      self.fields = [self.fields[k] for k in kept]
      self.ids = [self.ids[k] for k in kept]
    aliccp.check_ids(self.ids)

  def group(self) -> tuple[dict[str, tuple[list[int], list[float]]], int]:
    """``(features, ignored_items)``; every value is 1.0."""
    return aliccp.group_by_field(self.fields, self.ids, [1.0] * len(self.ids))


def parse_paddlerec_tokens(tokens: str) -> tuple[aliccp.Features, int, int]:
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


def format_paddlerec_line(sample_id: str, click: int, conversion: int,
                          items: Iterable[tuple[str, int]]) -> str:
  """Formats one PaddleRec line from ``(field, global_id)`` pairs."""
  tokens = ",".join(f"{field}:{gid}" for field, gid in items)
  return f"{sample_id},{click},{conversion},{tokens}"
