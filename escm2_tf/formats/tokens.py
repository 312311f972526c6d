"""PaddleRec ``field:gid`` tokens to encoded entries, through a token cache.

The impression side of a PaddleRec line (the tokens before its user's) holds
about ten tokens, and the same tokens recur on many lines: an item's id,
shop and brand, the positions. Parsing them with the staged checks of
``paddlerec.PaddleRecTokens`` and grouping them with
``aliccp.group_by_field`` costs a few dozen Python operations per token;
here each distinct token text is parsed and checked once and kept with its
encoded single-id entry, so a line costs a dict lookup per token and a
join.

``encode_tokens`` encodes exactly what ``paddlerec.parse_paddlerec_tokens``,
``examples.limit_values`` and ``examples.field_entries`` give for the same
text, or returns None when a token is not valid: the caller then parses the
text the staged way, which raises the reason a whole-line parse gives.
"""

from typing import Collection, NamedTuple, Optional

from escm2_tf import schema
from escm2_tf.formats import aliccp
from escm2_tf.formats import examples

# Distinct tokens kept; the cache is emptied when it is full. A token with
# its text and entry takes about 350 bytes (tracemalloc), so a full cache
# about 90 MB per worker process; 100k lines of the benchmark's data hold
# 75k distinct tokens.
_CACHE_SIZE = 1 << 18
_PADDING = "padding"
_IGNORED = "ignored"

# Token text to _PADDING, _IGNORED or (field, id, the field's entry if the
# token is its only id, the id's varint).
_cache: dict = {}


class Tokens(NamedTuple):
  """Encoded tokens (the fields of ``encode.Encoded`` that tokens fill).

  Attributes:
    entries: Encoded ``Features`` entries, fields in order of appearance.
    ids: ``(field, ids kept)`` pairs.
    truncated: Field to the ids ``max_values`` removed.
    ignored: Tokens of fields outside the schema.
    padding: Padding ids (0) skipped.
    fields: The fields of ``ids`` (a collection of them).
  """
  entries: bytes
  ids: list[tuple[str, list[int]]]
  truncated: dict[str, int]
  ignored: int
  padding: int
  fields: Collection[str]


def _parse(token: str):
  """A token's cache value, or None if a staged parse would reject it."""
  if token.count(":") != 1:
    return None
  field, gid = token.split(":")
  if not field:
    return None
  try:
    feature_id = int(gid)
  except ValueError:
    return None
  if feature_id == schema.PAD_ID:
    return _PADDING
  if not 1 <= feature_id <= aliccp.MAX_ID:
    return None
  if field not in schema.FIELDS_BY_NAME:
    return _IGNORED
  varint = examples.varint(feature_id)
  return field, feature_id, _entries(field, varint), varint


def _entries(field: str, payload: bytes) -> bytes:
  """``examples.field_entries`` of a field's varints: PaddleRec's weights are
  all 1.0, which records leave out."""
  return examples.packed_int64_entry(field, payload)


def _group(text: str) -> Optional[tuple[dict[str, list], int, int]]:
  """``(field to parsed tokens, ignored, padding)``; None if one is bad."""
  cache = _cache
  groups: dict[str, list] = {}
  ignored = padding = 0
  for token in text.split(","):
    parsed = cache.get(token)
    if parsed is None:
      parsed = _parse(token)
      if parsed is None:
        return None
      if len(cache) >= _CACHE_SIZE:
        cache.clear()
      cache[token] = parsed
    if parsed is _PADDING:
      padding += 1
    elif parsed is _IGNORED:
      ignored += 1
    else:
      group = groups.get(parsed[0])
      if group is None:
        groups[parsed[0]] = [parsed]
      else:
        group.append(parsed)
  return groups, ignored, padding


def encode_tokens(text: str, max_values: int) -> Optional[Tokens]:
  """Encodes ``field:gid,...`` text, or returns None if a token is bad.

  Args:
    text: Comma-separated tokens (no labels).
    max_values: The most ids kept per field, the first ones (PaddleRec's
      values are all 1.0, so all tie); 0 keeps all.

  Returns:
    The encoded tokens, as the staged parse would encode them; None when a
    token has no single colon, an empty field, a non-integer id or an id
    outside [0, 2^63).
  """
  grouped = _group(text)
  if grouped is None:
    return None
  groups, ignored, padding = grouped
  parts, ids, truncated = [], [], {}
  for field, group in groups.items():
    if 0 < max_values < len(group):
      truncated[field] = len(group) - max_values
      group = group[:max_values]
    if len(group) == 1:
      parts.append(group[0][2])
      ids.append((field, [group[0][1]]))
    else:
      parts.append(_entries(field, b"".join([p[3] for p in group])))
      ids.append((field, [p[1] for p in group]))
  return Tokens(b"".join(parts), ids, truncated, ignored, padding, groups)
