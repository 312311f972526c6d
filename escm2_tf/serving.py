"""Serving signatures of the exported ESCM2 SavedModel.

Three signatures wrap the same model (whose vocabulary lookup is in its graph,
so unknown ids fall into OOV buckets instead of failing):

* ``serving_default``: ``examples``, a string vector of serialized
  ``tf.train.Example`` records with the converter's feature names (raw ids,
  no labels; absent fields are empty). This is what the gRPC and the batch
  clients send.
* ``predict_dense``: one int64 ``[batch, width]`` matrix of raw ids per field,
  named by the field id and padded with ``schema.PAD_ID``; every behaviour
  weight is 1.0. JSON has no ragged lists, so REST clients pad.
* ``predict_dense_weighted``: the same plus one float32 matrix per weight
  feature (``<field>_w``), aligned with its field's ids.

Each returns float32 ``[batch]`` vectors ``ctr``, ``cvr`` and ``ctcvr``.

The module also builds requests the way clients do (tf.Example records, padded
matrices, ``PredictRequest`` protos); the export's warmup file is made of them.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

from typing import Iterable, Mapping, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tensorflow_serving.apis import predict_pb2

from escm2_tf import schema

EXAMPLES_SIGNATURE = "serving_default"
DENSE_SIGNATURE = "predict_dense"
DENSE_WEIGHTED_SIGNATURE = "predict_dense_weighted"
SIGNATURE_NAMES = (EXAMPLES_SIGNATURE, DENSE_SIGNATURE,
                   DENSE_WEIGHTED_SIGNATURE)
EXAMPLES_INPUT = "examples"

Features = dict[str, tf.RaggedTensor]
# One impression as a client holds it: feature name to its ids or weights.
Row = Mapping[str, Sequence[int] | Sequence[float]]


def parse_examples(examples: tf.Tensor) -> Features:
  """Parses serialized requests into the model's ragged features.

  A weighted field whose weights are absent keeps empty weight rows; the
  model gives those ids the weight 1.0.
  """
  return tf.io.parse_example(tf.ensure_shape(examples, [None]),
                              schema.serving_feature_spec())


def _matrices(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """Checks at run time that every input is a matrix.

  Loaded signatures and TF Serving feed tensors without checking them
  against the signature's shapes; EnsureShape fails clearly instead of deep
  inside the ragged ops.
  """
  return {name: tf.ensure_shape(value, [None, None])
          for name, value in inputs.items()}


def dense_to_ragged(ids: dict[str, tf.Tensor],
                    weights: dict[str, tf.Tensor] | None = None) -> Features:
  """Drops the padding of dense id (and weight) matrices.

  Args:
    ids: Field name to an int64 ``[batch, width]`` matrix; ``schema.PAD_ID``
      marks no value, wherever it stands in the row.
    weights: Weight name to a float32 matrix shaped like its field's ids;
      ``None`` gives every id the weight 1.0.

  Returns:
    The model's features: ragged ids per field and ragged weights.
  """
  ids = _matrices(ids)
  if weights is not None:
    weights = _matrices(weights)
  features = {}
  for field in schema.FIELD_NAMES:
    features[field] = tf.ragged.boolean_mask(ids[field],
                                             ids[field] != schema.PAD_ID)
  for field in schema.WEIGHTED_FIELDS:
    name = schema.weight_name(field)
    present = ids[field] != schema.PAD_ID
    if weights is None:
      features[name] = tf.ragged.boolean_mask(
          tf.ones_like(ids[field], dtype=tf.float32), present)
      continue
    check = tf.debugging.assert_equal(
        tf.shape(weights[name]), tf.shape(ids[field]),
        message=f"{name} must have the shape of {field}")
    with tf.control_dependencies([check]):
      features[name] = tf.ragged.boolean_mask(weights[name], present)
  return features


def _id_specs() -> dict[str, tf.TensorSpec]:
  return {field: tf.TensorSpec([None, None], tf.int64, name=field)
          for field in schema.FIELD_NAMES}


def _weight_specs() -> dict[str, tf.TensorSpec]:
  return {name: tf.TensorSpec([None, None], tf.float32, name=name)
          for name in schema.WEIGHT_NAMES}


class ServingModule(tf.Module):
  """The signature functions and exactly the state they read.

  The Keras model is deliberately not an attribute: saving it would also
  trace every layer for Keras' own format (slow, and unused by serving) and
  save a compiled model's optimizer slots. Instead the module tracks the
  variables the traced signatures read and the model's lookup tables, so TF
  Serving's session-based loader finds every variable and initialises every
  table; anything the functions capture untracked fails the save loudly.
  """

  def __init__(self, model: keras.Model):
    super().__init__(name="escm2_serving")

    def predict(features: Features) -> dict[str, tf.Tensor]:
      outputs = model(features, training=False)
      return {name: tf.identity(tf.cast(outputs[name], tf.float32),
                                name=name) for name in schema.OUTPUT_NAMES}

    self.serve_examples = tf.function(
        lambda examples: predict(parse_examples(examples)),
        input_signature=[tf.TensorSpec([None], tf.string,
                                       name=EXAMPLES_INPUT)], autograph=False)
    self.predict_dense = tf.function(
        lambda ids: predict(dense_to_ragged(ids)),
        input_signature=[_id_specs()], autograph=False)
    self.predict_dense_weighted = tf.function(
        lambda ids, weights: predict(dense_to_ragged(ids, weights)),
        input_signature=[_id_specs(), _weight_specs()], autograph=False)
    read = {}
    for function in self.signatures().values():
      read.update((variable.ref(), variable) for variable in function.variables)
    self.model_variables = list(read.values())
    self.tables = [
        trackable for trackable in tf.train.TrackableView(model).descendants()
        if isinstance(trackable, tf.saved_model.experimental.TrackableResource)]

  def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
    """The signature map for ``tf.saved_model.save``."""
    return {
        EXAMPLES_SIGNATURE: self.serve_examples.get_concrete_function(),
        DENSE_SIGNATURE: self.predict_dense.get_concrete_function(),
        DENSE_WEIGHTED_SIGNATURE:
            self.predict_dense_weighted.get_concrete_function(),
    }


def signature_inputs() -> dict[str, dict[str, str]]:
  """Each signature's input names and dtypes, for docs and assets."""
  ids = {field: "int64[batch, width]" for field in schema.FIELD_NAMES}
  weights = {name: "float32[batch, width]" for name in schema.WEIGHT_NAMES}
  return {
      EXAMPLES_SIGNATURE: {EXAMPLES_INPUT: "string[batch]"},
      DENSE_SIGNATURE: ids,
      DENSE_WEIGHTED_SIGNATURE: {**ids, **weights},
  }


