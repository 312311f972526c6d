"""Serialized tf.train.Example records, encoded without TensorFlow.

The converter builds one record per impression on Beam workers. Importing
TensorFlow there only for its Example message would cost seconds and hundreds
of MB per worker, and filling messages field by field is slower than writing
the few wire-format bytes directly. The layout is that of
tensorflow/core/example/{example,feature}.proto::

  Example  { Features features = 1; }
  Features { map<string, Feature> feature = 1; }
  Feature  { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
                          Int64List int64_list = 3; } }
  *List    { repeated <type> value = 1 [packed]; }

A map is a repeated field of entry messages, so encoded entries concatenate:
``example_from_entries(user_entries, impression_entries)`` is one Example
holding the keys of both. The converter encodes a user's features once per
common row and reuses those bytes for each of the user's impressions.

Records follow ``schema.feature_spec(with_sample_id=True)``: labels, the
sample id, one int64 list of raw ids per field present and, for weighted
fields, a float list of weights aligned with the ids unless every weight is
1.0. An absent weight list parses as an empty row, which every reader takes
as 1.0 for each id (``layers.align_weights``, the serving signatures); all of
PaddleRec's weights are 1.0, and writing them took 38 % of its records' bytes.
"""

import functools
import struct
from typing import Iterable, Sequence

from escm2_tf.formats import aliccp
from escm2_tf import schema

# Tags of length-delimited fields (field_number << 3 | 2). Every message above
# puts its first field at number 1, hence the repeated 0x0a.
_FIRST = b"\x0a"
_MAP_VALUE = b"\x12"
_BYTES_LIST = b"\x0a"
_FLOAT_LIST = b"\x12"
_INT64_LIST = b"\x1a"

_VARINT_CACHE_SIZE = 1 << 20
_PREFIX_CACHE_SIZE = 1 << 14
_WEIGHT_NAMES = {f: schema.weight_name(f) for f in schema.WEIGHTED_FIELDS}


