"""Tests of escm2-predict: batch scoring of TFRecords and raw text formats."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import csv
import gzip
import os

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

import testing
from escm2_tf import config as config_lib
from escm2_tf.formats import aliccp
from escm2_tf.formats import encode
from escm2_tf.formats import paddlerec
from escm2_tf import export
from escm2_tf import layout
from escm2_tf import model as model_lib
from escm2_tf import schema
from escm2_tf import scoring
from escm2_tf import serving
from escm2_tf import simulator
from escm2_tf.cli import predict

_TOLERANCE = 1e-6



def _build_model():
  vocabularies = {field: np.arange(1, 41, dtype=np.int64)
                  for field in schema.FIELD_NAMES}
  model_config = testing.tiny_model_config(use_weights=True)
  return model_lib.build_model(model_config, config_lib.LossConfig(loss="dr"),
                               vocabularies, seed=5)


def _rows(count: int) -> list[dict[str, list]]:
  rng = np.random.default_rng(11)
  rows = []
  for _ in range(count):
    row = {}
    for field in schema.FIELDS:
      size = int(rng.integers(0, 4 if field.multi_valued else 2))
      row[field.name] = rng.integers(1, 60, size=size).tolist()  # Some OOV.
      if field.weighted:
        row[schema.weight_name(field.name)] = rng.choice(
            [0.5, 1.0, 2.0, 3.0], size=size).tolist()
    rows.append(row)
  return rows


def _without_weights(rows):
  return [{k: v for k, v in row.items() if k in schema.FIELD_NAMES}
          for row in rows]


def _heaviest_only(rows):
  """Each field's heaviest id (the first among equals), as the converter's
  truncation to one value keeps it."""
  kept = []
  for row in rows:
    row = dict(row)
    for field in schema.FIELD_NAMES:
      weight = schema.weight_name(field) if (
          field in schema.WEIGHTED_FIELDS) else None
      values = row.get(weight) or [1.0] * len(row[field])
      if len(values) > 1:
        best = int(np.argmax(values))
        row[field] = [row[field][best]]
        if weight:
          row[weight] = [values[best]]
    kept.append(row)
  return kept


def _expected(model, rows) -> np.ndarray:
  features = {name: tf.ragged.constant(
      [row.get(name, []) for row in rows],
      dtype=tf.float32 if name in schema.WEIGHT_NAMES else tf.int64,
      ragged_rank=1) for name in schema.FIELD_NAMES + schema.WEIGHT_NAMES}
  outputs = model(features, training=False)
  return np.stack([outputs[name].numpy() for name in schema.OUTPUT_NAMES],
                  axis=1)


def _write_tfrecord(path: str, rows, sample_ids) -> None:
  """Records of ``rows``; a sample id None leaves the feature out."""
  options = tf.io.TFRecordOptions(
      compression_type="GZIP" if path.endswith(".gz") else "")
  with tf.io.TFRecordWriter(path, options) as writer:
    for row, sample_id in zip(rows, sample_ids):
      example = serving.make_example(row)
      if sample_id is not None:
        example.features.feature[schema.SAMPLE_ID].bytes_list.value.append(
            sample_id if isinstance(sample_id, bytes) else sample_id.encode())
      example.features.feature[schema.CLICK].int64_list.value.append(1)
      writer.write(example.SerializeToString())


def _paddlerec_lines(rows, sample_ids) -> list[str]:
  return [paddlerec.format_paddlerec_line(
      sample_id, 1, 0, [(f, i) for f in schema.FIELD_NAMES for i in row[f]])
          for row, sample_id in zip(rows, sample_ids)]


def _items(row, fields):
  return [(f, i, w) for f in fields for i, w in zip(
      row[f], row.get(schema.weight_name(f), [1.0] * len(row[f]))
      if f in schema.WEIGHTED_FIELDS else [1.0] * len(row[f]))]


def _aliccp_lines(rows, sample_ids) -> tuple[list[str], list[str]]:
  skeleton, common = [], []
  for row, sample_id in zip(rows, sample_ids):
    index = f"u{sample_id}"
    common.append(aliccp.format_common_line(
        index, _items(row, schema.COMMON_FIELDS)))
    skeleton.append(aliccp.format_skeleton_line(
        sample_id, 0, 0, index, _items(row, schema.SAMPLE_FIELDS)))
  return skeleton, common


def _write_lines(path: str, lines) -> str:
  with open(path, "w", encoding="utf-8") as f:
    f.write("".join(line + "\n" for line in lines))
  return path


def _simulated_aliccp(directory: str) -> tuple[str, str]:
  """The simulator's skeleton and common features: 400 impressions of 16
  users."""
  simulator.simulate(simulator.SimulatorConfig(
      num_train=400, num_test=1, num_users=30, num_items=300, seed=4,
      behaviour_length=40), directory)
  names = layout.raw_file_names("aliccp", layout.TRAIN)
  return (os.path.join(directory, names["skeleton"]),
          os.path.join(directory, names["common"]))


def _common_in_memory(path: str, max_values: int) -> dict[str, bytes]:
  """Every user's encoded row in a dict, the join held in memory."""
  with open(path, encoding="utf-8") as f:
    return {index: encoded.entries for index, encoded in (
        encode.encode_common(line, max_values) for line in f)}


