"""Exact evaluation: score every example, then compute the metrics at once.

Both scorers return the same named columns (the labels and the three
predictions as float32 numpy arrays, ``sample_id`` when asked for), so a Keras
model after training and its exported SavedModel are measured by the same
code:

* ``predict_keras_model`` reads the data through ``data.make_dataset``.
* ``predict_saved_model`` sends the serialized tf.Examples, as they are in the
  TFRecords, to the ``serving_default`` signature, as a client would.

The simulator's ground truth, read and joined by ``sample_id`` in
``ground_truth``, adds the metrics that need the true probabilities.

Memory: 4 bytes per example and column (5 columns; ``sample_id``, a numpy
string of 4 bytes a character, only with ``with_sample_id``), and while the
metrics are computed 8 bytes per example more (``ranking``).
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import json
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from escm2_tf import data
from escm2_tf import ground_truth as ground_truth_lib
from escm2_tf import layout
from escm2_tf import metrics as metrics_lib
from escm2_tf import schema
from escm2_tf import serving

Columns = dict[str, np.ndarray]
# Rows per block of a column while scoring (4 MB of float32).
_BLOCK_ROWS = 1 << 20
# Batches read ahead of the model (serialized, ~8 MB each at the default
# 4096, or parsed); AUTOTUNE let the buffer grow with the run's length.
_PREFETCH_BATCHES = 2


def _consolidate(pending: dict[str, list[np.ndarray]],
                 blocks: dict[str, list[np.ndarray]]) -> None:
  """Joins each column's pending batches into one block, emptying them."""
  for name, parts in pending.items():
    if parts:
      blocks.setdefault(name, []).append(np.concatenate(parts))
      parts.clear()


def _concatenate(batches: Iterable[Mapping[str, np.ndarray]]) -> Columns:
  """The batches' columns, each one array, in little more than their size.

  Batches are joined into blocks of about ``_BLOCK_ROWS`` rows as they come:
  the heap that held the small batch arrays is reused by the next ones
  instead of growing with the data (freed small arrays stay resident), and
  the blocks, large enough to be mapped, are returned to the system as each
  column is joined.
  """
  pending: dict[str, list[np.ndarray]] = {}
  blocks: dict[str, list[np.ndarray]] = {}
  rows = 0
  for batch in batches:
    for name, values in batch.items():
      pending.setdefault(name, []).append(values)
    rows += len(next(iter(batch.values())))
    if rows >= _BLOCK_ROWS:
      _consolidate(pending, blocks)
      rows = 0
  _consolidate(pending, blocks)
  if not blocks:
    raise ValueError("the data holds no examples")
  # A column's blocks go as soon as it is joined: the peak is the columns
  # plus one, not twice the columns.
  return {name: np.concatenate(blocks.pop(name)) for name in list(blocks)}


def _strings(values: tf.Tensor) -> np.ndarray:
  return np.char.decode(values.numpy().astype(np.bytes_), "utf-8")


def _batch_columns(sample_id: tf.Tensor | None,
                   labels: Mapping[str, tf.Tensor],
                   outputs: Mapping[str, tf.Tensor],
                   names: Sequence[str] | None = schema.OUTPUT_NAMES
                   ) -> dict[str, np.ndarray]:
  columns = {} if sample_id is None else {schema.SAMPLE_ID:
                                          _strings(sample_id)}
  for name in schema.LABELS:
    columns[name] = labels[name].numpy().astype(np.float32)
  for name in outputs if names is None else names:
    columns[name] = outputs[name].numpy().astype(np.float32)
  return columns


def predict_keras_model(model: keras.Model,
                        file_pattern: str | Sequence[str], batch_size: int, *,
                        outputs: Sequence[str] | None = schema.OUTPUT_NAMES,
                        with_sample_id: bool = True) -> Columns:
  """Scores every example of the TFRecords matching ``file_pattern``.

  Args:
    model: Takes ``data.make_dataset``'s features, returns named outputs.
    file_pattern: A glob, or a list of globs, of GZIP TFRecords.
    batch_size: Examples per call.
    outputs: The outputs to keep; None keeps every one (``imputation`` of a
      DR model included).
    with_sample_id: Keep ``sample_id`` (to join a ground truth).

  Returns:
    The columns ``sample_id`` (with ``with_sample_id``), ``click``,
    ``conversion`` and the outputs, in file order.
  """
  # Weights the model does not take would be parsed for nothing.
  inputs = getattr(getattr(model, "network", model), "input_names", None)
  with_weights = inputs is None or any(name in schema.WEIGHT_NAMES
                                       for name in inputs)
  dataset = data.make_dataset(file_pattern, batch_size, training=False,
                              with_sample_id=True, with_weights=with_weights,
                              read_ahead=_PREFETCH_BATCHES)
  features_spec = dict(dataset.element_spec[0])
  del features_spec[schema.SAMPLE_ID]
  # One trace for every batch size, the last, smaller batch included.
  predict = tf.function(lambda features: model(features, training=False),
                        input_signature=[features_spec], autograph=False)

  def batches():
    for features, labels in dataset:
      sample_id = features.pop(schema.SAMPLE_ID)
      yield _batch_columns(sample_id if with_sample_id else None, labels,
                           predict(features), outputs)

  return _concatenate(batches())


def _labels_spec() -> dict[str, tf.io.FixedLenFeature]:
  spec = schema.feature_spec(with_weights=False, with_sample_id=True)
  return {name: spec[name] for name in schema.LABELS + (schema.SAMPLE_ID,)}


