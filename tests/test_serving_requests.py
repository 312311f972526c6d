"""Requests as TF Serving clients send them, run against the exported model.

TF Serving has no binary here, so these tests play its part: REST JSON bodies
are decoded into one array per signature input (row format: the instances
stacked; columnar: as given; ``{"b64": ...}`` as bytes); gRPC requests go over
a real localhost channel to a ``PredictionService`` that turns the tensor
protos into arrays with ``tf.make_ndarray`` and calls the signature; the
warmup file is replayed through the same service, as TF Serving replays it on
load.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import base64
from concurrent import futures
import json
import os
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

import testing
from escm2_tf import config as config_lib
from escm2_tf import export
from escm2_tf import model as model_lib
from escm2_tf import schema
from escm2_tf import serving
from escm2_tf import serving_assets

_TOLERANCE = 1e-6


def _build_model():
  vocabularies = {field: np.arange(1, 31, dtype=np.int64) * 3
                  for field in schema.FIELD_NAMES}
  model_config = testing.tiny_model_config(use_weights=True)
  return model_lib.build_model(model_config, config_lib.LossConfig(loss="ipw"),
                               vocabularies, seed=3)


def _rows() -> list[dict[str, list]]:
  rows = []
  for index in range(5):
    row = {field: [3 * (index + position) + 3 for position in range(
        1 + (index + position) % 3)] for position, field in enumerate(
            schema.FIELD_NAMES)}
    row["205"] = [10**10 + index]  # An unknown item: an OOV row.
    row["109_14_w"] = [0.5 + index] * len(row["109_14"])
    rows.append(row)
  rows[2].pop("150_14")  # An absent field.
  return rows


def _decode_json_value(value: Any) -> Any:
  """JSON → Python as TF Serving reads it: ``{"b64": s}`` is binary data."""
  if isinstance(value, dict) and set(value) == {"b64"}:
    return base64.b64decode(value["b64"])
  if isinstance(value, list):
    return [_decode_json_value(item) for item in value]
  return value


def _rest_inputs(body: str, signature) -> dict[str, tf.Tensor]:
  """Decodes a REST predict body into the signature's input tensors."""
  request = json.loads(body)
  # Keyed as the SignatureDef's inputs (Python argument names are sanitized).
  specs = {spec.name: spec
           for spec in signature.structured_input_signature[1].values()}
  if "instances" in request:
    instances = request["instances"]
    named = all(isinstance(i, dict) and set(i) != {"b64"} for i in instances)
    if named:
      columns = {name: [instance[name] for instance in instances]
                 for name in specs}
    else:  # Bare values: the signature's one input.
      (name,) = specs
      columns = {name: instances}
  else:
    inputs = request["inputs"]
    columns = inputs if isinstance(inputs, dict) and set(inputs) != {
        "b64"} else {next(iter(specs)): inputs}
  return {name: tf.constant(np.array(_decode_json_value(columns[name]),
                                     dtype=specs[name].dtype.as_numpy_dtype),
                            dtype=specs[name].dtype)
          for name in specs}


class _PredictionService(
    prediction_service_pb2_grpc.PredictionServiceServicer):
  """TF Serving's Predict: tensor protos in, signature, tensor protos out."""

  def __init__(self, signatures):
    self._signatures = signatures

  def Predict(self, request, context):  # pylint: disable=invalid-name
    signature = self._signatures[request.model_spec.signature_name or
                                 serving.EXAMPLES_SIGNATURE]
    try:
      outputs = signature(**{name: tf.constant(tf.make_ndarray(proto))
                             for name, proto in request.inputs.items()})
    except (tf.errors.InvalidArgumentError, TypeError) as error:
      context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(request.model_spec)
    for name, value in outputs.items():
      response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
    return response


class ServingRequestsTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = _build_model()
    cls.rows = _rows()
    export_dir = testing.new_dir()
    cls.path = export.export_saved_model(cls.model, export_dir)
    cls.signatures = tf.saved_model.load(cls.path).signatures
    cls.server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        _PredictionService(cls.signatures), cls.server)
    port = cls.server.add_insecure_port("localhost:0")
    cls.server.start()
    cls.channel = grpc.insecure_channel(f"localhost:{port}")
    cls.stub = prediction_service_pb2_grpc.PredictionServiceStub(cls.channel)

  @classmethod
  def tearDownClass(cls):
    cls.channel.close()
    cls.server.stop(grace=None)
    super().tearDownClass()

  def _expected(self, rows) -> dict[str, np.ndarray]:
    serialized = [serving.make_example(row).SerializeToString()
                  for row in rows]
    outputs = self.model(tf.io.parse_example(
        serialized, schema.serving_feature_spec()), training=False)
    return {name: outputs[name].numpy() for name in schema.OUTPUT_NAMES}

  def _check(self, outputs, expected):
    for name in schema.OUTPUT_NAMES:
      self.assertAllClose(outputs[name], expected[name], atol=_TOLERANCE,
                          rtol=0)
      self.assertAllInRange(outputs[name], 0.0, 1.0)
    self.assertAllClose(outputs["ctcvr"], outputs["ctr"] * outputs["cvr"],
                        atol=1e-7, rtol=0)

  def test_rest_row_format_dense(self):
    # A REST client pads every field of every instance to one width.
    ids = serving.pad_rows(self.rows, schema.FIELD_NAMES, np.int64)
    instances = [{name: matrix[i].tolist() for name, matrix in ids.items()}
                 for i in range(len(self.rows))]
    body = json.dumps({"signature_name": serving.DENSE_SIGNATURE,
                       "instances": instances})
    signature = self.signatures[serving.DENSE_SIGNATURE]
    outputs = signature(**_rest_inputs(body, signature))
    unweighted = [{k: v for k, v in row.items() if k in schema.FIELD_NAMES}
                  for row in self.rows]
    self._check(outputs, self._expected(unweighted))

  def test_rest_columnar_format_dense_weighted(self):
    inputs = serving.signature_request(serving.DENSE_WEIGHTED_SIGNATURE,
                                       self.rows)
    body = json.dumps({
        "signature_name": serving.DENSE_WEIGHTED_SIGNATURE,
        "inputs": {name: value.tolist() for name, value in inputs.items()}})
    signature = self.signatures[serving.DENSE_WEIGHTED_SIGNATURE]
    self._check(signature(**_rest_inputs(body, signature)),
                self._expected(self.rows))

  def test_rest_b64_examples(self):
    encoded = [base64.b64encode(
        serving.make_example(row).SerializeToString()).decode("ascii")
               for row in self.rows]
    signature = self.signatures[serving.EXAMPLES_SIGNATURE]
    bodies = [
        {"instances": [{"b64": e} for e in encoded]},
        {"signature_name": serving.EXAMPLES_SIGNATURE,
         "instances": [{serving.EXAMPLES_INPUT: {"b64": e}} for e in encoded]},
        {"inputs": {serving.EXAMPLES_INPUT: [{"b64": e} for e in encoded]}},
    ]
    for body in bodies:
      self._check(signature(**_rest_inputs(json.dumps(body), signature)),
                  self._expected(self.rows))

  def _grpc_predict(self, request: predict_pb2.PredictRequest
                    ) -> predict_pb2.PredictResponse:
    return self.stub.Predict(request, timeout=60)

  def test_grpc_predict_request(self):
    for signature in serving.SIGNATURE_NAMES:
      request = predict_pb2.PredictRequest()
      request.model_spec.name = "escm2"
      request.model_spec.signature_name = signature
      for name, value in serving.signature_request(signature,
                                                   self.rows).items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
      response = self._grpc_predict(request)
      outputs = {name: tf.make_ndarray(response.outputs[name])
                 for name in schema.OUTPUT_NAMES}
      rows = self.rows if signature != serving.DENSE_SIGNATURE else [
          {k: v for k, v in row.items() if k in schema.FIELD_NAMES}
          for row in self.rows]
      self._check(outputs, self._expected(rows))

  def test_grpc_empty_batch(self):
    request = serving.predict_request(
        serving.EXAMPLES_SIGNATURE,
        {serving.EXAMPLES_INPUT: np.array([], dtype=object)})
    response = self._grpc_predict(request)
    for name in schema.OUTPUT_NAMES:
      self.assertEqual(tf.make_ndarray(response.outputs[name]).shape, (0,))

  def test_grpc_wrong_dtype_is_an_error(self):
    inputs = serving.signature_request(serving.DENSE_SIGNATURE, self.rows)
    request = serving.predict_request(
        serving.DENSE_SIGNATURE,
        {name: value.astype(np.float32) for name, value in inputs.items()})
    with self.assertRaises(grpc.RpcError) as raised:
      self._grpc_predict(request)
    self.assertEqual(raised.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
    self.assertIn("expected to be a int64 tensor", raised.exception.details())
    # The service keeps serving after a bad request.
    self.test_grpc_empty_batch()

  def test_warmup_requests_replay(self):
    path = os.path.join(self.path, serving_assets.ASSETS_EXTRA,
                        serving_assets.WARMUP_FILE)
    replayed = []
    for record in tf.data.TFRecordDataset(path):
      log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
      self.assertEqual(log.WhichOneof("log_type"), "predict_log")
      request = log.predict_log.request
      batch = tf.make_ndarray(next(iter(request.inputs.values()))).shape[0]
      response = self._grpc_predict(request)
      for name in schema.OUTPUT_NAMES:
        values = tf.make_ndarray(response.outputs[name])
        self.assertEqual(values.shape, (batch,))
        self.assertAllInRange(values, 0.0, 1.0)
      replayed.append((request.model_spec.signature_name, batch))
    self.assertCountEqual(replayed, [
        (signature, batch) for signature in serving.SIGNATURE_NAMES
        for batch in serving_assets.WARMUP_BATCH_SIZES])


if __name__ == "__main__":
  tf.test.main()