def make_example(row: Row) -> tf.train.Example:
  """A request record: ids under the field names, weights under theirs."""
  feature = {}
  for name in schema.FIELD_NAMES:
    if row.get(name):
      feature[name] = tf.train.Feature(
          int64_list=tf.train.Int64List(value=row[name]))
  for name in schema.WEIGHT_NAMES:
    if row.get(name):
      feature[name] = tf.train.Feature(
          float_list=tf.train.FloatList(value=row[name]))
  return tf.train.Example(features=tf.train.Features(feature=feature))


def pad_rows(rows: Sequence[Row], names: Iterable[str],
             dtype: type) -> dict[str, np.ndarray]:
  """Dense ``[len(rows), width]`` matrices, padded with ``schema.PAD_ID``."""
  matrices = {}
  for name in names:
    width = max((len(row.get(name, ())) for row in rows), default=0)
    matrix = np.full((len(rows), width), schema.PAD_ID, dtype=dtype)
    for i, row in enumerate(rows):
      values = row.get(name, ())
      matrix[i, :len(values)] = values
    matrices[name] = matrix
  return matrices


def signature_request(signature: str,
                      rows: Sequence[Row]) -> dict[str, np.ndarray]:
  """The input arrays a client sends to ``signature`` for ``rows``."""
  if signature == EXAMPLES_SIGNATURE:
    serialized = [make_example(row).SerializeToString() for row in rows]
    return {EXAMPLES_INPUT: np.array(serialized, dtype=object)}
  inputs = pad_rows(rows, schema.FIELD_NAMES, np.int64)
  if signature == DENSE_WEIGHTED_SIGNATURE:
    for field in schema.WEIGHTED_FIELDS:
      name = schema.weight_name(field)
      weights = np.zeros(inputs[field].shape, dtype=np.float32)
      for i, row in enumerate(rows):
        ids = row.get(field, ())
        weights[i, :len(ids)] = row.get(name) or [1.0] * len(ids)
      inputs[name] = weights
  elif signature != DENSE_SIGNATURE:
    raise ValueError(f"Unknown signature {signature!r}; expected one of "
                     f"{', '.join(SIGNATURE_NAMES)}")
  return inputs


def predict_request(signature: str,
                    inputs: Mapping[str, np.ndarray],
                    model_name: str = "") -> predict_pb2.PredictRequest:
  """A gRPC ``PredictRequest``, built as TF Serving clients build it."""
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model_name
  request.model_spec.signature_name = signature
  for name, value in inputs.items():
    request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
  return request
