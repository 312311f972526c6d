"""Tests of escm2_tf.training: the input checks, resuming, early stopping.

A complete run, determinism and the NaN stop are tested through the CLI, in
test_train_cli.py.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import csv
import glob
import json
import math
import os
import re
import shutil

from absl.testing import parameterized
import numpy as np
import tensorflow as tf
import tf_keras as keras

import datasets
import testing
from escm2_tf import config as config_lib
from escm2_tf import data_size
from escm2_tf import early_stopping
from escm2_tf import evaluation
from escm2_tf import fit_policy
from escm2_tf import layout
from escm2_tf import schema
from escm2_tf import training
from escm2_tf.options import ConfigError
from escm2_tf import run_dir
from escm2_tf import run_inputs

BATCH_SIZE = 256
# A small network: the tests are about the loop around it.
MODEL = testing.TINY_MODEL
ITERATIONS_KEY = "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"


def train_config(data: dict[str, str], model_dir: str = "model",
                 **overrides) -> config_lib.ExperimentConfig:
  return testing.tiny_config(
      data, model_dir, model=MODEL, loss="dr",
      **{"epochs": 2, "batch_size": BATCH_SIZE, "seed": 3, **overrides})


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


class _Record(keras.callbacks.Callback):
  """Keeps every epoch's logs; kills the run after ``interrupt_after``."""

  def __init__(self, interrupt_after: int | None = None):
    super().__init__()
    self.logs = []
    self.interrupt_after = interrupt_after

  def on_epoch_end(self, epoch, logs=None):
    self.logs.append(dict(logs))
    if self.interrupt_after == epoch + 1:
      raise KeyboardInterrupt(f"interrupted after epoch {epoch + 1}")


class _KillWhenStopping(_Record):
  """Kills the run right after the epoch at which early stopping stopped."""

  def on_epoch_end(self, epoch, logs=None):
    super().on_epoch_end(epoch, logs)
    if self.model.stop_training:
      raise KeyboardInterrupt(f"killed after stopping at epoch {epoch + 1}")


def network_weights(checkpoint: str) -> dict[str, np.ndarray]:
  """The network's variables in a checkpoint of the whole model."""
  reader = tf.train.load_checkpoint(checkpoint)
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if name.startswith("network/")}


class _BreakTheCvrTower(keras.callbacks.Callback):
  """Leaves the trained model predicting NaN CVRs, after a finite loss."""

  def on_train_end(self, logs=None):
    bias = self.model.network.get_layer("towers").biases[-1]
    bias.assign(tf.tensor_scatter_nd_update(bias, [[1, 0]], [math.nan]))


