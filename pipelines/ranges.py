"""Input files split into byte ranges, and the lines of a range.

The local runner gives each worker process a few ranges of the input and
writes one output shard per range. A line belongs to the range that holds its
first byte, so the ranges of a file read every line exactly once. Lines come
out as Beam's ``ReadFromText`` yields them: without the ``\\n`` or ``\\r\\n``
that ends them.

Compressed files (detected from the name, as Beam does) cannot be entered
in the middle: each is one range.
"""

from typing import Iterator, NamedTuple, Sequence

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems


class Range(NamedTuple):
  """Bytes ``[start, end)`` of ``path``; ``end=-1`` reads to the end."""
  path: str
  start: int
  end: int


def match(pattern: str) -> list[tuple[str, int]]:
  """``(path, size in bytes)`` of the files matching ``pattern``, sorted."""
  metadata = FileSystems.match([pattern])[0].metadata_list
  return sorted((m.path, m.size_in_bytes) for m in metadata)


def _compressed(path: str) -> bool:
  return (CompressionTypes.detect_compression_type(path)
          != CompressionTypes.UNCOMPRESSED)


def split(files: Sequence[tuple[str, int]],
          num_parts: int) -> list[list[Range]]:
  """Splits the files' bytes, taken in order, into ``num_parts`` parts.

  Parts hold nearly equal numbers of bytes; a part may span several files,
  and a compressed file lies whole in the part where it starts. Parts can be
  empty when there are fewer lines than parts.
  """
  total = sum(size for _, size in files)
  bounds = [total * k // num_parts for k in range(num_parts + 1)]
  parts: list[list[Range]] = [[] for _ in range(num_parts)]
  offset = 0
  for path, size in files:
    for k in range(num_parts):
      if _compressed(path):
        if size and bounds[k] <= offset < bounds[k + 1]:
          parts[k].append(Range(path, 0, -1))
        continue
      start, end = max(bounds[k], offset), min(bounds[k + 1], offset + size)
      if start < end:
        parts[k].append(Range(path, start - offset, end - offset))
    offset += size
  return parts


def _strip(line: bytes) -> bytes:
  if line.endswith(b"\n"):
    return line[:-2] if line.endswith(b"\r\n") else line[:-1]
  return line


def read_lines(ranges: Sequence[Range]) -> Iterator[tuple[str, bytes]]:
  """``(path, line)`` for every line whose first byte lies in ``ranges``."""
  for path, start, end in ranges:
    with FileSystems.open(path, mime_type="application/octet-stream") as f:
      if end < 0:
        while line := f.readline():
          yield path, _strip(line)
        continue
      position = start
      if start > 0:
        # The line holding byte start - 1 belongs to the previous range;
        # a line that begins exactly at ``start`` is ours.
        f.seek(start - 1)
        position = start - 1 + len(f.readline())
      while position < end:
        line = f.readline()
        if not line:
          break
        position += len(line)
        yield path, _strip(line)
