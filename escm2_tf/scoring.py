"""Batch scoring through an exported SavedModel, as ``escm2-predict`` runs it.

Impressions are read from the converter's TFRecords or from the raw text
formats, encoded by the converter's own row encoder (``formats.encode``: the
records the converter writes, truncation included), and sent as serialized
tf.Examples through the SavedModel's ``serving_default`` signature, exactly
what TF Serving runs. ``score`` writes ``sample_id,ctr,cvr,ctcvr`` rows in
input order, atomically.

The Tianchi format's impressions are joined with their users' common rows
through an SQLite table on disk (``formats.common_store``, the converter's
own join table), so memory stays bounded whatever the number of users.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import csv
import os
import re
import tempfile
from typing import Callable, Iterator, Mapping, Sequence

import tensorflow as tf

from escm2_tf import config as config_lib
from escm2_tf import export
from escm2_tf import layout
from escm2_tf import schema
from escm2_tf import serving
from escm2_tf.formats import aliccp
from escm2_tf.formats import common_store
from escm2_tf.formats import encode
from escm2_tf.formats import examples
from escm2_tf.options import ConfigError

INPUT_FORMATS = config_lib.SCORING_INPUT_FORMATS
OUTPUT_HEADER = (schema.SAMPLE_ID,) + schema.OUTPUT_NAMES
# Lines of TensorFlow's errors that locate rather than explain.
_ERROR_CONTEXT = ("Graph execution error", "Detected at node",
                  "<stack traces", "[[")


# A batch to score: sample ids, serialized examples, and where they came from.
Batch = tuple[list[str], list[bytes], str]


def _reason(error: tf.errors.OpError) -> str:
  """The line of a TensorFlow error that says what is wrong."""
  for line in error.message.splitlines():
    line = re.sub(r"\{\{.*?\}\}", "", line).split("[Op:")[0].strip()
    if line and not line.startswith(_ERROR_CONTEXT):
      return line
  return error.message


def _not_text(error: UnicodeDecodeError) -> str:
  """The first byte of a line that is not UTF-8, and its column."""
  return (f"not UTF-8 text: byte 0x{error.object[error.start]:02x} at "
          f"column {error.start + 1}")


def _text_lines(flag: str, path: str) -> Iterator[tuple[int, str]]:
  number = 0
  try:
    with tf.io.gfile.GFile(path) as f:
      for number, line in enumerate(f, start=1):
        yield number, line
  except UnicodeDecodeError as error:
    # GFile decodes line by line: the failing line is the next one.
    raise ConfigError(flag, f"{path}:{number + 1}: {_not_text(error)}"
                      ) from None
  except tf.errors.OpError as error:
    raise ConfigError(flag, f"{path}:{number + 1}: cannot read: "
                      f"{_reason(error)}") from None


def common_table(files: Sequence[str], max_values: int,
                 directory: str) -> common_store.Table:
  """The encoded user-side features of ``common_features_*.csv`` by index.

  The rows go to an SQLite table in ``directory`` (``common_store``), not
  to memory: about 1 kB a user on disk, whatever the number of users.

  Raises:
    ConfigError: A bad line, a ``common_feature_index`` that appears twice
      (names the file and line of its second row), or a table that cannot
      be written (a full disk).
  """
  path = os.path.join(directory, "commons.sqlite")
  try:
    builder = common_store.Builder(path)
    for index, entries, _ in _common_rows(files, max_values):
      builder.append((index, entries))
    repeated = builder.finish()
  except OSError as error:
    raise ConfigError("common_features", f"cannot write their table {path}: "
                      f"{error.strerror or error}") from None
  if repeated:
    # Rare and fatal: read the files again for the line to name.
    seen = set()
    for index, _, where in _common_rows(files, max_values):
      if index in repeated:
        if index in seen:
          raise ConfigError("common_features", f"{where}: "
                            f"common_feature_index {index} appears twice")
        seen.add(index)
  return common_store.Table(path)


def _common_rows(files: Sequence[str], max_values: int
                 ) -> Iterator[tuple[str, bytes, str]]:
  """``(common_feature_index, encoded entries, location)`` per line."""
  for path in files:
    for number, line in _text_lines("common_features", path):
      where = f"{path}:{number}"
      try:
        index, encoded = encode.encode_common(line, max_values)
      except aliccp.BadRowError as error:
        raise ConfigError("common_features", f"{where}: {error}") from None
      yield index, encoded.entries, where


def _text_records(path: str, input_format: str, max_values: int,
                  common: Mapping[str, bytes] | None
                  ) -> Iterator[tuple[str, bytes, str]]:
  """``(sample_id, serialized example, location)`` per line of a text file."""
  for number, line in _text_lines("data", path):
    where = f"{path}:{number}"
    try:
      if input_format == "paddlerec":
        row, encoded = encode.encode_paddlerec(line, max_values)
        entries = (encoded.entries,)
      else:
        row, encoded = encode.encode_skeleton(line, max_values)
        user_entries = common.get(row.common_feature_index)
        if user_entries is None:
          raise ConfigError("data", f"{where}: common_feature_index "
                            f"{row.common_feature_index} is not in "
                            "--common_features")
        entries = (user_entries, encoded.entries)
    except aliccp.BadRowError as error:
      raise ConfigError("data", f"{where}: {error}") from None
    yield row.sample_id, examples.example_from_entries(*entries), where


def _batched(records: Iterator[tuple[str, bytes, str]],
             batch_size: int) -> Iterator[Batch]:
  ids, serialized, first = [], [], ""
  for sample_id, example, where in records:
    first = first or where
    ids.append(sample_id)
    serialized.append(example)
    if len(ids) == batch_size:
      yield ids, serialized, f"the batch starting at {first}"
      ids, serialized, first = [], [], ""
  if ids:
    yield ids, serialized, f"the batch starting at {first}"


def _tfrecord_batches(path: str, batch_size: int) -> Iterator[Batch]:
  compression = "GZIP" if path.endswith(".gz") else ""
  dataset = tf.data.TFRecordDataset(path, compression_type=compression)
  spec = {schema.SAMPLE_ID: tf.io.FixedLenFeature([], tf.string,
                                                  default_value="")}
  start = 0
  try:
    for serialized in dataset.batch(batch_size):
      where = f"{path}, records {start + 1} to {start + len(serialized)}"
      try:
        parsed = tf.io.parse_example(serialized, spec)
      except tf.errors.InvalidArgumentError as error:
        raise ConfigError("data", f"{where}: not tf.Examples with a string "
                          f"sample_id: {_reason(error)}") from None
      try:
        ids = [s.decode("utf-8") for s in parsed[schema.SAMPLE_ID].numpy()]
      except UnicodeDecodeError as error:
        raise ConfigError("data", f"{where}: sample_id is not UTF-8 text: "
                          f"{error.object!r}") from None
      yield ids, list(serialized.numpy()), where
      start += len(serialized)
  except tf.errors.DataLossError as error:
    raise ConfigError(
        "data", f"{path}: corrupt or not a{' GZIP' if compression else ''} "
        f"TFRecord file after record {start}: {_reason(error)}") from None


def text_batches(files: Sequence[str], input_format: str, batch_size: int,
                 max_values: int = encode.DEFAULT_MAX_VALUES_PER_FIELD,
                 common: Mapping[str, bytes] | None = None
                 ) -> Iterator[Batch]:
  """The batches of raw text files (``paddlerec`` or ``aliccp``), in order.

  Args:
    files: The impressions' files (``sample_skeleton_*.csv`` for aliccp).
    input_format: ``paddlerec`` or ``aliccp``.
    batch_size: Examples per batch.
    max_values: The most ids kept per field and row; 0 keeps all.
    common: aliccp: the users' encoded rows by ``common_feature_index``
      (``common_table``'s, or any mapping of the same rows).
  """
  for path in files:
    yield from _batched(
        _text_records(path, input_format, max_values, common), batch_size)


def read_batches(
    files: Sequence[str], input_format: str, batch_size: int,
    common_files: Sequence[str] = (),
    max_values: int = encode.DEFAULT_MAX_VALUES_PER_FIELD) -> Iterator[Batch]:
  """The batches to score, in file order.

  For ``aliccp`` the common rows are encoded first into a table in a
  temporary directory (``tempfile``'s, so ``TMPDIR`` places it), deleted
  when the batches end.
  """
  if input_format not in INPUT_FORMATS:
    raise ValueError(f"input_format must be one of {', '.join(INPUT_FORMATS)}"
                     f", got {input_format!r}")
  if input_format == "tfrecord":
    for path in files:
      yield from _tfrecord_batches(path, batch_size)
  elif input_format == "aliccp":
    with tempfile.TemporaryDirectory(prefix="escm2-predict-") as directory:
      common = common_table(common_files, max_values, directory)
      yield from text_batches(files, input_format, batch_size, max_values,
                              common)
  else:
    yield from text_batches(files, input_format, batch_size, max_values)


def score(signature: Callable[..., dict[str, tf.Tensor]],
          batches: Iterator[Batch], output: str) -> int:
  """Writes the CSV atomically (a temporary file, then a rename).

  Returns:
    The number of rows written.
  """
  count = 0
  with layout.atomic_open(output) as f:
    writer = csv.writer(f)
    writer.writerow(OUTPUT_HEADER)
    for ids, serialized, where in batches:
      try:
        outputs = signature(**{serving.EXAMPLES_INPUT: tf.constant(
            serialized, dtype=tf.string)})
      except tf.errors.InvalidArgumentError as error:
        raise ConfigError(
            "data", f"{where}: the model rejected it: {_reason(error)}"
        ) from None
      columns = [outputs[name].numpy() for name in schema.OUTPUT_NAMES]
      for sample_id, *values in zip(ids, *columns):
        writer.writerow([sample_id] + [f"{v:.9g}" for v in values])
      count += len(ids)
  return count


def files(flag: str, pattern: str) -> list[str]:
  """The files ``pattern`` matches, sorted; none is a ``ConfigError``."""
  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    raise ConfigError(flag, f"no files match {pattern!r}")
  return files


def load_signature(path: str) -> Callable[..., dict[str, tf.Tensor]]:
  """The ``serving_default`` signature of a SavedModel or export base."""
  try:
    return export.load_serving_signature(path)[1]
  except (FileNotFoundError, ValueError) as error:
    raise ConfigError("saved_model", str(error)) from None