class TrainConfigTest(tf.test.TestCase, parameterized.TestCase):

  def test_config_json_round_trip(self):
    model_dir = new_dir()
    config = train_config({"train": "a", "test": "b", "vocab_dir": "v"},
                          model_dir, ground_truth="g.csv", backbone="dcn",
                          bottom_units=(5, 3))
    evaluation.write_json(os.path.join(model_dir, run_dir.CONFIG_FILE),
                          config.to_dict())
    self.assertEqual(run_dir.load_config(model_dir), config)

  def test_config_of_another_version_is_one_line(self):
    model_dir = new_dir()
    evaluation.write_json(os.path.join(model_dir, run_dir.CONFIG_FILE),
                          {"model": {}, "loss": {}, "train": {}})
    with self.assertRaisesRegex(
        ValueError, r"config\.json: not an escm2-train config \(unknown "
        r"ExperimentConfig field\(s\): train\)$"):
      run_dir.load_config(model_dir)

  def test_early_stopping_watches_the_monitor(self):
    for monitor, mode in (("val_ctcvr_loss", "min"), ("val_auc_cvr", "max")):
      config = train_config({"train": "a", "test": "b", "vocab_dir": "v"},
                            early_stopping_patience=3,
                            early_stopping_monitor=monitor)
      callbacks = training._callbacks(config)  # pylint: disable=protected-access
      [stopping] = [callback for callback in callbacks if isinstance(
          callback, early_stopping.ResumableEarlyStopping)]
      self.assertEqual((stopping.monitor, stopping.patience), (monitor, 3))
      self.assertEqual(early_stopping.monitor_mode(monitor), mode)
      # Its state and the epoch's checkpoint, from which it restores the
      # best weights, are written before the epoch's backup.
      types = [type(c) for c in callbacks]
      backup = types.index(keras.callbacks.BackupAndRestore)
      self.assertLess(callbacks.index(stopping), backup)
      self.assertLess(types.index(keras.callbacks.ModelCheckpoint), backup)

  def test_early_stopping_on_by_default(self):
    config = train_config({"train": "a", "test": "b", "vocab_dir": "v"},
                          epochs=config_lib.TrainerConfig.epochs)
    self.assertGreater(config.trainer.early_stopping_patience, 0)
    self.assertGreater(config.trainer.epochs,
                       config.trainer.early_stopping_patience)
    self.assertTrue(config.trainer.base_rate_init)
    self.assertEqual(config.data.validation_data, "")
    self.assertBetween(config.data.validation_fraction, 0.01, 0.5)

  def test_validation_is_never_the_evaluation_data(self):
    data = {"train": "a", "test": "b", "vocab_dir": "v"}
    (train, train_split), (held_out, split) = run_inputs.sources(
        train_config(data, validation_fraction=0.2))
    self.assertEqual((train, held_out), ("a", "a"))
    self.assertEqual((train_split.fraction, train_split.validation),
                     (0.2, False))
    self.assertEqual((split.fraction, split.validation), (0.2, True))
    self.assertEqual(run_inputs.sources(
        train_config(data, validation_data="c")), (("a", None), ("c", None)))
    # Without early stopping nothing is held out unless asked for.
    self.assertEqual(run_inputs.sources(
        train_config(data, early_stopping_patience=0)), (("a", None), None))
    self.assertEqual(run_inputs.sources(
        train_config(data, early_stopping_patience=0, validation_data="c")),
                     (("a", None), ("c", None)))

  def test_early_stopping_off(self):
    config = train_config({"train": "a", "test": "b", "vocab_dir": "v"},
                          early_stopping_patience=0)
    self.assertFalse([
        c for c in training._callbacks(config)  # pylint: disable=protected-access
        if isinstance(c, early_stopping.ResumableEarlyStopping)])

  @parameterized.parameters(
      ("epochs", 0), ("batch_size", -1), ("learning_rate", 0.0),
      ("learning_rate", math.inf), ("min_count", 0),
      ("steps_per_execution", 0), ("early_stopping_patience", -1),
      ("max_unknown_id_fraction", 1.5), ("train_data", ""), ("seed", -1),
      ("validation_fraction", 0.0), ("validation_fraction", -0.1),
      ("validation_fraction", 0.51), ("validation_fraction", 1.0),
      ("validation_fraction", True))
  def test_rejects_bad_value(self, field, value):
    with self.assertRaises(ConfigError) as raised:
      train_config({"train": "a", "test": "b", "vocab_dir": "v"}, "m",
                   **{field: value})
    self.assertEqual(raised.exception.field, field)


