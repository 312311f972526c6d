"""Whether the side-input join fits this machine's memory, known up front.

``--join=side_input`` on Beam's local runners holds every user's encoded
common features in memory, in the runner and in every worker's copy (the
project's own local runner keeps them on disk instead, ``common_store``, and
is not checked). The encoded size per user is measured on the
first lines of the common-features file and scaled by the files' total
size, so a file that cannot fit is refused in seconds, not after hours.
"""

import os
from typing import Optional

from apache_beam.io.filesystems import FileSystems

from escm2_tf.formats import encode
from escm2_pipelines import config as config_lib
from escm2_pipelines import ranges

# A dict entry beyond its encoded bytes: key string, bytes header, hash slot,
# and the row's share of the list that carries it to the main process.
DICT_ENTRY_OVERHEAD = 250
_SAMPLE_LINES = 200


# (limit, usage) files of cgroup v2 and v1; a container's limit caps what
# MemAvailable (the host's) promises.
_CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
     "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


def _cgroup_headroom() -> Optional[int]:
  for limit_path, usage_path in _CGROUP_FILES:
    try:
      with open(limit_path, encoding="ascii") as f:
        limit = f.read().strip()
      with open(usage_path, encoding="ascii") as f:
        usage = int(f.read())
      if limit != "max":
        return int(limit) - usage
    except (OSError, ValueError):
      continue
  return None


def available_memory_bytes() -> Optional[int]:
  """Memory this process may still use: MemAvailable, capped by a cgroup."""
  available = None
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          available = int(line.split()[1]) * 1024
  except OSError:
    return None
  headroom = _cgroup_headroom()
  if available is not None and headroom is not None:
    available = min(available, headroom)
  return available


def _sample(pattern: str) -> list[bytes]:
  path = ranges.match(pattern)[0][0]
  lines = []
  with FileSystems.open(path) as f:
    while len(lines) < _SAMPLE_LINES and (line := f.readline()):
      lines.append(line)
  return lines


def side_input_bytes(config: config_lib.ConvertConfig) -> tuple[int, int]:
  """``(text bytes, estimated in-memory bytes)`` of the common features.

  Rows that do not parse count at their text size.
  """
  files = ranges.match(config.common_features)
  text = sum(size for _, size in files)
  sample = _sample(config.common_features)
  if not text or not sample:
    return text, 0
  encoded = 0
  for line in sample:
    try:
      _, row = encode.encode_common(line.decode().rstrip("\r\n"),
                                  config.max_values_per_field)
      encoded += len(row.entries)
    except (ValueError, UnicodeDecodeError):
      encoded += len(line)
  per_text_byte = (encoded + DICT_ENTRY_OVERHEAD * len(sample)) / sum(
      map(len, sample))
  return text, int(text * per_text_byte)


def _size(num_bytes: float) -> str:
  return (f"{num_bytes / 1e9:.1f} GB" if num_bytes >= 1e9
          else f"{num_bytes / 1e6:.0f} MB")


def check_side_input_fits(config: config_lib.ConvertConfig, workers: int,
                          available: Optional[int] = None) -> None:
  """Raises ``ConfigError`` if the side input cannot fit in memory.

  Args:
    config: The conversion, with ``join="side_input"``.
    workers: Local worker processes, each of which may copy the side input.
    available: Bytes available; by default ``available_memory_bytes()``.
  """
  if available is None:
    available = available_memory_bytes()
  if available is None:
    return
  text, one_copy = side_input_bytes(config)
  needed = one_copy * (1 + workers)
  if needed <= available:
    return
  fitting = available // one_copy - 1 if one_copy else 0
  fewer = (f" --num_workers={fitting} would fit but is slower;"
           if 1 <= fitting < workers else "")
  raise config_lib.ConfigError(
      "common_features",
      f"{config.common_features!r} holds {_size(text)} of common features: "
      f"about {_size(one_copy)} in memory per copy, {_size(needed)} for the "
      f"main process and {workers} worker(s) of --join=side_input, more "
      f"than the {_size(available)} "
      f"available.{fewer} Use --join=cogroup on a cluster runner whose "
      "shuffle spills to disk (--runner=DataflowRunner, FlinkRunner or "
      "SparkRunner; see docs/scaling.md), or a machine with more memory")