def _read_csv(path: str) -> tuple[list[str], list[str], np.ndarray]:
  with open(path, newline="", encoding="utf-8") as f:
    header, *records = list(csv.reader(f))
  return (header, [r[0] for r in records],
          np.array([[float(v) for v in r[1:]] for r in records]))


class PredictCliTest(tf.test.TestCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = testing.new_dir()
    cls.model = _build_model()
    cls.export_dir = os.path.join(cls.root, "export")
    export.export_saved_model(cls.model, cls.export_dir)
    cls.rows = _rows(11)
    cls.ids = [str(1000 + i) for i in range(len(cls.rows))]

  def _run(self, **flag_values) -> tuple[int, str]:
    values = {"saved_model": self.export_dir, "input_format": "tfrecord",
              "common_features": "", "batch_size": 4,
              "max_values_per_field": 50, **flag_values}
    code, _, stderr = testing.run_main(predict.TOOL, **values)
    return code, stderr

  def _check_scores(self, output: str, ids, expected) -> None:
    header, sample_ids, scores = _read_csv(output)
    self.assertEqual(header, ["sample_id", "ctr", "cvr", "ctcvr"])
    self.assertEqual(sample_ids, ids)
    self.assertAllClose(scores, expected, atol=_TOLERANCE, rtol=0)
    self.assertAllInRange(scores, 0.0, 1.0)
    self.assertEmpty([name for name in os.listdir(os.path.dirname(output))
                      if name.startswith(".")])

  @parameterized.parameters(".tfrecord.gz", ".tfrecord")
  def test_tfrecords_in_file_order(self, suffix):
    directory = testing.new_dir()
    # Two files, batches of 4 that do not divide either file.
    _write_tfrecord(os.path.join(directory, f"part-1{suffix}"),
                    self.rows[6:], self.ids[6:])
    _write_tfrecord(os.path.join(directory, f"part-0{suffix}"),
                    self.rows[:6], self.ids[:6])
    output = os.path.join(directory, "scores.csv")
    code, stderr = self._run(data=os.path.join(directory, "part-*"),
                             output=output)
    self.assertEqual(code, 0, stderr)
    self._check_scores(output, self.ids, _expected(self.model, self.rows))

  def test_paddlerec_text(self):
    directory = testing.new_dir()
    data = _write_lines(os.path.join(directory, "test.txt"),
                        _paddlerec_lines(self.rows, self.ids))
    output = os.path.join(directory, "scores.csv")
    code, stderr = self._run(data=data, output=output,
                             input_format="paddlerec")
    self.assertEqual(code, 0, stderr)
    # PaddleRec's format has no values: every weight is 1.0.
    self._check_scores(output, self.ids,
                       _expected(self.model, _without_weights(self.rows)))

  def _write_aliccp(self, directory: str) -> tuple[str, str]:
    """The rows as Tianchi files, the common rows in reverse order."""
    skeleton, common = _aliccp_lines(self.rows, self.ids)
    return (_write_lines(os.path.join(directory, "skeleton.csv"), skeleton),
            _write_lines(os.path.join(directory, "common.csv"), common[::-1]))

  def _predict_aliccp(self, data: str, common_path: str,
                      max_values: int) -> str:
    """Runs escm2-predict on Tianchi files; returns its output CSV."""
    output = os.path.join(os.path.dirname(data), "scores.csv")
    code, stderr = self._run(data=data, output=output, input_format="aliccp",
                             common_features=common_path,
                             max_values_per_field=max_values)
    self.assertEqual(code, 0, stderr)
    return output

  @parameterized.parameters(0, 1)
  def test_aliccp_with_common_features(self, max_values):
    output = self._predict_aliccp(*self._write_aliccp(testing.new_dir()),
                                  max_values)
    rows = _heaviest_only(self.rows) if max_values == 1 else self.rows
    self._check_scores(output, self.ids, _expected(self.model, rows))

  @parameterized.named_parameters(("lines", False, 0),
                                  ("lines_truncated", False, 1),
                                  ("simulated", True, 20))
  def test_aliccp_join_on_disk_scores_as_the_join_in_memory(
      self, simulated, max_values):
    directory = testing.new_dir()
    data, common_path = (_simulated_aliccp(directory) if simulated
                         else self._write_aliccp(directory))
    output = self._predict_aliccp(data, common_path, max_values)
    in_memory = os.path.join(directory, "in_memory.csv")
    count = scoring.score(
        scoring.load_signature(self.export_dir),
        scoring.text_batches([data], "aliccp", 4, max_values,
                             _common_in_memory(common_path, max_values)),
        in_memory)
    self.assertEqual(count, 400 if simulated else len(self.rows))
    with open(output, encoding="utf-8") as f, open(
        in_memory, encoding="utf-8") as g:
      self.assertEqual(f.read(), g.read())

  def test_field_on_the_wrong_side_of_the_join(self):
    skeleton, common = _aliccp_lines(self.rows[:2], self.ids[:2])
    skeleton[1] = aliccp.format_skeleton_line(
        self.ids[1], 0, 0, f"u{self.ids[1]}", [("101", 7, 1.0)])
    data = _write_lines(os.path.join(self.get_temp_dir(), "s.csv"), skeleton)
    common_path = _write_lines(os.path.join(self.get_temp_dir(), "c.csv"),
                               common)
    self._failing_run(f"--data: {data}:2: wrong_source_field: field(s) 101 "
                      "belong "
                      "to the other file of the Ali-CCP join",
                      data=data, input_format="aliccp",
                      common_features=common_path)

  def _failing_run(self, expected_error: str, **flag_values) -> None:
    output = os.path.join(testing.new_dir(),
                          "scores.csv")
    _write_lines(output, ["previous results"])
    code, stderr = self._run(output=output, **flag_values)
    self.assertEqual(code, 2)
    self.assertStartsWith(stderr,
                          f"escm2-predict: error: {expected_error}")
    self.assertEqual(stderr.count("\n"), 1, stderr)
    with open(output, encoding="utf-8") as f:
      self.assertEqual(f.read(), "previous results\n")
    self.assertEmpty([name for name in os.listdir(os.path.dirname(output))
                      if name.startswith(".")])

  def test_bad_paddlerec_line_names_file_and_line(self):
    lines = _paddlerec_lines(self.rows[:3], self.ids[:3])
    lines[2] = lines[2].replace(":", ";", 1)
    data = _write_lines(os.path.join(self.get_temp_dir(), "bad.txt"), lines)
    self._failing_run(f"--data: {data}:3: broken_separator", data=data,
                      input_format="paddlerec")

  def test_unknown_common_feature_index(self):
    skeleton, common = _aliccp_lines(self.rows[:4], self.ids[:4])
    data = _write_lines(os.path.join(self.get_temp_dir(), "s.csv"), skeleton)
    common_path = _write_lines(os.path.join(self.get_temp_dir(), "c.csv"),
                               common[:3])
    self._failing_run(f"--data: {data}:4: common_feature_index u1003 is "
                      "not in",
                      data=data, input_format="aliccp",
                      common_features=common_path)

  def test_corrupt_tfrecord_names_the_file(self):
    path = os.path.join(self.get_temp_dir(), "broken.tfrecord.gz")
    with gzip.open(path, "wb") as f:
      f.write(b"not a record at all")
    self._failing_run(f"--data: {path}: corrupt or not a GZIP TFRecord file "
                      "after "
                      "record 0: corrupted record", data=path)

  def test_misaligned_weights_name_the_records(self):
    path = os.path.join(self.get_temp_dir(), "misaligned.tfrecord")
    rows = [dict(row) for row in self.rows[:2]]
    rows[1]["109_14"] = [1, 2]
    rows[1]["109_14_w"] = [1.0]
    _write_tfrecord(path, rows, self.ids[:2])
    self._failing_run(f"--data: {path}, records 1 to 2: the model rejected "
                      "it: "
                      "assertion failed: [Every row of 109_14_w", data=path)

  def test_repeated_common_feature_index(self):
    skeleton, common = _aliccp_lines(self.rows[:3], self.ids[:3])
    data = _write_lines(os.path.join(testing.new_dir(), "s.csv"), skeleton)
    common_path = _write_lines(os.path.join(testing.new_dir(), "c.csv"),
                               common + common[1:2])
    self._failing_run(f"--common_features: {common_path}:4: "
                      "common_feature_index u1001 appears "
                      "twice", data=data, input_format="aliccp",
                      common_features=common_path)

  def test_saved_model_without_serving_default(self):
    module = tf.Module()
    module.double = tf.function(lambda x: {"y": 2.0 * x}, input_signature=[
        tf.TensorSpec([None], tf.float32)])
    path = os.path.join(testing.new_dir(), "other_model")
    tf.saved_model.save(module, path, signatures={"double": module.double})
    data = os.path.join(testing.new_dir(), "ok.tfrecord")
    _write_tfrecord(data, self.rows[:1], self.ids[:1])
    self._failing_run(f"--saved_model: {path} has no serving_default "
                      "signature (it has double)", data=data, saved_model=path)

  def test_unwritable_output(self):
    directory = testing.new_dir()
    data = _write_lines(os.path.join(directory, "test.txt"),
                        _paddlerec_lines(self.rows[:2], self.ids[:2]))
    missing = os.path.join(directory, "missing", "scores.csv")
    a_directory = os.path.join(directory, "scores")
    os.makedirs(a_directory)
    for output, reason in ((missing, "No such file or directory"),
                           (a_directory, "Is a directory")):
      code, stderr = self._run(data=data, output=output,
                               input_format="paddlerec")
      self.assertEqual(code, 2)
      self.assertEqual(stderr, f"escm2-predict: error: --output: cannot "
                       f"write {output}: {reason}\n")
    self.assertFalse(os.path.exists(os.path.dirname(missing)))
    self.assertEmpty(os.listdir(a_directory))
    self.assertCountEqual(os.listdir(directory), ["test.txt", "scores"])

  def test_records_without_sample_id_get_an_empty_one(self):
    directory = testing.new_dir()
    data = os.path.join(directory, "part.tfrecord.gz")
    ids = [None, self.ids[1], None, self.ids[3]]
    _write_tfrecord(data, self.rows[:4], ids)
    output = os.path.join(directory, "scores.csv")
    code, stderr = self._run(data=data, output=output)
    self.assertEqual(code, 0, stderr)
    self._check_scores(output, ["", self.ids[1], "", self.ids[3]],
                       _expected(self.model, self.rows[:4]))

  def test_sample_id_that_is_not_text(self):
    path = os.path.join(testing.new_dir(), "ids.tfrecord")
    _write_tfrecord(path, self.rows[:3], [b"1", b"\xff\xfe", b"3"])
    self._failing_run(f"--data: {path}, records 1 to 3: sample_id is not "
                      "UTF-8 text",
                      data=path)

  @parameterized.parameters("data", "common_features")
  def test_text_that_is_not_utf8_names_file_and_line(self, flag):
    directory = testing.new_dir()
    skeleton, common = _aliccp_lines(self.rows[:3], self.ids[:3])
    paths = {"data": os.path.join(directory, "s.csv"),
             "common_features": os.path.join(directory, "c.csv")}
    for name, lines in (("data", skeleton), ("common_features", common)):
      content = "".join(line + "\n" for line in lines).encode()
      if name == flag:
        # Latin-1, not UTF-8: the third line's "1002" becomes "1002\xe9".
        first, second, third = content.split(b"\n", 2)
        content = b"\n".join([first, second, third.replace(
            b"1002", b"1002\xe9", 1)])
      with open(paths[name], "wb") as f:
        f.write(content)
    self._failing_run(f"--{flag}: {paths[flag]}:3: not UTF-8 text: byte 0xe9",
                      data=paths["data"], input_format="aliccp",
                      common_features=paths["common_features"])

  @parameterized.named_parameters(
      ("no_data", {"data": ""}, "--data: is required"),
      ("no_match", {"data": "/nonexistent/*.gz"}, "--data: no files match"),
      ("common_without_aliccp", {"common_features": "x.csv"},
       "--common_features: is required with, and only with"),
      ("aliccp_without_common", {"input_format": "aliccp"},
       "--common_features: is required with, and only with"),
      ("no_saved_model", {"saved_model": "/nonexistent"}, "--saved_model: "),
  )
  def test_flag_errors(self, flag_values, expected_error):
    data = os.path.join(self.get_temp_dir(), "ok.tfrecord")
    _write_tfrecord(data, self.rows[:1], self.ids[:1])
    self._failing_run(expected_error, **{"data": data, **flag_values})


if __name__ == "__main__":
  tf.test.main()