class CheckInputsTest(tf.test.TestCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = datasets.make_synthetic_data(
        new_dir())

  def check(self, **overrides):
    overrides.setdefault("model_dir", new_dir())
    config = train_config(self.data, **overrides)
    return training.check_inputs(config)

  def assert_rejected(self, field, pattern, **overrides):
    with self.assertRaisesRegex(ConfigError, pattern) as raised:
      self.check(**overrides)
    self.assertEqual(raised.exception.field, field)

  def copy_vocab(self, transform=lambda line: line, skip=()):
    """A converted directory's vocab/ (changed), with its stats.json."""
    directory = layout.vocab_dir(new_dir())
    os.makedirs(directory)
    shutil.copy(layout.stats_beside(self.data["vocab_dir"]),
                os.path.dirname(directory))
    for field in schema.FIELD_NAMES:
      if field in skip:
        continue
      with open(layout.vocabulary_file(self.data["vocab_dir"], field)) as f:
        lines = [transform(line) for line in f]
      with open(layout.vocabulary_file(directory, field), "w") as f:
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
                         eval_data=layout.examples_glob(directory))

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
    self.assert_rejected("ground_truth", "1 of .* examples have no row in it",
                         ground_truth=path)

  def test_ground_truth_of_the_training_split(self):
    ground_truth = self.data["ground_truth_train"]
    self.assert_rejected(
        "ground_truth", f"{re.escape(ground_truth)} is not the ground truth "
        f"of {re.escape(self.data['test'])}: ", ground_truth=ground_truth)

  def test_validation_data_matches_nothing(self):
    self.assert_rejected("validation_data", "no files match",
                         validation_data="/nonexistent/*.tfrecord.gz")

  @parameterized.parameters("train", "test")
  def test_validation_data_shares_files(self, split):
    # The same files under another spelling of the glob count as shared.
    directory = os.path.dirname(self.data[split])
    glob_ = os.path.join(directory, ".", "*.tfrecord.gz")
    self.assert_rejected(
        "validation_data",
        f"shares {len(glob.glob(self.data[split]))} file.*with "
        f"{'train_data' if split == 'train' else 'eval_data'}",
        validation_data=glob_)

  def test_separate_validation_data_accepted(self):
    directory = new_dir()
    shutil.copy(glob.glob(self.data["test"])[0], directory)
    self.check(validation_data=layout.examples_glob(directory))

  def test_missing_stats_file(self):
    self.assert_rejected("stats_file", "nonexistent.json not found",
                         stats_file="/nonexistent.json")

  def test_no_stats_beside_vocab_dir(self):
    directory = self.copy_vocab()
    os.remove(layout.stats_beside(directory))
    self.assert_rejected("stats_file", "stats.json not found.*escm2-convert",
                         vocab_dir=directory)
    # Without the base-rate start and the recalibration nothing needs it.
    self.assert_rejected("stats_file", "stats.json not found",
                         vocab_dir=directory, base_rate_init=False)
    self.check(vocab_dir=directory, base_rate_init=False, recalibrate=False)

  def test_stats_file_without_counts(self):
    self.assert_rejected("stats_file", "no usable",
                         stats_file=new_file('{"rows_written": 10}'))

  def test_trainer_refuses_label_propensities(self):
    model_dir = os.path.join(new_dir(), "model")
    with self.assertRaisesRegex(ConfigError, "p_click") as raised:
      training.train(train_config(self.data, model_dir, propensity="label"),
                     verbose=0)
    self.assertEqual(raised.exception.field, "propensity")
    self.assertFalse(os.path.exists(model_dir))

  def test_model_dir_is_a_file(self):
    self.assert_rejected("model_dir", "not a directory",
                         model_dir=new_file())

  def test_backup_of_another_model(self):
    model_dir = new_dir()
    os.makedirs(os.path.join(model_dir, run_dir.BACKUP_DIR, "chief"))
    with open(os.path.join(model_dir, run_dir.CONFIG_FILE), "w") as f:
      json.dump({"model": {"embedding_dim": 99}, "loss": {}}, f)
    self.assert_rejected("model_dir", "another model", model_dir=model_dir)


# A learning rate at which the id embeddings memorise the small training set
# within an epoch or two: the validation loss then rises. The final weights are
# compared with the best epoch's bit for bit, so the recalibration's shift of
# the output biases is off here (tests/test_recalibration.py checks that the
# final biases are the best epoch's plus the shift).
OVERFIT = dict(learning_rate=0.03, epochs=8, early_stopping_patience=2,
               recalibrate=False)
MONITOR = config_lib.TrainerConfig.early_stopping_monitor