def _varint(value: int) -> bytes:
  """Base-128 varint; negative int64 values take ten bytes, as in protobuf."""
  if value < 0:
    value += 1 << 64
  out = bytearray()
  while value > 0x7f:
    out.append(value & 0x7f | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


class _VarintCache(dict):
  """Encoded ids by id, filled on first use.

  Ids recur heavily (a user's ids in all of their impressions, popular
  items), and a dict lookup from ``map`` is far cheaper than encoding.
  ``int64_entry`` clears the cache when it grows too large.
  """

  def __missing__(self, value: int) -> bytes:
    encoded = self[value] = _varint(value)
    return encoded


_varint_cache = _VarintCache()


def _delimited(tag: bytes, payload: bytes) -> bytes:
  return tag + _varint(len(payload)) + payload


@functools.lru_cache(maxsize=_PREFIX_CACHE_SIZE)
def _entry_header(name: str, kind: bytes, list_length: int) -> bytes:
  """A map entry up to its list message of ``list_length`` bytes.

  Entries differ mostly in their ids, so the nested headers are memoised per
  name, kind and length.
  """
  feature_length = 1 + len(_varint(list_length)) + list_length
  value = _MAP_VALUE + _varint(feature_length) + kind + _varint(list_length)
  key = _delimited(_FIRST, name.encode())
  entry_length = len(key) + len(value) + list_length
  return _FIRST + _varint(entry_length) + key + value


@functools.lru_cache(maxsize=_PREFIX_CACHE_SIZE)
def _packed_header(name: str, kind: bytes, payload_length: int) -> bytes:
  """A map entry up to its packed values of ``payload_length`` bytes."""
  packed_header = _FIRST + _varint(payload_length)
  return _entry_header(name, kind,
                       len(packed_header) + payload_length) + packed_header


def int64_entry(name: str, values: Sequence[int]) -> bytes:
  """One encoded ``Features.feature`` entry holding an int64 list."""
  if len(_varint_cache) > _VARINT_CACHE_SIZE:
    _varint_cache.clear()
  if len(values) == 1:  # Most fields of an impression: no join.
    payload = _varint_cache[values[0]]
  else:
    payload = b"".join(map(_varint_cache.__getitem__, values))
  return packed_int64_entry(name, payload)


def packed_int64_entry(name: str, payload: bytes) -> bytes:
  """``int64_entry`` of ids whose varints ``payload`` concatenates."""
  return _packed_header(name, _INT64_LIST, len(payload)) + payload


def varint(value: int) -> bytes:
  """The int64 ``value`` as ``int64_entry`` encodes it (cached)."""
  if len(_varint_cache) > _VARINT_CACHE_SIZE:
    _varint_cache.clear()
  return _varint_cache[value]


def float_entry(name: str, values: Sequence[float]) -> bytes:
  """One encoded ``Features.feature`` entry holding a float32 list."""
  payload = struct.pack(f"<{len(values)}f", *values)
  return _packed_header(name, _FLOAT_LIST, len(payload)) + payload


def bytes_entry(name: str, values: Iterable[bytes]) -> bytes:
  """One encoded ``Features.feature`` entry holding a bytes list."""
  bytes_list = b"".join(_delimited(_FIRST, value) for value in values)
  return _entry_header(name, _BYTES_LIST, len(bytes_list)) + bytes_list


_LABEL_ENTRIES = {
    (click, conversion): (int64_entry(schema.CLICK, [click])
                          + int64_entry(schema.CONVERSION, [conversion]))
    for click in (0, 1) for conversion in (0, 1)}


def label_entries(sample_id: str, click: int, conversion: int) -> bytes:
  """The encoded entries of ``sample_id`` and the two 0/1 labels."""
  labels = _LABEL_ENTRIES.get((click, conversion))
  if labels is None:
    raise ValueError(f"labels must be 0 or 1, got click={click!r}, "
                     f"conversion={conversion!r}")
  value = sample_id.encode()
  return _sample_id_header(len(value)) + value + labels


@functools.lru_cache(maxsize=_PREFIX_CACHE_SIZE)
def _sample_id_header(length: int) -> bytes:
  """``bytes_entry(schema.SAMPLE_ID, [value])`` up to a value of ``length``."""
  value_header = _FIRST + _varint(length)
  return _entry_header(schema.SAMPLE_ID, _BYTES_LIST,
                       len(value_header) + length) + value_header


def field_entries(features: aliccp.Features) -> bytes:
  """The encoded entries of parsed features, in the order of ``features``.

  Every field present gets its raw ids; a weighted field also gets its weights
  under ``schema.weight_name(field)``, unless they are all 1.0. Fields absent
  from ``features`` (or with no ids) get no entry, which parses as an empty
  ragged row.
  """
  parts = []
  for field, (ids, values) in features.items():
    if not ids:
      continue
    parts.append(int64_entry(field, ids))
    if field in _WEIGHT_NAMES and values.count(1.0) != len(values):
      parts.append(float_entry(_WEIGHT_NAMES[field], values))
  return b"".join(parts)


def example_from_entries(*entries: bytes) -> bytes:
  """A serialized Example whose Features hold all the given entries.

  Entries must not repeat a key: a parser keeps only the last of duplicates.
  """
  return _delimited(_FIRST, b"".join(entries))


def serialize_example(sample_id: str, click: int, conversion: int,
                      features: aliccp.Features) -> bytes:
  """A whole impression as one serialized tf.train.Example."""
  return example_from_entries(label_entries(sample_id, click, conversion),
                              field_entries(features))


def _read_varint(buffer: bytes, position: int) -> tuple[int, int]:
  result = shift = 0
  while True:
    byte = buffer[position]
    position += 1
    result |= (byte & 0x7f) << shift
    if byte < 0x80:
      return result, position
    shift += 7


def _read_delimited(buffer: bytes, position: int,
                    tag: bytes) -> tuple[memoryview, int]:
  if buffer[position:position + 1] != tag:
    raise ValueError(f"expected tag {tag!r} at byte {position}")
  length, position = _read_varint(buffer, position + 1)
  if position + length > len(buffer):
    raise ValueError(f"truncated field at byte {position}")
  return memoryview(buffer)[position:position + length], position + length


def int64_lists(entries: bytes) -> list[tuple[str, list[int]]]:
  """Decodes the int64 lists of encoded entries, in order; others are skipped.

  Reads what this module writes (the converter counts a user's ids from the
  bytes it shares between impressions), not arbitrary protobuf encodings.

  Raises:
    ValueError: on bytes this module does not write.
  """
  try:
    return _int64_lists(entries)
  except IndexError:
    raise ValueError("entries end inside a varint") from None


def _int64_lists(entries: bytes) -> list[tuple[str, list[int]]]:
  lists = []
  position = 0
  while position < len(entries):
    entry, position = _read_delimited(entries, position, _FIRST)
    key, offset = _read_delimited(entry, 0, _FIRST)
    feature, _ = _read_delimited(entry, offset, _MAP_VALUE)
    if feature[:1] != _INT64_LIST:
      continue
    values, _ = _read_delimited(_read_delimited(feature, 0, _INT64_LIST)[0], 0,
                                _FIRST)
    ids, cursor = [], 0
    while cursor < len(values):
      value, cursor = _read_varint(values, cursor)
      ids.append(value - (1 << 64) if value >> 63 else value)
    lists.append((bytes(key).decode(), ids))
  return lists


def limit_values(features: aliccp.Features,
                 max_values: int) -> tuple[aliccp.Features, dict[str, int]]:
  """Keeps at most ``max_values`` ids per field: the heaviest by value.

  Ties go to the earlier id in file order, and the kept ids stay in file
  order, so a field with at most ``max_values`` ids is left as it is.

  Args:
    features: Parsed features, field to ``(ids, values)``.
    max_values: The most ids kept per field; 0 keeps all.

  Returns:
    ``(kept_features, dropped)``, where ``dropped`` counts the ids removed
    per field (fields that lost none are absent).
  """
  if max_values <= 0:
    return features, {}
  kept: dict[str, tuple[list[int], list[float]]] = {}
  dropped: dict[str, int] = {}
  for field, (ids, values) in features.items():
    if len(ids) <= max_values:
      kept[field] = (ids, values)
      continue
    dropped[field] = len(ids) - max_values
    if values.count(values[0]) == len(values):
      # All tied (PaddleRec's rows, Ali-CCP's unweighted fields): the first.
      kept[field] = (ids[:max_values], values[:max_values])
      continue
    # The sort is stable, also in reverse: among equal values the earlier
    # position wins.
    heaviest = sorted(range(len(ids)), key=values.__getitem__, reverse=True)
    positions = sorted(heaviest[:max_values])
    kept[field] = ([ids[p] for p in positions], [values[p] for p in positions])
  return kept, dropped
