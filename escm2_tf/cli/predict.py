r"""escm2-predict: batch scoring through an exported SavedModel.

Reads impressions, sends them as serialized tf.Examples through the
SavedModel's ``serving_default`` signature (exactly what TF Serving runs), and
writes ``sample_id,ctr,cvr,ctcvr`` to a CSV, one row per input record, in
input order; a record without a ``sample_id`` gets an empty one.

  escm2-predict --saved_model=serving/escm2 --data='data/test/part-*' \
      --output=scores.csv
  escm2-predict --saved_model=serving/escm2/3 --input_format=aliccp \
      --data=sample_skeleton_test.csv \
      --common_features=common_features_test.csv --output=scores.csv

``--input_format=tfrecord`` reads the converter's TFRecords (GZIP when the
file name ends in ``.gz``); ``paddlerec`` and ``aliccp`` read the raw text
formats. For ``aliccp`` the common features are held in memory: convert the
full Ali-CCP release with ``escm2-convert`` first, then score its TFRecords.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import csv
import os
import re
import sys
from typing import Callable, Iterator, Sequence

from absl import app
from absl import flags
import tensorflow as tf

from escm2_tf.formats import aliccp
from escm2_tf.formats import examples
from escm2_tf import export
from escm2_tf import schema
from escm2_tf import serving
from escm2_pipelines import config as convert_config

INPUT_FORMATS = ("tfrecord", "paddlerec", "aliccp")
OUTPUT_HEADER = (schema.SAMPLE_ID,) + serving.OUTPUT_NAMES
# The converter's truncation, so raw rows score as their TFRecords would.
DEFAULT_MAX_VALUES = convert_config.DEFAULT_MAX_VALUES_PER_FIELD
_COMMON_FIELDS = frozenset(schema.COMMON_FIELDS)
_SAMPLE_FIELDS = frozenset(schema.SAMPLE_FIELDS)
_ALL_FIELDS = frozenset(schema.FIELD_NAMES)
# Lines of TensorFlow's errors that locate rather than explain.
_ERROR_CONTEXT = ("Graph execution error", "Detected at node",
                  "<stack traces", "[[")

_USAGE_ERROR = 2

# allow_override: escm2-evaluate and escm2-convert define some of the same
# names, with the same meaning and defaults except --input_format's; tests
# import several CLIs into one process.
_SAVED_MODEL = flags.DEFINE_string(
    "saved_model", "", "A SavedModel version directory, or a base directory "
    "whose highest version is used.", allow_override=True)
_DATA = flags.DEFINE_string("data", "", "Glob of the input files.",
                            allow_override=True)
_OUTPUT = flags.DEFINE_string(
    "output", "", "The CSV to write: sample_id,ctr,cvr,ctcvr.",
    allow_override=True)
_INPUT_FORMAT = flags.DEFINE_enum(
    "input_format", "tfrecord", INPUT_FORMATS, "Format of --data.",
    allow_override=True)
_COMMON_FEATURES = flags.DEFINE_string(
    "common_features", None, "Glob of the common_features_*.csv files "
    "(--input_format=aliccp only).", allow_override=True)
_MAX_VALUES_PER_FIELD = flags.DEFINE_integer(
    "max_values_per_field", DEFAULT_MAX_VALUES, "Raw formats: the most ids "
    "kept per field and row, the heaviest by value, as escm2-convert keeps; "
    "0 keeps all. Use the value the training data was converted with.",
    lower_bound=0, allow_override=True)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 4096, "Examples per signature call.", lower_bound=1,
    allow_override=True)


class InputError(ValueError):
  """Input that cannot be scored; the message names the file and line."""


# A batch to score: sample ids, serialized examples, and where they came from.
Batch = tuple[list[str], list[bytes], str]


def _reason(error: tf.errors.OpError) -> str:
  """The line of a TensorFlow error that says what is wrong."""
  for line in error.message.splitlines():
    line = re.sub(r"\{\{.*?\}\}", "", line).split("[Op:")[0].strip()
    if line and not line.startswith(_ERROR_CONTEXT):
      return line
  return error.message


def _text_lines(path: str) -> Iterator[tuple[int, str]]:
  number = 0
  try:
    with tf.io.gfile.GFile(path) as f:
      for number, line in enumerate(f, start=1):
        yield number, line
  except (UnicodeDecodeError, tf.errors.OpError) as error:
    reason = _reason(error) if isinstance(error, tf.errors.OpError) else error
    raise InputError(f"{path}:{number + 1}: cannot read: {reason}") from None


def _entries(features: aliccp.Features, sources: frozenset[str],
             max_values: int, where: str) -> bytes:
  """Encodes features as the converter does, truncation included."""
  misplaced = sorted(set(features) - sources)
  if misplaced:
    # Both sides of the join would write the field; a parser keeps one.
    raise InputError(f"{where}: field(s) {', '.join(misplaced)} belong to "
                     "the other file of the Ali-CCP join")
  return examples.field_entries(examples.limit_values(features,
                                                      max_values)[0])


def load_common_features(files: Sequence[str],
                         max_values: int) -> dict[str, bytes]:
  """The encoded user-side features of ``common_features_*.csv`` by index."""
  common = {}
  for path in files:
    for number, line in _text_lines(path):
      where = f"{path}:{number}"
      try:
        row = aliccp.parse_common_line(line)
      except aliccp.BadRowError as error:
        raise InputError(f"{where}: {error}") from None
      if row.common_feature_index in common:
        raise InputError(f"{where}: common_feature_index "
                         f"{row.common_feature_index} appears twice")
      common[row.common_feature_index] = _entries(
          row.features, _COMMON_FIELDS, max_values, where)
  return common


def _text_records(path: str, input_format: str, max_values: int,
                  common: dict[str, bytes] | None
                  ) -> Iterator[tuple[str, bytes, str]]:
  """``(sample_id, serialized example, location)`` per line of a text file."""
  for number, line in _text_lines(path):
    where = f"{path}:{number}"
    try:
      if input_format == "paddlerec":
        row = aliccp.parse_paddlerec_line(line)
        entries = _entries(row.features, _ALL_FIELDS, max_values, where)
      else:
        row = aliccp.parse_skeleton_line(line)
        if row.common_feature_index not in common:
          raise InputError(f"{where}: common_feature_index "
                           f"{row.common_feature_index} is not in "
                           "--common_features")
        entries = common[row.common_feature_index] + _entries(
            row.features, _SAMPLE_FIELDS, max_values, where)
    except aliccp.BadRowError as error:
      raise InputError(f"{where}: {error}") from None
    yield row.sample_id, examples.example_from_entries(entries), where


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
        raise InputError(f"{where}: not tf.Examples with a string "
                         f"sample_id: {_reason(error)}") from None
      yield ([s.decode("utf-8") for s in parsed[schema.SAMPLE_ID].numpy()],
             list(serialized.numpy()), where)
      start += len(serialized)
  except tf.errors.DataLossError as error:
    raise InputError(f"{path}: corrupt or not a{' GZIP' if compression else ''}"
                     f" TFRecord file after record {start}: "
                     f"{_reason(error)}") from None


def read_batches(files: Sequence[str], input_format: str, batch_size: int,
                 common_files: Sequence[str] = (),
                 max_values: int = DEFAULT_MAX_VALUES) -> Iterator[Batch]:
  """The batches to score, in file order."""
  if input_format not in INPUT_FORMATS:
    raise ValueError(f"input_format must be one of {', '.join(INPUT_FORMATS)}"
                     f", got {input_format!r}")
  common = load_common_features(common_files, max_values) if (
      input_format == "aliccp") else None
  for path in files:
    if input_format == "tfrecord":
      yield from _tfrecord_batches(path, batch_size)
    else:
      yield from _batched(
          _text_records(path, input_format, max_values, common), batch_size)


def score(signature: Callable[..., dict[str, tf.Tensor]],
          batches: Iterator[Batch], output: str) -> int:
  """Writes the CSV atomically (a temporary file, then a rename).

  Returns:
    The number of rows written.
  """
  temporary = f"{output}.tmp"
  count = 0
  try:
    with open(temporary, "w", newline="", encoding="utf-8") as f:
      writer = csv.writer(f)
      writer.writerow(OUTPUT_HEADER)
      for ids, serialized, where in batches:
        try:
          outputs = signature(**{serving.EXAMPLES_INPUT: tf.constant(
              serialized, dtype=tf.string)})
        except tf.errors.InvalidArgumentError as error:
          raise InputError(
              f"{where}: the model rejected it: {_reason(error)}") from None
        columns = [outputs[name].numpy() for name in serving.OUTPUT_NAMES]
        for sample_id, *values in zip(ids, *columns):
          writer.writerow([sample_id] + [f"{v:.9g}" for v in values])
        count += len(ids)
    os.replace(temporary, output)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)
  return count


def _files(flag: str, pattern: str) -> list[str]:
  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    raise InputError(f"--{flag}: no files match {pattern!r}")
  return files


def _load_signature(path: str) -> Callable[..., dict[str, tf.Tensor]]:
  try:
    directory = export.resolve_saved_model(path)
    signatures = tf.saved_model.load(directory).signatures
  except (OSError, ValueError, tf.errors.OpError) as error:
    raise InputError(f"--saved_model: {error}") from None
  if serving.EXAMPLES_SIGNATURE not in signatures:
    raise InputError(
        f"--saved_model: {directory} has no {serving.EXAMPLES_SIGNATURE} "
        f"signature (it has {', '.join(signatures) or 'none'})")
  return signatures[serving.EXAMPLES_SIGNATURE]


def _fail(message: str) -> int:
  print(f"escm2-predict: error: {message}", file=sys.stderr)
  return _USAGE_ERROR


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    return _fail(f"unexpected arguments {' '.join(argv[1:])!r}")
  for holder in (_SAVED_MODEL, _DATA, _OUTPUT):
    if not holder.value:
      return _fail(f"--{holder.name}: is required")
  aliccp_format = _INPUT_FORMAT.value == "aliccp"
  if aliccp_format != bool(_COMMON_FEATURES.value):
    return _fail("--common_features: is required with, and only with, "
                 "--input_format=aliccp")
  try:
    files = _files("data", _DATA.value)
    common = (_files("common_features", _COMMON_FEATURES.value)
              if aliccp_format else ())
    signature = _load_signature(_SAVED_MODEL.value)
    batches = read_batches(files, _INPUT_FORMAT.value, _BATCH_SIZE.value,
                           common, _MAX_VALUES_PER_FIELD.value)
    count = score(signature, batches, _OUTPUT.value)
  except InputError as error:
    return _fail(str(error))
  except OSError as error:
    return _fail(f"--output: {error}")
  print(f"Scored {count} examples into {_OUTPUT.value}")
  return 0


def run() -> None:
  app.run(main)