class EarlyStoppingTest(tf.test.TestCase):
  """Real fits that overfit: the run must end on its best epoch."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = datasets.make_synthetic_data(new_dir())

  def assert_ends_on_epoch(self, model_dir: str, best: int, last: int):
    checkpoints = os.path.join(model_dir, run_dir.CHECKPOINT_DIR)
    final = network_weights(os.path.join(checkpoints,
                                          run_dir.FINAL_CHECKPOINT))
    chosen = network_weights(os.path.join(checkpoints, f"epoch-{best:03d}"))
    self.assertSameElements(final, chosen)
    for name in final:
      self.assertAllEqual(final[name], chosen[name], msg=name)
    if best != last:
      overfit = network_weights(os.path.join(checkpoints,
                                             f"epoch-{last:03d}"))
      self.assertNotAllClose(final[next(iter(final))],
                             overfit[next(iter(final))])

  def test_restores_the_best_epoch(self):
    config = train_config(self.data, new_dir(), **OVERFIT)
    record = _Record()
    result = training.train(config, callbacks=[record],
                            verbose=0)
    monitored = [logs[MONITOR] for logs in record.logs]
    best = int(np.argmin(monitored)) + 1
    # It overfit, stopped patience epochs after the best, and kept the best.
    self.assertLess(len(monitored), config.trainer.epochs)
    self.assertLen(monitored, best + config.trainer.early_stopping_patience)
    self.assertEqual(result["best_epoch"], best)
    self.assert_ends_on_epoch(config.trainer.model_dir, best, len(monitored))
    # The evaluation scored the restored weights, not the last epoch's.
    self.assertEqual(result["epochs"], len(monitored))
    self.assertFalse(os.path.exists(os.path.join(
        config.trainer.model_dir, run_dir.BACKUP_DIR,
        early_stopping.STATE_FILE)))

  def test_resume_keeps_the_early_stopping_state(self):
    config = train_config(self.data, new_dir(), **OVERFIT)
    before = _Record(interrupt_after=2)
    with self.assertRaisesRegex(KeyboardInterrupt, "after epoch 2"):
      training.train(config, callbacks=[before], verbose=0)
    monitored = [logs[MONITOR] for logs in before.logs]
    # The premise: the best epoch is behind the kill, and one more bad
    # epoch exhausts the patience.
    self.assertEqual(int(np.argmin(monitored)), 0, monitored)
    state = os.path.join(config.trainer.model_dir, run_dir.BACKUP_DIR,
                         early_stopping.STATE_FILE)
    with open(state) as f:
      self.assertEqual(json.load(f)["epochs"]["1"]["best_epoch"], 0)

    after = _Record()
    result = training.train(config, callbacks=[after],
                            verbose=0)

    monitored += [logs[MONITOR] for logs in after.logs]
    best = int(np.argmin(monitored)) + 1
    self.assertEqual(best, 1)
    # Without the state the resumed run would wait patience epochs afresh
    # and end on one of its own epochs.
    self.assertEqual(result["epochs"], 1)
    self.assertEqual(result["best_epoch"], best)
    self.assert_ends_on_epoch(config.trainer.model_dir, best, len(monitored))

  def test_kill_after_stopping_still_ends_on_the_best_epoch(self):
    config = train_config(self.data, new_dir(), **OVERFIT)
    before = _KillWhenStopping()
    with self.assertRaisesRegex(KeyboardInterrupt, "after stopping"):
      training.train(config, callbacks=[before], verbose=0)
    monitored = [logs[MONITOR] for logs in before.logs]
    best = int(np.argmin(monitored)) + 1
    result = training.train(config, verbose=0)
    # Keras runs one batch before it sees the stop; that epoch counts for
    # nothing and the run ends as the uninterrupted one would have.
    self.assertEqual(result["epochs"], 1)
    self.assertEqual(result["best_epoch"], best)
    self.assert_ends_on_epoch(config.trainer.model_dir, best,
                              len(monitored) + 1)

  def test_off_trains_every_epoch_on_all_the_data(self):
    config = train_config(self.data, new_dir(), early_stopping_patience=0,
                          epochs=2)
    result = training.train(config, verbose=0)
    self.assertEqual(result["epochs"], 2)
    self.assertIsNone(result["best_epoch"])
    self.assertFalse([name for name in result["history"]
                      if name.startswith("val_")])

  def test_state_of_a_redone_epoch_is_ignored(self):
    # A kill after the state of an epoch was written but before its backup:
    # the resumed run redoes the epoch from the state before it.
    config = train_config(self.data, new_dir(), **OVERFIT)
    with self.assertRaises(KeyboardInterrupt):
      training.train(config, callbacks=[_Record(interrupt_after=1)], verbose=0)
    state = os.path.join(config.trainer.model_dir, run_dir.BACKUP_DIR,
                         early_stopping.STATE_FILE)
    with open(state) as f:
      content = json.load(f)
    content["epochs"]["1"] = {"best": -1.0, "best_epoch": 1, "wait": 0,
                              "stopped": False}
    with open(state, "w") as f:
      json.dump(content, f)
    record = _Record()
    result = training.train(config, callbacks=[record],
                            verbose=0)
    # Had the forged state been used, nothing would have beaten its -1.0
    # and the run would end on epoch 2.
    monitored = [content["epochs"]["0"]["best"]] + [
        logs[MONITOR] for logs in record.logs]
    self.assertEqual(result["best_epoch"], int(np.argmin(monitored)) + 1)


class ResumeTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = datasets.make_synthetic_data(
        new_dir())

  def test_resumes_after_interruption(self):
    # Grouped steps also exercise the counted input.
    config = train_config(self.data, new_dir(), steps_per_execution=2)
    with self.assertRaisesRegex(KeyboardInterrupt, "after epoch 1"):
      training.train(config, callbacks=[_Interrupt()], verbose=0)
    checkpoints = os.path.join(config.trainer.model_dir, run_dir.CHECKPOINT_DIR)
    self.assertTrue(os.path.exists(os.path.join(checkpoints,
                                                "epoch-001.index")))
    self.assertFalse(os.path.exists(os.path.join(checkpoints,
                                                 "epoch-002.index")))
    self.assertNotEmpty(os.listdir(os.path.join(config.trainer.model_dir,
                                                run_dir.BACKUP_DIR)))

    result = training.train(config, verbose=0)

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
    self.assertTrue(os.path.exists(os.path.join(config.trainer.model_dir,
                                                run_dir.METRICS_FILE)))


# 1800 training records in batches of 32: 57 steps an epoch, one group of 32
# and a partial one; at this rate the run stops after epoch 5 and restores 4.
GROUPED_STEPS_RUN = dict(batch_size=32, learning_rate=0.003, epochs=6,
                         early_stopping_patience=1)


def grouped_steps_config(data: dict[str, str], steps_per_execution: int
                         ) -> config_lib.ExperimentConfig:
  return train_config(data, new_dir(), steps_per_execution=steps_per_execution,
                      **GROUPED_STEPS_RUN)


def run_to_the_end(config: config_lib.ExperimentConfig) -> tuple[dict, str]:
  return training.train(config, verbose=0), config.trainer.model_dir


class GroupedStepsTest(tf.test.TestCase):
  """steps_per_execution changes the cost of a run, never what it learns."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = datasets.make_synthetic_data(new_dir())
    training_split, _ = fit_policy.held_out_split()
    cls.steps = math.ceil(data_size.count_records(
        cls.data["train"], training_split) / GROUPED_STEPS_RUN["batch_size"])
    cls.single = run_to_the_end(grouped_steps_config(cls.data, 1))
    cls.grouped = run_to_the_end(grouped_steps_config(cls.data, 32))

  def killed_and_resumed(self, steps_per_execution: int) -> tuple[dict, str]:
    config = grouped_steps_config(self.data, steps_per_execution)
    with self.assertRaisesRegex(KeyboardInterrupt, "after epoch 2"):
      training.train(config, callbacks=[_Record(interrupt_after=2)],
                     verbose=0)
    return run_to_the_end(config)

  def assert_same_run(self, run, reference):
    (result, model_dir), (expected, expected_dir) = run, reference
    self.assertEqual(result["best_epoch"], expected["best_epoch"])
    self.assertEqual(result["history"], expected["history"])
    self.assertEqual(result["metrics"], expected["metrics"])
    final = os.path.join(run_dir.CHECKPOINT_DIR, run_dir.FINAL_CHECKPOINT)
    weights = network_weights(os.path.join(model_dir, final))
    expected_weights = network_weights(os.path.join(expected_dir, final))
    for name, value in expected_weights.items():
      self.assertAllEqual(weights[name], value, msg=name)

  def assert_one_pass_per_epoch(self, model_dir: str):
    for epoch in range(1, 3):
      checkpoint = os.path.join(model_dir, run_dir.CHECKPOINT_DIR,
                                f"epoch-{epoch:03d}")
      self.assertEqual(tf.train.load_checkpoint(checkpoint).get_tensor(
          ITERATIONS_KEY), epoch * self.steps)

  def test_the_premise(self):
    self.assertGreater(self.steps, 32)
    self.assertNotEqual(self.steps % 32, 0)
    result, _ = self.single
    self.assertLess(result["best_epoch"], result["epochs"])

  def test_grouped_steps_train_as_single_steps(self):
    self.assert_same_run(self.grouped, self.single)
    self.assert_one_pass_per_epoch(self.grouped[1])

  def test_a_last_group_of_one_step(self):
    self.assertEqual(self.steps % 8, 1)
    self.assert_same_run(run_to_the_end(grouped_steps_config(self.data, 8)),
                         self.single)

  def test_single_steps_count_no_step_at_the_end_of_the_data(self):
    self.assert_one_pass_per_epoch(self.single[1])

  def test_resumed_grouped_run_matches_a_resumed_single_step_run(self):
    grouped = self.killed_and_resumed(32)
    single = self.killed_and_resumed(1)
    # The resumed run ends on a best epoch that it restored.
    self.assertLess(grouped[0]["best_epoch"], 2 + grouped[0]["epochs"])
    self.assert_same_run(grouped, single)
    self.assert_one_pass_per_epoch(grouped[1])

  def test_metrics_are_those_of_the_final_checkpoint(self):
    result, model_dir = self.grouped
    config = run_dir.load_config(model_dir)
    predictions = evaluation.predict_keras_model(
        run_dir.restore_model(model_dir), config.data.eval_data,
        config.trainer.batch_size)
    self.assertEqual(evaluation.json_metrics(
        evaluation.compute_metrics(predictions)), result["metrics"])


