"""One text line to the encoded parts of its tf.train.Example.

The one row encoder: the converter (``escm2_pipelines``) writes these bytes
to its TFRecords and ``escm2_tf.scoring`` sends them to a SavedModel, so a
raw row scores exactly as its converted record does. Pure functions over
``aliccp`` and ``paddlerec`` (parsing) and ``examples`` (the wire format),
placing fields by ``schema``; no TensorFlow, no Beam. Each raises
``aliccp.BadRowError`` for a row that cannot become (part of) an example.

An Ali-CCP impression's Example is ``examples.example_from_entries(common
entries, skeleton entries)``, a PaddleRec line's
``examples.example_from_entries(entries)``.
"""

import re
from typing import Mapping, NamedTuple, Optional, Sequence

from escm2_tf import schema
from escm2_tf.formats import aliccp
from escm2_tf.formats import examples
from escm2_tf.formats import paddlerec
from escm2_tf.formats import tokens as tokens_lib

# A user's four behaviour fields carry ~500 ids. Measured on 100k simulated
# impressions (gzip bytes / ids per example / tf.data parse rate on 2 cores):
# all 182 B / 529 / 39k/s, 50: 89 B / 215 / 98k/s, 20: 67 B / 99 / 155k/s,
# 10: 60 B / 59 / 154k/s. 20 keeps each user's 80 heaviest behaviours at the
# parse rate of 10; more ids cost input rate and model time per example.
DEFAULT_MAX_VALUES_PER_FIELD = 20

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


def _check_source(features: aliccp.Features, allowed: frozenset[str]) -> None:
  # A field on both sides of the join would reach the Example twice and a
  # parser keeps only the last copy: reject rather than lose ids quietly.
  if not allowed.issuperset(features):
    wrong = sorted(set(features) - allowed)
    raise aliccp.BadRowError("wrong_source_field",
                             f"field(s) {', '.join(wrong)} belong to the "
                             "other file of the Ali-CCP join")


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
  _check_source(row.features, _COMMON)
  return row.common_feature_index, _encode(
      row.features, row.ignored_items, max_values,
      unstored=_unstored_values(row.features))


def encode_skeleton(line: str,
                    max_values: int) -> tuple[aliccp.SkeletonRow, Encoded]:
  """A ``sample_skeleton`` line; ``entries`` include the labels and id."""
  row = aliccp.parse_skeleton_line(line)
  _check_source(row.features, _SAMPLE)
  labels = examples.label_entries(row.sample_id, row.click, row.conversion)
  return row, _encode(row.features, row.ignored_items, max_values, labels,
                      unstored=_unstored_values(row.features))


class Labels(NamedTuple):
  """The labels of a row whose features were encoded without a parsed row."""
  sample_id: str
  click: int
  conversion: int


# PaddleRec lines repeat their user's tokens (the schema's common fields,
# ~70 of a line's ~95 ids), which follow the impression's own: their
# encoding is cached by their text, as the Tianchi join encodes a common row
# once. Lines of one request are adjacent, so a small cache hits.
_USER_FIELD = "(?:{}):".format("|".join(map(re.escape, schema.COMMON_FIELDS)))
# Where the user's tokens begin: at the start, or after a comma (a literal
# that the search scans for quickly).
_USER_FIRST = re.compile(_USER_FIELD)
_USER_SIDE = re.compile("," + _USER_FIELD)
_USER_CACHE_SIZE = 4096
_user_side_cache: dict = {}
# (max_values, text, result) of the user side looked up last.
_last_user: list = [None, "", None]
# The stage of paddlerec.PaddleRecTokens that raises each reason.
_STAGES = {"broken_separator": 0, "non_numeric": 1, "bad_id": 2}


def _encode_user_side(text: str, max_values: int):
  """``(Encoded, fields)`` of user-side tokens, or ``(reason, message)``."""
  encoded = tokens_lib.encode_tokens(text, max_values)
  if encoded is not None:
    return Encoded(encoded.entries, encoded.ids, encoded.truncated,
                   encoded.ignored, 0, encoded.padding), frozenset(
                       encoded.fields)
  # A bad token: the staged parse finds the reason.
  parsed = paddlerec.PaddleRecTokens(text)
  try:
    parsed.check_tokens()
    parsed.parse_ids()
    parsed.check_ids()
  except aliccp.BadRowError as e:
    return e.reason, str(e)
  features, ignored = parsed.group()
  return _encode(features, ignored, max_values,
                 padding=parsed.padding), frozenset(features)


def _user_side(text: str, max_values: int):
  key = (max_values, text)
  result = _user_side_cache.get(key)
  if result is None:
    if len(_user_side_cache) >= _USER_CACHE_SIZE:
      _user_side_cache.clear()
    result = _user_side_cache[key] = _encode_user_side(text, max_values)
  _last_user[:] = key + (result,)
  return result


