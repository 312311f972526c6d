"""Loads the per-field vocabularies that the converter writes.

The converter writes ``vocab/<field>.tsv`` for every schema field, one
``id<TAB>count`` line per distinct raw feature id, by count descending then id
ascending. The model turns the surviving ids of each field into embedding rows
in file order; the ids dropped here fall into the field's OOV rows.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import numpy as np
import tensorflow as tf

from escm2_tf import layout
from escm2_tf import schema

# The model packs (field, id) into one int64 lookup key, leaving 56 bits for
# the id; Ali-CCP ids are far smaller.
MAX_ID = (1 << 56) - 1


class VocabularyError(ValueError):
  """A vocabulary file that is missing or does not follow the format."""


def _parse_line(path: str, line_number: int, line: str) -> tuple[int, int]:
  parts = line.rstrip("\r\n").split("\t")
  where = f"{path}:{line_number}"
  if len(parts) != 2:
    raise VocabularyError(
        f"{where}: expected 'id<TAB>count', got {line.rstrip()[:60]!r}.")
  try:
    feature_id, count = int(parts[0]), int(parts[1])
  except ValueError:
    raise VocabularyError(f"{where}: id and count must be integers, got "
                          f"{line.rstrip()[:60]!r}.") from None
  if not 0 <= feature_id <= MAX_ID:
    raise VocabularyError(f"{where}: id {feature_id} is outside [0, {MAX_ID}].")
  if count < 0:
    raise VocabularyError(f"{where}: count {count} is negative.")
  return feature_id, count


def load_vocabulary(path: str, min_count: int = 1) -> np.ndarray:
  """The ids of one vocabulary file whose count is at least ``min_count``.

  Args:
    path: A ``id<TAB>count`` file.
    min_count: Ids seen fewer times are left out (they become OOV).

  Returns:
    The kept ids, int64, in file order.

  Raises:
    VocabularyError: The file is missing, malformed or repeats an id.
  """
  if not tf.io.gfile.exists(path):
    raise VocabularyError(f"{path}: vocabulary file not found.")
  ids = []
  seen = set()
  with tf.io.gfile.GFile(path, "r") as f:
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        raise VocabularyError(f"{path}:{line_number}: empty line.")
      feature_id, count = _parse_line(path, line_number, line)
      if feature_id in seen:
        raise VocabularyError(
            f"{path}:{line_number}: id {feature_id} appears twice.")
      seen.add(feature_id)
      if count >= min_count:
        ids.append(feature_id)
  return np.asarray(ids, dtype=np.int64)


def load_vocabularies(vocab_dir: str, min_count: int = 1
                      ) -> dict[str, np.ndarray]:
  """The vocabularies of all schema fields.

  Args:
    vocab_dir: The directory holding ``<field>.tsv`` for every field in
      ``schema.FIELD_NAMES`` (the converter's ``DIR/vocab``).
    min_count: Ids seen fewer times are left out (they become OOV).

  Returns:
    Field name -> int64 ids, in ``schema.FIELD_NAMES`` order.

  Raises:
    VocabularyError: A file is missing or malformed (the message names it).
    ValueError: ``min_count`` is below 1.
  """
  if isinstance(min_count, bool) or not isinstance(min_count, int) or (
      min_count < 1):
    raise ValueError(f"min_count must be an integer >= 1, got {min_count!r}.")
  return {field: load_vocabulary(layout.vocabulary_file(vocab_dir, field),
                                  min_count)
          for field in schema.FIELD_NAMES}
