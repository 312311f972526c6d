"""GZIP TFRecord files written from batches of records.

``beam.io.WriteToTFRecord`` takes one record per element and compresses at
zlib's default level 6. The converter's records are ~1-2 kB and a user's
impressions sit next to each other, so they compress ~15-25x at any level;
on simulated records level 6 took 8.8 us per record for 61 compressed bytes,
level 3 4.6 us for 77 bytes. Batches also spare the runner one element per
impression.

A TFRecord is ``uint64 length, uint32 masked_crc32c(length), data,
uint32 masked_crc32c(data)``, little-endian.
"""

import struct
import zlib
from typing import Iterable

import apache_beam as beam
from apache_beam.io import filebasedsink
from apache_beam.io.filesystem import CompressionTypes
import crcmod.predefined

COMPRESSION_LEVEL = 3

_crc32c = crcmod.predefined.mkPredefinedCrcFun("crc-32c")
_MASK_DELTA = 0xa282ead8
_GZIP_WINDOW_BITS = 16 + zlib.MAX_WBITS
_UINT32 = struct.Struct("<I")


def masked_crc32c(data: bytes) -> int:
  """The CRC of TFRecord framing: CRC-32C, rotated right by 15, plus a delta."""
  crc = _crc32c(data)
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xffffffff


class _LengthHeaders(dict):
  """The framing before a record, by the record's length, made on first use.

  Records of a run have a few hundred distinct lengths: this spares one of
  the two CRCs per record.
  """

  def __missing__(self, length: int) -> bytes:
    encoded = struct.pack("<Q", length)
    header = self[length] = encoded + struct.pack("<I",
                                                  masked_crc32c(encoded))
    return header


_length_headers = _LengthHeaders()


def frame(records: Iterable[bytes]) -> bytes:
  """Records in TFRecord framing, concatenated."""
  headers, crc32c, pack = _length_headers, _crc32c, _UINT32.pack
  parts = []
  for record in records:
    crc = crc32c(record)  # masked_crc32c, inlined: one call per record.
    parts += (headers[len(record)], record,
              pack((((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xffffffff))
  return b"".join(parts)


class GzipWriter:
  """Compresses into an open Beam file handle."""

  def __init__(self, raw, level: int):
    self._raw = raw
    self._compressor = zlib.compressobj(level, zlib.DEFLATED,
                                        _GZIP_WINDOW_BITS)

  def write(self, data: bytes) -> None:
    self._raw.write(self._compressor.compress(data))

  def close(self) -> None:
    self._raw.write(self._compressor.flush())
    self._raw.close()


class _BatchSink(filebasedsink.FileBasedSink):
  """A sink whose elements are lists of serialized records."""

  def __init__(self, file_path_prefix: str, file_name_suffix: str,
               num_shards: int, level: int):
    super().__init__(file_path_prefix, coder=beam.coders.BytesCoder(),
                     file_name_suffix=file_name_suffix, num_shards=num_shards,
                     compression_type=CompressionTypes.UNCOMPRESSED)
    self._level = level

  def open(self, temp_path):
    return GzipWriter(super().open(temp_path), self._level)

  def write_record(self, file_handle, value):
    file_handle.write(frame(value))


class WriteBatchesToTFRecord(beam.PTransform):
  """Lists of serialized records to GZIP TFRecord shards.

  Files are named ``<prefix>-SSSSS-of-NNNNN<suffix>``; ``num_shards=0``
  lets the runner choose (and avoids shuffling the batches).
  """

  def __init__(self, file_path_prefix: str, file_name_suffix: str,
               num_shards: int = 0, level: int = COMPRESSION_LEVEL):
    super().__init__()
    self._sink = _BatchSink(file_path_prefix, file_name_suffix, num_shards,
                            level)

  def expand(self, batches):
    return batches | "Write" >> beam.io.Write(self._sink)
