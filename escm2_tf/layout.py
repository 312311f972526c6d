"""The names of the data on disk, and the one way files are written atomically.

A data directory, as ``escm2-synth`` then ``escm2-convert`` (or
``escm2_tf.prepare.prepare_dataset``) lay it out::

    DIR/raw/sample_skeleton_{split}.csv     raw Ali-CCP logs (aliccp format)
    DIR/raw/common_features_{split}.csv
    DIR/raw/paddlerec_{split}.txt           or PaddleRec's text (paddlerec)
    DIR/raw/ground_truth_{split}.csv        the simulator's true rates
    DIR/{split}/part-SSSSS-of-NNNNN.tfrecord.gz
    DIR/{split}/vocab/<field>.tsv
    DIR/{split}/stats.json
    DIR/{split}/rejected/rejected-SSSSS-of-NNNNN.tsv
    DIR/{split}/FAILED.json                 instead of shards, vocab/ and
                                            stats.json, after a failed run

for ``split`` in ``SPLITS``. The simulator, the converter, training, the study,
the bench and the tests all take these names from here. This module imports
neither TensorFlow nor Beam, so that the converter's workers and the flag
checks read it without loading either; ``atomic_write`` reaches other file
systems through a small ``FileSystem`` adapter its caller passes.
"""

import contextlib
import os
import secrets
from typing import IO, Iterator, Protocol

from escm2_tf import schema

SPLITS = ("train", "test")
TRAIN, TEST = SPLITS
RAW_FORMATS = ("aliccp", "paddlerec")
RAW_DIR = "raw"

VOCAB_DIR = "vocab"
VOCAB_SUFFIX = ".tsv"
STATS_FILE = "stats.json"
REJECTED_DIR = "rejected"
# Left by a conversion that failed on its rejected rows, beside them.
FAILED_FILE = "FAILED.json"
EXAMPLES_PREFIX = "part"
EXAMPLES_SUFFIX = ".tfrecord.gz"

# The simulator's ground truth: one row per impression, joined by sample id.
# It repeats the impression's logged labels, so that a join with other data
# (another split or seed) is detected: the labels of joined rows must agree.
P_CLICK = "p_click"
P_CONVERSION = "p_conversion"
CONVERSION_COUNTERFACTUAL = "conversion_counterfactual"
GROUND_TRUTH_COLUMNS = (P_CLICK, P_CONVERSION, CONVERSION_COUNTERFACTUAL)
GROUND_TRUTH_HEADER = ((schema.SAMPLE_ID,) + GROUND_TRUTH_COLUMNS
                       + schema.LABELS)


def raw_file_names(raw_format: str, split: str) -> dict[str, str]:
  """The raw files of one split, keyed by role.

  Args:
    raw_format: ``"aliccp"`` (roles ``skeleton`` and ``common``) or
      ``"paddlerec"`` (role ``paddlerec``).
    split: One of ``SPLITS``.

  Returns:
    File names (no directory), always with ``ground_truth``.
  """
  if raw_format not in RAW_FORMATS:
    raise ValueError(f"raw format {raw_format!r} is not one of {RAW_FORMATS}")
  names = {"ground_truth": ground_truth_file(split)}
  if raw_format == "paddlerec":
    names["paddlerec"] = f"paddlerec_{split}.txt"
  else:
    names["skeleton"] = f"sample_skeleton_{split}.csv"
    names["common"] = f"common_features_{split}.csv"
  return names


def ground_truth_file(split: str) -> str:
  """The name of the simulator's ground truth of ``split``."""
  return f"ground_truth_{split}.csv"


def raw_dir(data_dir: str) -> str:
  """Where the raw logs and the ground truth of ``data_dir`` go."""
  return os.path.join(data_dir, RAW_DIR)


def split_dir(data_dir: str, split: str) -> str:
  """The converted ``split`` of ``data_dir`` (the converter's output dir)."""
  return os.path.join(data_dir, split)


def examples_glob(output_dir: str) -> str:
  """The glob of the converter's TFRecord shards in ``output_dir``."""
  return os.path.join(output_dir, "*" + EXAMPLES_SUFFIX)


def examples(data_dir: str, split: str) -> str:
  """The glob of the TFRecords of ``split`` in ``data_dir``."""
  return examples_glob(split_dir(data_dir, split))


