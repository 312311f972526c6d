"""Tests of escm2_tf.fit_policy: escm2-train's policy for model.fit users.

The last test trains twice on the same data and seed, once through
escm2-train and once the quickstart notebook's way (``model.fit`` with the
helpers), and requires the same metrics to the last digit.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import json
import os

import numpy as np
import tensorflow as tf
import tf_keras as keras

import datasets
import testing
from escm2_tf import base_rates as base_rates_lib
from escm2_tf import config as config_lib
from escm2_tf import data
from escm2_tf import data_size
from escm2_tf import early_stopping
from escm2_tf import evaluation
from escm2_tf import fit_policy
from escm2_tf import ground_truth as ground_truth_lib
from escm2_tf import layout
from escm2_tf import model as model_lib
from escm2_tf import optimizers
from escm2_tf import recalibration
from escm2_tf import run_dir
from escm2_tf import schema
from escm2_tf import vocab
from escm2_tf.cli import train as train_cli

new_dir = testing.new_dir
BATCH_SIZE = 256
SEED = 2
EPOCHS = 3


class DefaultsTest(tf.test.TestCase):

  def test_defaults_are_escm2_train_s(self):
    defaults = config_lib.ExperimentConfig.create(
        train_data="t", eval_data="e", vocab_dir="v", model_dir="m")
    self.assertEqual(
        (fit_policy.OPTIMIZER, fit_policy.LEARNING_RATE, fit_policy.EPOCHS,
         fit_policy.MIN_COUNT, fit_policy.VALIDATION_FRACTION,
         fit_policy.PATIENCE, fit_policy.MONITOR),
        (defaults.trainer.optimizer, defaults.trainer.learning_rate,
         defaults.trainer.epochs, defaults.data.min_count,
         defaults.data.validation_fraction,
         defaults.trainer.early_stopping_patience,
         defaults.trainer.early_stopping_monitor))


class HelpersTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = datasets.make_synthetic_data(new_dir())

  def test_base_rates_are_the_converter_counts_of_the_training_data(self):
    stats_path = layout.stats_beside(self.data["vocab_dir"])
    with open(stats_path) as f:
      stats = json.load(f)
    expected = base_rates_lib.BaseRates(
        ctr=stats["clicks"] / stats["rows_written"],
        cvr=stats["conversions"] / stats["clicks"])
    self.assertEqual(fit_policy.base_rates(self.data["vocab_dir"]), expected)
    self.assertEqual(fit_policy.base_rates("/nonexistent/vocab", stats_path),
                     expected)
    with self.assertRaisesRegex(base_rates_lib.StatsError, "/nonexistent"):
      fit_policy.base_rates("/nonexistent/vocab")

  def test_split_holds_out_the_hashed_slice_of_the_training_data(self):
    def ids(dataset):
      return [i for features, _ in dataset
              for i in features[schema.SAMPLE_ID].numpy()]

    training_fn, validation_fn = fit_policy.dataset_fns(
        self.data["train"], 64, seed=1, validation_fraction=0.2)
    training = ids(training_fn(with_sample_id=True))
    validation = ids(validation_fn(with_sample_id=True))
    everything = ids(data.make_dataset(self.data["train"], 64, training=False,
                                       with_sample_id=True))
    self.assertCountEqual(training + validation, everything)
    held_out = data.HashSplit(0.2, validation=True).selects(
        tf.constant(everything)).numpy()
    self.assertCountEqual(validation, np.asarray(everything)[held_out])
    # About a fifth of 2,000 records (a binomial sd of 18).
    self.assertBetween(len(validation), 300, 500)

  def test_split_datasets_yield_the_two_sides(self):
    training, validation = fit_policy.split_datasets(
        self.data["train"], 64, seed=1)
    counts = [sum(int(tf.shape(labels[schema.CLICK])[0])
                  for _, labels in dataset)
              for dataset in (training, validation)]
    self.assertEqual(tuple(counts), data_size.count_split_records(
        self.data["train"], fit_policy.VALIDATION_FRACTION))
    # Their lengths are stated, so Keras ends a pass without a failed step.
    self.assertEqual([int(dataset.cardinality()) for dataset in
                      (training, validation)],
                     [-(-count // 64) for count in counts])

  def test_refit_batches_are_the_trained_on_side(self):
    trained_on, _ = data_size.count_split_records(
        self.data["train"], fit_policy.VALIDATION_FRACTION)
    refit = fit_policy.refit_batches(self.data["train"])
    self.assertEqual(sum(int(labels[schema.CLICK].shape[0])
                         for _, labels in refit), trained_on)

  def test_validation_data_or_nothing(self):
    training_fn, validation_fn = fit_policy.dataset_fns(
        self.data["train"], 64, seed=1, validation_data=self.data["test"])
    self.assertIsNone(training_fn.keywords["split"])
    self.assertEqual(validation_fn.args[0], self.data["test"])
    self.assertIsNone(validation_fn.keywords["split"])
    training_fn, validation_fn = fit_policy.dataset_fns(
        self.data["train"], 64, seed=1, validation_fraction=0.0)
    self.assertIsNone(training_fn.keywords["split"])
    self.assertIsNone(validation_fn)

  def test_stopping_callbacks(self):
    model_dir = new_dir()
    stopper, checkpoint = fit_policy.stopping_callbacks(model_dir, patience=2)
    self.assertIsInstance(stopper, early_stopping.ResumableEarlyStopping)
    self.assertEqual((stopper.monitor, stopper.patience),
                     (fit_policy.MONITOR, 2))
    self.assertEqual(stopper.checkpoint_path(2), os.path.join(
        model_dir, run_dir.CHECKPOINT_DIR, "epoch-003"))
    self.assertIsInstance(checkpoint, keras.callbacks.ModelCheckpoint)
    (only,) = fit_policy.stopping_callbacks(model_dir, patience=0)
    self.assertIsInstance(only, keras.callbacks.ModelCheckpoint)


class SameAsEscm2TrainTest(tf.test.TestCase):
  """The quickstart's way and escm2-train: the same metrics, exactly.

  Both run in this process, one after the other, on the same data, seed,
  optimizer, batch size and epochs: the same ops on the same values in the
  same order. TensorFlow's CPU kernels used here are deterministic (two
  escm2-train runs agree exactly, tests/test_train_cli.py), so the metrics
  must agree bit for bit; any difference is a difference of policy.
  """

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = datasets.make_synthetic_data(new_dir())
    cls.model_config = testing.TINY_MODEL
    cls.loss_config = config_lib.LossConfig(loss="ipw")

  def _cli_run(self, epochs: int) -> tuple[dict[str, float], str]:
    """escm2-train's metrics.json and what it printed."""
    model_dir = new_dir()
    model = self.model_config
    status, stdout, stderr = testing.run_main(
        train_cli.TOOL, train_data=self.data["train"],
        eval_data=self.data["test"], vocab_dir=self.data["vocab_dir"],
        ground_truth=self.data["ground_truth_test"], model_dir=model_dir,
        loss=self.loss_config.loss, epochs=epochs, batch_size=BATCH_SIZE,
        seed=SEED, embedding_dim=model.embedding_dim,
        num_experts=model.num_experts,
        expert_units=[str(u) for u in model.expert_units],
        tower_units=[str(u) for u in model.tower_units], verbose=0,
        # Every id of the tiny data is rarer than the default min_count;
        # op determinism is process-wide and other tests share the process.
        min_count=1, deterministic=False)
    self.assertEqual(status, 0, stdout + stderr)
    with open(os.path.join(model_dir, run_dir.METRICS_FILE)) as f:
      return json.load(f), stdout

  def _fit_run(self, epochs: int, rates_policy: bool = True
               ) -> tuple[dict[str, float], tuple[int, int]]:
    """The quickstart's way: its metrics, the epochs run, the best epoch."""
    keras.utils.set_random_seed(SEED)
    vocabularies = vocab.load_vocabularies(self.data["vocab_dir"], 1)
    rates = (fit_policy.base_rates(self.data["vocab_dir"]) if rates_policy
             else None)
    model = model_lib.build_model(self.model_config, self.loss_config,
                                  vocabularies, base_rates=rates, seed=SEED)
    model.compile(optimizer=optimizers.make_optimizer(
        fit_policy.OPTIMIZER, fit_policy.LEARNING_RATE))
    training, validation = fit_policy.split_datasets(
        self.data["train"], BATCH_SIZE, seed=SEED)
    stopper, checkpoint = fit_policy.stopping_callbacks(new_dir())
    history = model.fit(training, validation_data=validation, epochs=epochs,
                        verbose=0, callbacks=[stopper, checkpoint])
    if rates_policy:
      recalibration.recalibrate(
          model, validation, rates,
          training=fit_policy.refit_batches(self.data["train"]))
    predictions = evaluation.predict_keras_model(model, self.data["test"],
                                                 BATCH_SIZE)
    ground_truth = self.data["ground_truth_test"]
    metrics = evaluation.compute_metrics(
        predictions, ground_truth_lib.read_ground_truth(ground_truth),
        ground_truth)
    return evaluation.json_metrics(metrics), (len(history.epoch),
                                              stopper.best_epoch + 1)

  def test_model_fit_with_the_helpers_matches_escm2_train(self):
    expected, printed = self._cli_run(EPOCHS)
    metrics, (epochs, best_epoch) = self._fit_run(EPOCHS)
    self.assertEqual(metrics, expected)
    self.assertIn("cvr_bias", metrics)
    # On this data both stop before EPOCHS and restore an earlier epoch's
    # weights: the stop and the restore are compared too.
    self.assertLess(best_epoch, epochs)
    self.assertLess(epochs, EPOCHS)
    self.assertIn(f"Trained {epochs} epoch(s), ended with the weights of "
                  f"epoch {best_epoch};", printed)
    # Without the base-rate start and the recalibration the same run ends
    # elsewhere: the comparison above can tell a policy apart.
    without, _ = self._fit_run(EPOCHS, rates_policy=False)
    self.assertNotEqual(without["cvr_bias"], expected["cvr_bias"])


if __name__ == "__main__":
  tf.test.main()
