"""Tests of escm2_tf.training: TrainConfig, the input checks, resuming.

A complete run, determinism and the NaN stop are tested through the CLI, in
test_train_cli.py.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import csv
import json
import math
import os

from absl.testing import parameterized
import numpy as np
import tensorflow as tf
import tf_keras as keras

import datasets
import testing
from escm2_tf import config as config_lib
from escm2_tf import evaluation
from escm2_tf import losses
from escm2_tf import schema
from escm2_tf import training
from escm2_tf import run_dir

BATCH_SIZE = 256
# A small network: the tests are about the loop around it.
MODEL = testing.tiny_model_config(seed=7)
LOSS = losses.LossConfig(loss="dr")
ITERATIONS_KEY = "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"


def train_config(data: dict[str, str], model_dir: str = "model",
                 **overrides) -> training.TrainConfig:
  return testing.tiny_train_config(
      data, model_dir, **{"epochs": 2, "batch_size": BATCH_SIZE, "seed": 3,
                          **overrides})


new_dir = testing.new_dir


def new_file(content: str = "") -> str:
  path = os.path.join(new_dir(), "file")
  with open(path, "w") as f:
    f.write(content)
  return path


class _Interrupt(keras.callbacks.Callback):
  """Ends the run after the first epoch, as a kill would."""

  def on_epoch_end(self, epoch, logs=None):
    raise KeyboardInterrupt(f"interrupted after epoch {epoch + 1}")


class _BreakTheCvrTower(keras.callbacks.Callback):
  """Leaves the trained model predicting NaN CVRs, after a finite loss."""

  def on_train_end(self, logs=None):
    bias = self.model.network.get_layer("towers").biases[-1]
    bias.assign(tf.tensor_scatter_nd_update(bias, [[1, 0]], [math.nan]))


class TrainConfigTest(tf.test.TestCase, parameterized.TestCase):

  def test_config_json_round_trip(self):
    model_dir = new_dir()
    config = train_config({"train": "a", "test": "b", "vocab_dir": "v"},
                          model_dir, ground_truth="g.csv")
    model = config_lib.ModelConfig(backbone="dcn", bottom_units=(5, 3))
    evaluation.write_json(
        os.path.join(model_dir, run_dir.CONFIG_FILE),
        run_dir.configs_dict(config, model, LOSS))
    self.assertEqual(run_dir.load_configs(model_dir),
                     {"train": config, "model": model, "loss": LOSS})

  def test_dict_round_trip(self):
    config = train_config({"train": "a", "test": "b", "vocab_dir": "v"}, "m",
                          export_dir="e", early_stopping_patience=2)
    self.assertEqual(training.TrainConfig.from_dict(
        json.loads(json.dumps(config.to_dict()))), config)

  def test_from_dict_rejects_unknown_keys(self):
    values = train_config({"train": "a", "test": "b", "vocab_dir": "v"},
                          "m").to_dict()
    values["epoch"] = 3
    with self.assertRaisesRegex(ValueError, "epoch"):
      training.TrainConfig.from_dict(values)

  def test_early_stopping_watches_the_monitor(self):
    for monitor, improves in (("val_ctcvr_loss", np.less),
                              ("val_auc_cvr", np.greater)):
      config = train_config({"train": "a", "test": "b", "vocab_dir": "v"},
                            early_stopping_patience=3,
                            early_stopping_monitor=monitor)
      callbacks = training._callbacks(config)  # pylint: disable=protected-access
      [stopping] = [callback for callback in callbacks
                    if isinstance(callback, keras.callbacks.EarlyStopping)]
      self.assertEqual((stopping.monitor, stopping.patience), (monitor, 3))
      self.assertIs(stopping.monitor_op, improves)
      self.assertTrue(stopping.restore_best_weights)

  @parameterized.parameters(
      ("epochs", 0), ("batch_size", -1), ("learning_rate", 0.0),
      ("learning_rate", math.inf), ("min_count", 0),
      ("steps_per_execution", 0), ("early_stopping_patience", -1),
      ("max_unknown_id_fraction", 1.5), ("train_data", ""), ("seed", -1))
  def test_rejects_bad_value(self, field, value):
    with self.assertRaises(training.ConfigError) as raised:
      train_config({"train": "a", "test": "b", "vocab_dir": "v"}, "m",
                   **{field: value})
    self.assertEqual(raised.exception.field, field)


class CheckInputsTest(tf.test.TestCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = datasets.make_synthetic_data(
        new_dir())
    cls.configs = {"model": MODEL.to_dict(), "loss": {}}

  def check(self, **overrides):
    overrides.setdefault("model_dir", new_dir())
    config = train_config(self.data, **overrides)
    return training.check_inputs(config, self.configs)

  def assert_rejected(self, field, pattern, **overrides):
    with self.assertRaisesRegex(training.ConfigError, pattern) as raised:
      self.check(**overrides)
    self.assertEqual(raised.exception.field, field)

  def copy_vocab(self, transform=lambda line: line, skip=()):
    directory = new_dir()
    for field in schema.FIELD_NAMES:
      if field in skip:
        continue
      with open(os.path.join(self.data["vocab_dir"], f"{field}.tsv")) as f:
        lines = [transform(line) for line in f]
      with open(os.path.join(directory, f"{field}.tsv"), "w") as f:
        f.writelines(lines)
    return directory

  def test_accepts_matching_inputs(self):
    vocabularies = self.check(ground_truth=self.data["ground_truth_test"])
    self.assertCountEqual(vocabularies, schema.FIELD_NAMES)

  def test_empty_glob(self):
    self.assert_rejected("train_data", "no files match",
                         train_data=self.data["train"] + ".missing")

  def test_missing_eval_data(self):
    self.assert_rejected("eval_data", "no files match",
                         eval_data="/nonexistent/*.tfrecord.gz")

  def test_eval_data_without_records(self):
    directory = new_dir()
    with tf.io.TFRecordWriter(os.path.join(directory, "part.tfrecord.gz"),
                              "GZIP"):
      pass
    self.assert_rejected("eval_data", "hold no records",
                         eval_data=os.path.join(directory, "*.tfrecord.gz"))

  def test_train_data_not_gzip(self):
    path = new_file("plain text, not a GZIP TFRecord")
    self.assert_rejected("train_data", "cannot read", train_data=path)

  def test_missing_vocab_dir(self):
    self.assert_rejected("vocab_dir", "not found", vocab_dir="/nonexistent")

  def test_vocab_dir_lacks_a_field(self):
    self.assert_rejected("vocab_dir", "205",
                         vocab_dir=self.copy_vocab(skip=("205",)))

  def test_vocab_of_other_ids(self):
    shifted = self.copy_vocab(lambda line: "{}\t{}".format(
        int(line.split("\t")[0]) + 10**12, line.split("\t")[1]))
    self.assert_rejected("vocab_dir", "does not belong", vocab_dir=shifted)

  def test_unknown_fraction_threshold(self):
    # Drop the rarer half of field 101's ids: unknown ids appear, within a
    # lenient threshold and beyond a strict one.
    with open(os.path.join(self.data["vocab_dir"], "101.tsv")) as f:
      lines = f.readlines()
    kept = lines[:len(lines) // 2]
    directory = self.copy_vocab(skip=("101",))
    with open(os.path.join(directory, "101.tsv"), "w") as f:
      f.writelines(kept)
    self.check(vocab_dir=directory, max_unknown_id_fraction=0.9)
    self.assert_rejected("vocab_dir", "field 101", vocab_dir=directory,
                         max_unknown_id_fraction=0.0)
    self.check(vocab_dir=directory, vocab_check_examples=0,
               max_unknown_id_fraction=0.0)

  def test_malformed_vocab(self):
    self.assert_rejected(
        "vocab_dir", r"101\.tsv:1",
        vocab_dir=self.copy_vocab(lambda line: "x" + line))

  def test_missing_ground_truth(self):
    self.assert_rejected("ground_truth", "not found",
                         ground_truth="/nonexistent.csv")

  def test_ground_truth_of_other_data(self):
    path = new_file()
    with open(self.data["ground_truth_test"]) as source, open(path, "w") as f:
      rows = list(csv.reader(source))
      csv.writer(f).writerows(rows[:1] + rows[2:])  # Loses one example.
    self.assert_rejected("ground_truth", "no ground-truth row",
                         ground_truth=path)

  def test_model_dir_is_a_file(self):
    self.assert_rejected("model_dir", "not a directory",
                         model_dir=new_file())

  def test_backup_of_another_model(self):
    model_dir = new_dir()
    os.makedirs(os.path.join(model_dir, run_dir.BACKUP_DIR, "chief"))
    with open(os.path.join(model_dir, run_dir.CONFIG_FILE), "w") as f:
      json.dump({"model": {"embedding_dim": 99}, "loss": {}}, f)
    self.assert_rejected("model_dir", "another model", model_dir=model_dir)


class ResumeTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = datasets.make_synthetic_data(
        new_dir())

  def test_resumes_after_interruption(self):
    # Grouped steps also exercise the counted, repeated input.
    config = train_config(self.data, new_dir(), steps_per_execution=2)
    with self.assertRaisesRegex(KeyboardInterrupt, "after epoch 1"):
      training.train(config, MODEL, LOSS, callbacks=[_Interrupt()], verbose=0)
    checkpoints = os.path.join(config.model_dir, run_dir.CHECKPOINT_DIR)
    self.assertTrue(os.path.exists(os.path.join(checkpoints,
                                                "epoch-001.index")))
    self.assertFalse(os.path.exists(os.path.join(checkpoints,
                                                 "epoch-002.index")))
    self.assertNotEmpty(os.listdir(os.path.join(config.model_dir,
                                                run_dir.BACKUP_DIR)))

    result = training.train(config, MODEL, LOSS, verbose=0)

    self.assertEqual(result["epochs"], 1)  # Only the second one was left.
    self.assertTrue(os.path.exists(os.path.join(checkpoints,
                                                "epoch-002.index")))
    # The optimizer's step count carried over: epoch 2 continued from epoch 1.
    def iterations(name):
      return tf.train.load_checkpoint(os.path.join(checkpoints, name)
                                      ).get_tensor(ITERATIONS_KEY)
    self.assertGreater(iterations("epoch-001"), 0)
    self.assertEqual(iterations(run_dir.FINAL_CHECKPOINT),
                     2 * iterations("epoch-001"))
    self.assertTrue(os.path.exists(os.path.join(config.model_dir,
                                                run_dir.METRICS_FILE)))


class NanPredictionTest(tf.test.TestCase):
  """The last net: a model that predicts NaN is neither scored nor exported.

  The NaN-loss stops are tested through the command line (test_train_cli.py)
  and on a parameter-server cluster (test_multiworker.py).
  """

  def test_nan_predictions_stop_before_metrics_and_export(self):
    data = datasets.make_synthetic_data(new_dir())
    config = train_config(data, new_dir(), epochs=1,
                          export_dir=os.path.join(new_dir(), "export"))
    with self.assertRaisesWithLiteralMatch(
        training.TrainingDivergedError,
        "the final model predicts NaN or infinite cvr on eval_data"):
      training.train(config, MODEL, LOSS, callbacks=[_BreakTheCvrTower()],
                     verbose=0)
    self.assertFalse(os.path.exists(os.path.join(config.model_dir,
                                                 run_dir.METRICS_FILE)))
    self.assertFalse(os.path.exists(config.export_dir))


if __name__ == "__main__":
  tf.test.main()
