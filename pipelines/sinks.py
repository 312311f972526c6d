"""Where the converter's outputs go, on any Beam file system.

Layout under the output directory:

* ``part-SSSSS-of-NNNNN.tfrecord.gz``: GZIP TFRecord files of tf.train.Example.
* ``vocab/<field>.tsv``: ``id<TAB>count`` lines, count descending, then id.
* ``stats.json``: ``tally.build_stats``.
* ``rejected/rejected-SSSSS-of-NNNNN.tsv``: ``reason<TAB>source<TAB>line``.
"""

import json
from typing import Any, Mapping

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from escm2_pipelines import tally as tally_lib
from escm2_pipelines import tfrecord

EXAMPLES_PREFIX = "part"
EXAMPLES_SUFFIX = ".tfrecord.gz"
VOCAB_DIR = "vocab"
STATS_FILE = "stats.json"
REJECTED_DIR = "rejected"


def write_atomically(path: str, text: str) -> None:
  """Writes ``text`` to a temporary name, then renames it to ``path``."""
  temporary = path + ".tmp"
  try:
    with FileSystems.create(temporary) as f:
      f.write(text.encode())
  except BaseException:
    # Out of disk, say: leave no half-written file behind either.
    if FileSystems.exists(temporary):
      FileSystems.delete([temporary])
    raise
  if FileSystems.exists(path):
    FileSystems.delete([path])
  FileSystems.rename([temporary], [path])


def read_text(path: str) -> str:
  with FileSystems.open(path) as f:
    return f.read().decode()


def format_vocabulary(counts: Mapping[int, int]) -> str:
  """``id<TAB>count`` lines, most frequent first, ties by ascending id."""
  ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
  return "".join(f"{feature_id}\t{count}\n" for feature_id, count in ordered)


class WriteExamples(beam.PTransform):
  """Lists of serialized Examples to sharded GZIP TFRecord files."""

  def __init__(self, output_dir: str, num_shards: int):
    super().__init__()
    self._prefix = FileSystems.join(output_dir, EXAMPLES_PREFIX)
    self._num_shards = num_shards

  def expand(self, batches):
    return batches | "WriteTFRecords" >> tfrecord.WriteBatchesToTFRecord(
        self._prefix, EXAMPLES_SUFFIX, self._num_shards)


class WriteRejected(beam.PTransform):
  """Rejected-row strings to text files under ``rejected/``."""

  def __init__(self, output_dir: str):
    super().__init__()
    self._prefix = FileSystems.join(output_dir, REJECTED_DIR, "rejected")

  def expand(self, lines):
    return lines | "WriteText" >> beam.io.WriteToText(
        self._prefix, file_name_suffix=".tsv")


def write_vocabulary(field_counts, vocab_dir: str) -> str:
  """Writes one ``(field, counts)`` pair to ``vocab_dir/<field>.tsv``."""
  field, counts = field_counts
  path = FileSystems.join(vocab_dir, f"{field}.tsv")
  write_atomically(path, format_vocabulary(counts))
  return path


class WriteVocabularies(beam.PTransform):
  """``(field, counts)`` pairs to ``vocab/<field>.tsv`` files."""

  def __init__(self, output_dir: str):
    super().__init__()
    self._vocab_dir = FileSystems.join(output_dir, VOCAB_DIR)

  def expand(self, field_counts):
    return field_counts | "WriteFiles" >> beam.Map(write_vocabulary,
                                                   self._vocab_dir)


def write_stats(counts, path: str, input_format: str,
                settings: Mapping[str, Any]) -> dict:
  """Builds ``stats.json`` from the summed counts and writes it to ``path``."""
  stats = tally_lib.build_stats(counts, input_format=input_format,
                                settings=settings)
  write_atomically(path, json.dumps(stats, indent=2, sort_keys=True) + "\n")
  return stats


class WriteStats(beam.PTransform):
  """The summed tally to ``stats.json``."""

  def __init__(self, output_dir: str, input_format: str,
               settings: Mapping[str, Any]):
    super().__init__()
    self._path = FileSystems.join(output_dir, STATS_FILE)
    self._input_format = input_format
    self._settings = dict(settings)

  def expand(self, counts):
    return counts | "WriteFile" >> beam.Map(
        write_stats, self._path, self._input_format, self._settings)