def _user_side_of(tokens: str, start: int, max_values: int):
  """``_user_side(tokens[start:])``; the last user's without a copy."""
  last_max_values, last_text, result = _last_user
  if (last_max_values == max_values and len(tokens) - start == len(last_text)
      and tokens.endswith(last_text)):
    return result
  return _user_side(tokens[start:], max_values)


def _raise_at(stage: int, user) -> None:
  """Raises the user side's cached error if it belongs to ``stage``."""
  if isinstance(user[0], str) and _STAGES[user[0]] == stage:
    raise aliccp.BadRowError(user[0], user[1].split(": ", 1)[1])


def _encode_whole(labels: bytes, tokens: str, max_values: int) -> Encoded:
  features, ignored, padding = paddlerec.parse_paddlerec_tokens(tokens)
  return _encode(features, ignored, max_values, labels, padding=padding)


def _encode_staged(labels: bytes, tokens: str, split: int,
                   max_values: int) -> Encoded:
  """A line split at ``split``, each parsing stage run on both parts."""
  impression = paddlerec.PaddleRecTokens(tokens[:split])
  impression.check_tokens()
  user = _user_side(tokens[split + 1:], max_values)
  _raise_at(0, user)
  impression.parse_ids()
  _raise_at(1, user)
  impression.check_ids()
  _raise_at(2, user)
  features, ignored = impression.group()
  user_encoded, user_fields = user
  if not user_fields.isdisjoint(features):
    return _encode_whole(labels, tokens, max_values)
  return _joined(_encode(features, ignored, max_values, labels,
                         padding=impression.padding), user_encoded)


def _joined(own: Encoded, shared: Optional[Encoded]) -> Encoded:
  """One row's ``Encoded`` from its own part and its user's."""
  if shared is None:
    return own
  return Encoded(own.entries + shared.entries, [*own.ids, *shared.ids],
                 {**own.truncated, **shared.truncated},
                 own.ignored + shared.ignored, 0,
                 own.padding_ids + shared.padding_ids)


def encode_paddlerec_parts(
    line: str, max_values: int) -> tuple[Labels, Encoded, Optional[Encoded]]:
  """A PaddleRec line as ``(labels, own part, user's part or None)``.

  The own part's ``entries`` start with the labels and the sample id; the
  Example is ``examples.example_from_entries(own.entries, user.entries)``.
  The user's part is one object for every line that repeats its user's
  text while it stays cached, so a caller can count it once per user.
  ``encode_paddlerec`` joins the two parts.
  """
  sample_id, click, conversion, tokens = paddlerec.split_paddlerec_line(line)
  labels = examples.label_entries(sample_id, click, conversion)
  row = Labels(sample_id, click, conversion)
  match = None if _USER_FIRST.match(tokens) else _USER_SIDE.search(tokens)
  if match is None:
    return row, _encode_whole(labels, tokens, max_values), None
  split = match.start()
  own = tokens_lib.encode_tokens(tokens[:split], max_values)
  if own is None:  # A bad token: the staged parse raises its reason.
    return row, _encode_staged(labels, tokens, split, max_values), None
  user = _user_side_of(tokens, split + 1, max_values)
  if isinstance(user[0], str):
    raise aliccp.BadRowError(user[0], user[1].split(": ", 1)[1])
  shared, user_fields = user
  if not user_fields.isdisjoint(own.fields):
    return row, _encode_whole(labels, tokens, max_values), None
  return row, Encoded(labels + own.entries, own.ids, own.truncated,
                      own.ignored, 0, own.padding), shared


def encode_paddlerec(line: str, max_values: int) -> tuple[Labels, Encoded]:
  """A PaddleRec line; ``entries`` hold the whole example's features.

  The format has no values, so none goes unstored; padding ids are counted.
  Encodes exactly what ``paddlerec.parse_paddlerec_line`` and the Tianchi
  encoding would, and rejects a row for the same reason: the impression's
  tokens are encoded through ``tokens``' cache, the user's come from a
  cache when the line's user was just seen, a bad token sends the line
  through the staged parse (each parsing stage runs on both parts before
  the next), and a field on both sides falls back to parsing the whole line.
  """
  row, own, shared = encode_paddlerec_parts(line, max_values)
  return row, _joined(own, shared)


def is_unclicked_conversion(
    row: aliccp.SkeletonRow | paddlerec.PaddleRecRow | Labels) -> bool:
  """Rows logged as converted without a click, which ESMM-style data drops."""
  return row.click == 0 and row.conversion == 1
