"""Tests for escm2_tf.run_outputs: the scored copy and what it writes."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import json
import math
import os

import numpy as np
import tensorflow as tf

import datasets
import testing
from escm2_tf import data
from escm2_tf import data_size
from escm2_tf import divergence
from escm2_tf import model as model_lib
from escm2_tf import optimizers
from escm2_tf import run_dir
from escm2_tf import run_outputs
from escm2_tf import vocab


class RunOutputsTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = datasets.make_synthetic_data(testing.new_dir())
    cls.vocabularies = vocab.load_vocabularies(cls.data["vocab_dir"])

  def setUp(self):
    super().setUp()
    self.config = testing.tiny_config(self.data, testing.new_dir(),
                                      loss="dr", seed=5)
    self.batch = next(iter(data.make_dataset(
        self.data["test"], 64, training=False)))

  def trained_checkpoint(self):
    """A model after one step, saved with its optimizer, and the path."""
    model = model_lib.build_model(self.config.model, self.config.loss,
                                  self.vocabularies, seed=5)
    model.compile(optimizer=optimizers.make_optimizer("sparse_adam", 1e-2))
    model.train_on_batch(*self.batch)
    path = os.path.join(self.config.trainer.model_dir, "final")
    model.save_weights(path)
    return model, path

  def test_the_local_copy_predicts_as_the_trained_model(self):
    model, path = self.trained_checkpoint()
    copy = run_outputs.local_copy(self.config, self.vocabularies, path)
    features, _ = self.batch
    trained = model(features, training=False)
    copied = copy(features, training=False)
    for name in ("ctr", "cvr", "ctcvr"):
      self.assertAllClose(copied[name], trained[name], rtol=0, atol=0)
    # The copy has the network only: no optimizer, hence no slots.
    self.assertIsNone(copy.optimizer)

  def test_score_and_export_writes_the_metrics_it_returns(self):
    _, path = self.trained_checkpoint()
    copy = run_outputs.local_copy(self.config, self.vocabularies, path)
    result = run_outputs.score_and_export(copy, self.config)
    self.assertEqual(result["export_path"], "")
    with open(os.path.join(self.config.trainer.model_dir,
                           run_dir.METRICS_FILE), encoding="utf-8") as f:
      self.assertEqual(json.load(f), result["metrics"])
    self.assertEqual(result["metrics"]["count"],
                     data_size.count_records(self.data["test"]))
    self.assertTrue(np.isfinite(result["metrics"]["auc_ctr"]))

  def test_a_model_predicting_nan_writes_no_metrics(self):
    _, path = self.trained_checkpoint()
    copy = run_outputs.local_copy(self.config, self.vocabularies, path)
    bias = copy.network.get_layer("towers").biases[-1]
    bias.assign(tf.tensor_scatter_nd_update(bias, [[1, 0]], [math.nan]))
    with self.assertRaisesRegex(divergence.TrainingDivergedError,
                                "predicts NaN or infinite cvr on eval_data"):
      run_outputs.score_and_export(copy, self.config)
    self.assertFalse(os.path.exists(os.path.join(
        self.config.trainer.model_dir, run_dir.METRICS_FILE)))


if __name__ == "__main__":
  tf.test.main()
