"""Where the converter's outputs go, on any Beam file system.

Layout under the output directory (names from ``escm2_tf.layout``):

* ``part-SSSSS-of-NNNNN.tfrecord.gz``: GZIP TFRecord files of tf.train.Example.
* ``vocab/<field>.tsv``: ``id<TAB>count`` lines, count descending, then id.
* ``stats.json``: ``tally.build_stats``.
* ``rejected/rejected-SSSSS-of-NNNNN.tsv``: ``reason<TAB>source<TAB>line``.
"""

import io
import json
from typing import IO, Any, Mapping

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from escm2_pipelines import tally as tally_lib
from escm2_pipelines import tfrecord
from escm2_tf import layout


class BeamFileSystem:
  """``layout.FileSystem`` on Beam's file systems (local, ``gs://``...)."""

  def open_text(self, path: str) -> IO[str]:
    return io.TextIOWrapper(FileSystems.create(path), encoding="utf-8")

  def replace(self, source: str, target: str) -> None:
    # Beam's rename does not replace an existing file everywhere.
    if FileSystems.exists(target):
      FileSystems.delete([target])
    FileSystems.rename([source], [target])

  def exists(self, path: str) -> bool:
    return FileSystems.exists(path)

  def remove(self, path: str) -> None:
    FileSystems.delete([path])


BEAM_FILE_SYSTEM = BeamFileSystem()


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
    self._prefix = FileSystems.join(output_dir, layout.EXAMPLES_PREFIX)
    self._num_shards = num_shards

  def expand(self, batches):
    return batches | "WriteTFRecords" >> tfrecord.WriteBatchesToTFRecord(
        self._prefix, layout.EXAMPLES_SUFFIX, self._num_shards)


class WriteRejected(beam.PTransform):
  """Rejected-row strings to text files under ``rejected/``."""

  def __init__(self, output_dir: str):
    super().__init__()
    self._prefix = FileSystems.join(output_dir, layout.REJECTED_DIR,
                                    "rejected")

  def expand(self, lines):
    return lines | "WriteText" >> beam.io.WriteToText(
        self._prefix, file_name_suffix=".tsv")


def write_vocabulary(field_counts, vocab_dir: str) -> str:
  """Writes one ``(field, counts)`` pair to ``vocab_dir/<field>.tsv``."""
  field, counts = field_counts
  path = FileSystems.join(vocab_dir, field + layout.VOCAB_SUFFIX)
  layout.atomic_write(path, format_vocabulary(counts), BEAM_FILE_SYSTEM)
  return path


class WriteVocabularies(beam.PTransform):
  """``(field, counts)`` pairs to ``vocab/<field>.tsv`` files."""

  def __init__(self, output_dir: str):
    super().__init__()
    self._vocab_dir = FileSystems.join(output_dir, layout.VOCAB_DIR)

  def expand(self, field_counts):
    return field_counts | "WriteFiles" >> beam.Map(write_vocabulary,
                                                   self._vocab_dir)


def write_stats(counts, path: str, input_format: str,
                settings: Mapping[str, Any]) -> dict:
  """Builds ``stats.json`` from the summed counts and writes it to ``path``."""
  stats = tally_lib.build_stats(counts, input_format=input_format,
                                settings=settings)
  layout.atomic_write(path, json.dumps(stats, indent=2, sort_keys=True) + "\n",
                      BEAM_FILE_SYSTEM)
  return stats


class WriteStats(beam.PTransform):
  """The summed tally to ``stats.json``."""

  def __init__(self, output_dir: str, input_format: str,
               settings: Mapping[str, Any]):
    super().__init__()
    self._path = FileSystems.join(output_dir, layout.STATS_FILE)
    self._input_format = input_format
    self._settings = dict(settings)

  def expand(self, counts):
    return counts | "WriteFile" >> beam.Map(
        write_stats, self._path, self._input_format, self._settings)