def _parse_labels(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
  parsed = tf.io.parse_example(serialized, _labels_spec())
  parsed[serving.EXAMPLES_INPUT] = serialized
  return parsed


def predict_saved_model(signature: Callable[..., Mapping[str, tf.Tensor]],
                        file_pattern: str, batch_size: int,
                        with_sample_id: bool = True) -> Columns:
  """Scores the TFRecords through a ``serving_default``-style signature.

  Args:
    signature: Takes ``examples`` (serialized tf.Examples, string [B]) and
      returns ``ctr``, ``cvr`` and ``ctcvr``.
    file_pattern: Glob of GZIP TFRecords of the converter's tf.Examples.
    batch_size: Examples per call.
    with_sample_id: Keep ``sample_id`` (to join a ground truth).

  Returns:
    The columns ``sample_id`` (with ``with_sample_id``), ``click``,
    ``conversion``, ``ctr``, ``cvr`` and ``ctcvr``, in file order.
  """
  dataset = tf.data.TFRecordDataset(data.list_files(file_pattern),
                                    compression_type="GZIP")
  dataset = dataset.batch(batch_size).map(_parse_labels).prefetch(
      _PREFETCH_BATCHES)

  def batches():
    for batch in dataset:
      outputs = signature(
          **{serving.EXAMPLES_INPUT: batch[serving.EXAMPLES_INPUT]})
      labels = {name: tf.cast(batch[name], tf.float32)
                for name in schema.LABELS}
      yield _batch_columns(
          batch[schema.SAMPLE_ID] if with_sample_id else None, labels,
          outputs)

  return _concatenate(batches())


def check_readable(file_pattern: str) -> None:
  """Reads the first record of the files, as a cheap check before work.

  Raises:
    FileNotFoundError: Nothing matches the pattern.
    ValueError: The files hold no record, or the first cannot be read (the
      message says why).
  """
  dataset = tf.data.TFRecordDataset(data.list_files(file_pattern),
                                    compression_type="GZIP").take(1)
  try:
    records = list(dataset)
  except tf.errors.OpError as e:
    raise ValueError(f"cannot read {file_pattern!r} as GZIP TFRecords: "
                     f"{e.message.splitlines()[0]}") from None
  if not records:
    raise ValueError(f"the files matching {file_pattern!r} hold no records")


def read_labels(file_pattern: str, batch_size: int = 4096) -> Columns:
  """The ``sample_id`` and labels of every example, in file order."""
  dataset = tf.data.TFRecordDataset(data.list_files(file_pattern),
                                    compression_type="GZIP").batch(batch_size)
  dataset = dataset.map(lambda serialized: tf.io.parse_example(
      serialized, _labels_spec()))
  return _concatenate(
      {schema.SAMPLE_ID: _strings(batch[schema.SAMPLE_ID]),
       **{name: batch[name].numpy().astype(np.float32)
          for name in schema.LABELS}}
      for batch in dataset)


def compute_metrics(predictions: Columns, ground_truth: Columns | None = None,
                    ground_truth_source: str = "ground truth",
                    data_source: str = "the data"
                    ) -> dict[str, int | float]:
  """The exact metrics of ``metrics.evaluate_predictions`` on the columns.

  Args:
    predictions: From ``predict_keras_model`` or ``predict_saved_model``;
      with ``sample_id`` when there is a ground truth.
    ground_truth: From ``ground_truth.read_ground_truth``; joined by
      ``sample_id``.
    ground_truth_source: Names the ground truth in errors (its path).
    data_source: Names the scored files in errors.

  Raises:
    ground_truth.GroundTruthError: The ground truth is not that of the
      predictions.
    ValueError: A ground truth but predictions without ``sample_id``.
  """
  if ground_truth is not None:
    if schema.SAMPLE_ID not in predictions:
      raise ValueError("compute_metrics: a ground truth needs predictions "
                       "with sample_id (with_sample_id=True)")
    ground_truth = ground_truth_lib.align_ground_truth(
        ground_truth, predictions, ground_truth_source, data_source)
  result = metrics_lib.evaluate_predictions(
      predictions[schema.CLICK], predictions[schema.CONVERSION],
      predictions["ctr"], predictions["cvr"], predictions["ctcvr"],
      ground_truth=ground_truth)
  return {name: _python_number(value) for name, value in result.items()}


def _python_number(value: Any) -> int | float:
  if isinstance(value, (int, np.integer)):
    return int(value)
  return float(value)


def json_metrics(metrics: Mapping[str, int | float]
                 ) -> dict[str, int | float | None]:
  """The metrics with NaN (e.g. an AUC without both classes) as None."""
  # JSON has no NaN.
  return {name: None if isinstance(value, float) and math.isnan(value)
          else value for name, value in metrics.items()}


def write_json(path: str, content: Mapping[str, Any]) -> None:
  """Writes strict JSON atomically, on any ``tf.io.gfile`` file system."""
  layout.atomic_write(
      path, json.dumps(content, indent=2, sort_keys=True, allow_nan=False)
      + "\n", layout.GFileSystem(tf.io.gfile))


def write_metrics(path: str, metrics: Mapping[str, int | float]) -> None:
  """Writes the metrics as a JSON object, NaN as null."""
  write_json(path, json_metrics(metrics))


def format_table(metrics: Mapping[str, int | float | None]) -> str:
  """A two-column text table of the metrics, in their given order."""
  width = max(len(name) for name in metrics)
  lines = []
  for name, value in metrics.items():
    if value is None or math.isnan(value):
      text = "nan"
    elif float(value).is_integer() and abs(value) > 1:
      text = str(int(value))  # The counts.
    else:
      text = f"{value:.6f}"
    lines.append(f"{name:<{width}}  {text}")
  return "\n".join(lines)