def ground_truth(data_dir: str, split: str) -> str:
  """The simulator's ground truth of ``split`` in ``data_dir``."""
  return os.path.join(raw_dir(data_dir), ground_truth_file(split))


def training_vocab_dir(data_dir: str) -> str:
  """The vocabularies of ``data_dir``'s training split: the model's."""
  return vocab_dir(split_dir(data_dir, TRAIN))


def vocab_dir(output_dir: str) -> str:
  """The vocabularies the converter writes into ``output_dir``."""
  return os.path.join(output_dir, VOCAB_DIR)


def vocabulary_file(vocab_directory: str, field: str) -> str:
  """The vocabulary file of ``field`` in ``vocab_directory``."""
  return os.path.join(vocab_directory, field + VOCAB_SUFFIX)


def stats_file(output_dir: str) -> str:
  """The ``stats.json`` the converter writes into ``output_dir``."""
  return os.path.join(output_dir, STATS_FILE)


def failed_file(output_dir: str) -> str:
  """What a failed conversion leaves in ``output_dir``: its error, stats."""
  return os.path.join(output_dir, FAILED_FILE)


def stats_beside(vocab_directory: str) -> str:
  """The ``stats.json`` beside ``vocab/``: that of the same conversion."""
  return stats_file(os.path.dirname(os.path.normpath(vocab_directory)))


class FileSystem(Protocol):
  """The four operations ``atomic_write`` needs of a file system."""

  def open_text(self, path: str) -> IO[str]:
    """Opens a new file for writing text."""

  def replace(self, source: str, target: str) -> None:
    """Renames ``source`` to ``target``, replacing ``target`` if present."""

  def exists(self, path: str) -> bool:
    """Whether ``path`` exists."""

  def remove(self, path: str) -> None:
    """Deletes the file ``path``."""


class LocalFileSystem:
  """The local disk, through ``open`` and ``os.replace``."""

  def open_text(self, path: str) -> IO[str]:
    # newline="": written as given ("\n"), as the csv module requires.
    return open(path, "x", encoding="utf-8", newline="")

  def replace(self, source: str, target: str) -> None:
    os.replace(source, target)

  def exists(self, path: str) -> bool:
    return os.path.exists(path)

  def remove(self, path: str) -> None:
    os.remove(path)


class GFileSystem:
  """Any ``tf.io.gfile`` path (local, ``gs://``...): pass ``tf.io.gfile``."""

  def __init__(self, gfile):
    self._gfile = gfile

  def open_text(self, path: str) -> IO[str]:
    return self._gfile.GFile(path, "w")

  def replace(self, source: str, target: str) -> None:
    self._gfile.rename(source, target, overwrite=True)

  def exists(self, path: str) -> bool:
    return self._gfile.exists(path)

  def remove(self, path: str) -> None:
    self._gfile.remove(path)


LOCAL = LocalFileSystem()


def temporary_name(path: str) -> str:
  """A fresh hidden name beside ``path`` to write it under first.

  Hidden, so that no glob of the directory's files matches it; unique, so
  that concurrent writers (workers, processes) never share one.
  """
  directory, name = os.path.split(path)
  return os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def atomic_open(path: str, filesystem: FileSystem = LOCAL
                ) -> Iterator[IO[str]]:
  """A text file that appears under ``path`` only once written completely.

  Written under ``temporary_name(path)`` and renamed to ``path`` when the
  ``with`` block ends without an error. On any error (out of disk, an
  interrupt, an exception of the block) the temporary file is deleted and
  ``path`` keeps what it held before, if anything.

  Args:
    path: The final name; its directory must exist.
    filesystem: Where ``path`` lives; the local disk by default.

  Yields:
    The open text file.
  """
  temporary = temporary_name(path)
  try:
    with filesystem.open_text(temporary) as f:
      yield f
    filesystem.replace(temporary, path)
  finally:
    if filesystem.exists(temporary):
      filesystem.remove(temporary)


def atomic_write(path: str, text: str,
                 filesystem: FileSystem = LOCAL) -> None:
  """Writes ``text`` to ``path`` atomically (see ``atomic_open``)."""
  with atomic_open(path, filesystem) as f:
    f.write(text)