class _TracingCounts(keras.callbacks.Callback):
  """The traces of fit's training and validation functions, at both ends."""

  def __init__(self):
    super().__init__()
    self.counts = {}

  def _count(self, moment: str):
    self.counts[moment] = tuple(
        None if function is None else
        function.experimental_get_tracing_count()
        for function in (self.model.train_tf_function,
                         self.model.test_function))

  def on_train_begin(self, logs=None):
    self._count("begin")

  def on_train_end(self, logs=None):
    self._count("end")


class StepTracingTest(tf.test.TestCase, parameterized.TestCase):
  """The trainer traces fit's steps once, before the first epoch."""

  @parameterized.parameters(1, 32)
  def test_steps_are_traced_before_fit_and_never_again(
      self, steps_per_execution):
    data = datasets.make_synthetic_data(new_dir())
    counts = _TracingCounts()
    result = training.train(
        train_config(data, new_dir(), epochs=2,
                     steps_per_execution=steps_per_execution),
        callbacks=[counts], verbose=0)
    self.assertEqual(result["epochs"], 2)
    # Without the tracing ahead of fit, Keras makes its training function
    # before on_train_begin but traces it at its first step: 0 here.
    self.assertEqual(counts.counts, {"begin": (1, 1), "end": (1, 1)})


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
      training.train(config, callbacks=[_BreakTheCvrTower()],
                     verbose=0)
    self.assertFalse(os.path.exists(os.path.join(config.trainer.model_dir,
                                                 run_dir.METRICS_FILE)))
    self.assertFalse(os.path.exists(config.trainer.export_dir))


if __name__ == "__main__":
  tf.test.main()
