"""Tests of escm2_tf.evaluation: metrics, metrics files, both scorers."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import json
import math
import os
from unittest import mock

import numpy as np
import tensorflow as tf

import datasets
import test_ground_truth
import testing
from escm2_tf import config as config_lib
from escm2_tf import evaluation
from escm2_tf import export
from escm2_tf import layout
from escm2_tf import metrics
from escm2_tf import model as model_lib
from escm2_tf import schema
from escm2_tf import vocab

class MetricsTest(tf.test.TestCase):

  def predictions(self):
    rng = np.random.default_rng(0)
    count = 200
    click = (rng.random(count) < 0.4).astype(np.float32)
    ctr, cvr = rng.random(count), rng.random(count)
    return {schema.SAMPLE_ID: np.array([f"s{i}" for i in range(count)]),
            schema.CLICK: click,
            schema.CONVERSION: click * (rng.random(count) < 0.5),
            "ctr": ctr, "cvr": cvr, "ctcvr": ctr * cvr}

  def test_joins_ground_truth_by_sample_id(self):
    predictions = self.predictions()
    ids = predictions[schema.SAMPLE_ID]
    order = np.random.default_rng(1).permutation(len(ids))
    # Rows in another order than the data.
    table = test_ground_truth.truth(ids[order],
                                    click=predictions[schema.CLICK][order])
    table[schema.CONVERSION] = predictions[schema.CONVERSION][order]
    computed = evaluation.compute_metrics(predictions, table)
    by_id = dict(zip(table[schema.SAMPLE_ID], range(len(ids))))
    rows = [by_id[i] for i in ids]
    expected = metrics.evaluate_predictions(
        predictions[schema.CLICK], predictions[schema.CONVERSION],
        predictions["ctr"], predictions["cvr"], predictions["ctcvr"],
        ground_truth={name: table[name][rows]
                      for name in layout.GROUND_TRUTH_COLUMNS})
    self.assertEqual(computed, expected)
    self.assertIn("cvr_bias", computed)

  def test_write_metrics_is_strict_json(self):
    path = test_ground_truth.write_file("")
    evaluation.write_metrics(path, {"auc_cvr": math.nan, "count": 3.0,
                                    "auc_ctr": 0.75})
    with open(path) as f:
      text = f.read()
    self.assertNotIn("NaN", text)
    self.assertEqual(json.loads(text), {"auc_cvr": None, "count": 3.0,
                                        "auc_ctr": 0.75})
    self.assertEqual(os.listdir(os.path.dirname(path)),
                     [os.path.basename(path)])

  def test_format_table(self):
    table = evaluation.format_table({"auc_ctr": 0.7512345678, "count": 1500.0,
                                     "auc_cvr": None})
    self.assertEqual(table.splitlines(), [
        "auc_ctr  0.751235", "count    1500", "auc_cvr  nan"])


class ScoringTest(tf.test.TestCase):
  """The Keras model and its SavedModel score the same data the same way."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = datasets.make_synthetic_data(
        testing.new_dir())
    model_config = testing.tiny_model_config(use_weights=True)
    cls.model = model_lib.build_model(
        model_config, config_lib.LossConfig(loss="ipw"),
        vocab.load_vocabularies(cls.data["vocab_dir"]), seed=11)
    export_path = export.export_saved_model(
        cls.model, testing.new_dir())
    cls.loaded = tf.saved_model.load(export_path)

  def sorted_by_id(self, columns):
    order = np.argsort(columns[schema.SAMPLE_ID], kind="stable")
    return {name: values[order] for name, values in columns.items()}

  def test_keras_and_saved_model_agree(self):
    # 300 does not divide the test split: a smaller last batch is scored too.
    keras_columns = evaluation.predict_keras_model(self.model,
                                                   self.data["test"], 300)
    saved_columns = evaluation.predict_saved_model(
        self.loaded.signatures["serving_default"], self.data["test"], 300)
    # The two read the files in different orders; rows pair by sample_id.
    keras_columns = self.sorted_by_id(keras_columns)
    saved_columns = self.sorted_by_id(saved_columns)
    self.assertAllEqual(keras_columns[schema.SAMPLE_ID],
                        saved_columns[schema.SAMPLE_ID])
    ids = evaluation.read_labels(self.data["test"])[schema.SAMPLE_ID]
    self.assertAllEqual(keras_columns[schema.SAMPLE_ID], np.sort(ids))
    self.assertLen(np.unique(ids), len(ids))
    for name in schema.LABELS:
      self.assertAllEqual(keras_columns[name], saved_columns[name])
    for name in schema.OUTPUT_NAMES:
      self.assertAllClose(keras_columns[name], saved_columns[name],
                          atol=1e-6, rtol=0)
      self.assertAllInRange(keras_columns[name], 0.0, 1.0)

  def test_keras_predictions_are_the_models(self):
    columns = evaluation.predict_keras_model(self.model, self.data["test"], 64)
    spec = schema.feature_spec(with_labels=False, with_sample_id=True)
    dataset = tf.data.TFRecordDataset(tf.io.gfile.glob(self.data["test"]),
                                      compression_type="GZIP").take(5)
    features = tf.io.parse_example(next(iter(dataset.batch(5))), spec)
    expected = self.model(features, training=False)
    row_of = {sample_id: row for row, sample_id in
              enumerate(columns[schema.SAMPLE_ID])}
    rows = [row_of[sample_id.decode()]
            for sample_id in features[schema.SAMPLE_ID].numpy()]
    for name in schema.OUTPUT_NAMES:
      self.assertAllClose(columns[name][rows], expected[name], atol=1e-6,
                          rtol=0)

  def test_without_sample_ids_the_same_float32_columns(self):
    signature = self.loaded.signatures["serving_default"]
    for predict, model in ((evaluation.predict_keras_model, self.model),
                           (evaluation.predict_saved_model, signature)):
      with_ids = predict(model, self.data["test"], 300)
      without = predict(model, self.data["test"], 300, with_sample_id=False)
      self.assertEqual(set(with_ids) - set(without), {schema.SAMPLE_ID})
      for name, values in without.items():
        self.assertEqual(values.dtype, np.float32, name)
        self.assertAllEqual(values, with_ids[name])
      self.assertEqual(evaluation.compute_metrics(without),
                       evaluation.compute_metrics(with_ids))
      with self.assertRaisesRegex(ValueError, "needs predictions with "
                                  "sample_id"):
        evaluation.compute_metrics(
            without, test_ground_truth.truth(with_ids[schema.SAMPLE_ID]))

  def test_columns_in_blocks_keep_the_file_order(self):
    signature = self.loaded.signatures["serving_default"]
    whole = evaluation.predict_saved_model(signature, self.data["test"], 64)
    # Blocks of 2 to 4 batches of 64 rows, and one of them partial.
    with mock.patch.object(evaluation, "_BLOCK_ROWS", 150):
      blocked = evaluation.predict_saved_model(signature, self.data["test"],
                                               64)
    self.assertGreater(len(whole[schema.CLICK]), 600)
    self.assertEqual(set(blocked), set(whole))
    for name, values in whole.items():
      self.assertAllEqual(blocked[name], values)

  def test_chosen_outputs(self):
    model = model_lib.build_model(
        testing.TINY_MODEL, config_lib.LossConfig(loss="dr"),
        vocab.load_vocabularies(self.data["vocab_dir"]), seed=12)
    files = [self.data["test"]]  # A list of globs, as well as one glob.
    every = evaluation.predict_keras_model(model, files, 128, outputs=None)
    only_cvr = evaluation.predict_keras_model(model, files, 128,
                                              outputs=["cvr"])
    labels_and_id = {schema.SAMPLE_ID, *schema.LABELS}
    self.assertEqual(set(every), labels_and_id | {"ctr", "cvr", "ctcvr",
                                                  "imputation"})
    self.assertEqual(set(only_cvr), labels_and_id | {"cvr"})
    self.assertAllEqual(only_cvr["cvr"], every["cvr"])
    self.assertAllInRange(every["imputation"], 0.0, np.inf)


if __name__ == "__main__":
  tf.test.main()
