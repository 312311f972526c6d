"""Tests of escm2-train: a complete run, flag checks, determinism, NaN stop."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import functools
import glob
import json
import os
import shutil

from absl import flags
from absl.testing import parameterized
import numpy as np
import tensorflow as tf

import datasets
import testing
from escm2_tf import config as config_lib
from escm2_tf import flagbind
from escm2_tf import layout
from escm2_tf import schema
from escm2_tf.cli import train as train_cli
from escm2_tf import run_dir

FLAGS = flags.FLAGS
REPO = testing.REPO
EPOCHS = 2
# The names metrics.evaluate_predictions documents (docs/DESIGN.md).
METRIC_KEYS = {
    "auc_ctr", "auc_cvr", "auc_cvr_all", "auc_ctcvr", "logloss_ctr",
    "logloss_cvr", "logloss_ctcvr", "calibration_ctr", "calibration_cvr",
    "calibration_ctcvr", "count", "clicks", "conversions"}
GROUND_TRUTH_KEYS = testing.GROUND_TRUTH_METRICS


new_dir = testing.new_dir
# Runs escm2-train's main; returns its status, stdout and stderr.
run_main = functools.partial(testing.run_main, train_cli.TOOL)


def run_flags(data: dict[str, str], model_dir: str, **overrides):
  """Flags for a small, fast run on ``data``."""
  values = dict(
      train_data=data["train"], eval_data=data["test"],
      vocab_dir=data["vocab_dir"], model_dir=model_dir, loss="dr",
      epochs=EPOCHS, batch_size=256, seed=5, embedding_dim=4, num_experts=2,
      expert_units=["8"], tower_units=["4"], verbose=0,
      # Every id of the tiny data is rarer than the default min_count.
      min_count=1,
      # Op determinism is process-wide; the CPU kernels here are
      # deterministic without it, and other tests share this process.
      deterministic=False)
  values.update(overrides)
  return values


def read_labels(file_pattern: str) -> dict[str, np.ndarray]:
  """click and conversion of every record, parsed here."""
  spec = {name: schema.feature_spec()[name] for name in schema.LABELS}
  values = {name: [] for name in schema.LABELS}
  for path in sorted(glob.glob(file_pattern)):
    for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
      parsed = tf.io.parse_single_example(record, spec)
      for name in schema.LABELS:
        values[name].append(int(parsed[name]))
  return {name: np.asarray(v) for name, v in values.items()}


def scalar_tags(log_dir: str) -> list[str]:
  tags = []
  for path in glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.extend(value.tag for value in event.summary.value)
  return tags


class CompleteRunTest(tf.test.TestCase):
  """One run with export and ground truth; its outputs, checked one by one."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = datasets.make_synthetic_data(new_dir())
    cls.model_dir = new_dir()
    cls.export_dir = os.path.join(new_dir(), "export")
    cls.flags = run_flags(cls.data, cls.model_dir, export_dir=cls.export_dir,
                          ground_truth=cls.data["ground_truth_test"])
    cls.status, cls.stdout, cls.stderr = run_main(**cls.flags)
    with open(os.path.join(cls.model_dir, run_dir.METRICS_FILE)) as f:
      cls.metrics = json.load(f)

  def test_succeeds_and_prints_the_metrics(self):
    self.assertEqual(self.status, 0, self.stderr)
    self.assertIn(f"Trained {EPOCHS} epoch(s)", self.stdout)
    self.assertRegex(self.stdout, r"auc_cvr\s+0\.\d{6}")
    self.assertIn(os.path.join(self.export_dir, "1"), self.stdout)

  def test_checkpoint_per_epoch_and_final_is_latest(self):
    checkpoints = os.path.join(self.model_dir, run_dir.CHECKPOINT_DIR)
    for epoch in range(1, EPOCHS + 1):
      self.assertTrue(os.path.exists(os.path.join(
          checkpoints, f"epoch-{epoch:03d}.index")), epoch)
    self.assertEqual(os.path.basename(tf.train.latest_checkpoint(checkpoints)),
                     run_dir.FINAL_CHECKPOINT)

  def test_backup_removed_after_completion(self):
    backup = os.path.join(self.model_dir, run_dir.BACKUP_DIR)
    self.assertFalse(os.path.isdir(backup) and os.listdir(backup))

  def test_tensorboard_logs_every_epoch(self):
    for split in ("train", "validation"):
      tags = scalar_tags(os.path.join(self.model_dir, run_dir.LOG_DIR, split))
      self.assertEqual(tags.count("epoch_loss"), EPOCHS, split)

  def test_config_json_holds_the_flags(self):
    config = run_dir.load_config(self.model_dir)
    self.assertEqual(config.model.expert_units, (8,))
    self.assertEqual(config.runtime.seed, self.flags["seed"])
    self.assertEqual(config.loss, config_lib.LossConfig(loss="dr"))
    self.assertEqual(config.data.eval_data, self.data["test"])
    self.assertEqual(config.trainer.epochs, EPOCHS)

  def test_metrics_keys_and_ranges(self):
    self.assertSetEqual(set(self.metrics), METRIC_KEYS | GROUND_TRUTH_KEYS)
    labels = read_labels(self.data["test"])
    self.assertEqual(self.metrics["count"], len(labels[schema.CLICK]))
    self.assertEqual(self.metrics["clicks"], labels[schema.CLICK].sum())
    self.assertEqual(self.metrics["conversions"],
                     labels[schema.CONVERSION].sum())
    for name, value in self.metrics.items():
      if name.startswith("auc_"):
        self.assertBetween(value, 0.0, 1.0)
      if name.startswith(("logloss_", "calibration_")):
        self.assertGreater(value, 0.0)
    self.assertBetween(self.metrics["cvr_bias"], -1.0, 1.0)
    self.assertBetween(self.metrics["true_cvr_mean"], 0.0, 1.0)

  def test_exported_with_metrics(self):
    version = os.path.join(self.export_dir, "1")
    self.assertTrue(os.path.exists(os.path.join(version, "saved_model.pb")))
    with open(os.path.join(version, "assets.extra", "metrics.json")) as f:
      self.assertEqual(json.load(f), self.metrics)

  def test_lazy_adam_trains(self):
    model_dir = new_dir()
    status, _, stderr = run_main(**dict(
        self.flags, model_dir=model_dir, export_dir="", optimizer="lazy_adam"))
    self.assertEqual(status, 0, stderr)
    with open(os.path.join(model_dir, "config.json")) as f:
      self.assertEqual(json.load(f)["trainer"]["optimizer"], "lazy_adam")
    with open(os.path.join(model_dir, run_dir.METRICS_FILE)) as f:
      metrics = json.load(f)
    # The same seed and data as Adam's run: other weights, so the optimizer
    # flag reached the model (LazyAdam's update itself: test_optimizers.py).
    self.assertNotEqual(metrics["auc_ctr"], self.metrics["auc_ctr"])
    self.assertEqual(metrics["count"], self.metrics["count"])

  def test_same_seed_same_metrics(self):
    model_dir = new_dir()
    status, _, stderr = run_main(**dict(
        self.flags, model_dir=model_dir, export_dir=""))
    self.assertEqual(status, 0, stderr)
    with open(os.path.join(model_dir, run_dir.METRICS_FILE)) as f:
      self.assertEqual(json.load(f), self.metrics)


class FlagErrorTest(tf.test.TestCase, parameterized.TestCase):
  """Each bad flag: exit status 2, one line naming it, and no work done."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = datasets.make_synthetic_data(new_dir())
    cls.bad_vocab = new_dir()
    for field in schema.FIELD_NAMES:
      with open(os.path.join(cls.data["vocab_dir"], f"{field}.tsv")) as f:
        ids = [line.split("\t") for line in f]
      with open(os.path.join(cls.bad_vocab, f"{field}.tsv"), "w") as f:
        # Another id space, as a vocabulary of other data would have.
        f.writelines(f"{int(i) + 10**12}\t{count}" for i, count in ids)

  def assert_rejected(self, flag, **overrides):
    model_dir = os.path.join(new_dir(), "model")
    status, stdout, stderr = run_main(**run_flags(self.data, model_dir,
                                                  **overrides))
    self.assertEqual(status, 2, stdout + stderr)
    lines = stderr.strip().splitlines()
    self.assertLen(lines, 1, stderr)
    self.assertStartsWith(lines[0], f"escm2-train: error: --{flag}:")
    self.assertFalse(os.path.exists(model_dir))

  @parameterized.named_parameters(
      ("empty_train_glob", "train_data", {"train_data": "/nonexistent/*.gz"}),
      ("missing_train_data", "train_data", {"train_data": ""}),
      ("empty_eval_glob", "eval_data", {"eval_data": "/nonexistent/*.gz"}),
      ("missing_vocab_dir", "vocab_dir", {"vocab_dir": "/nonexistent"}),
      ("missing_ground_truth", "ground_truth",
       {"ground_truth": "/nonexistent.csv"}),
      ("zero_epochs", "epochs", {"epochs": 0}),
      ("negative_learning_rate", "learning_rate", {"learning_rate": -0.1}),
      ("zero_experts", "num_experts", {"num_experts": 0}),
      ("non_integer_units", "expert_units", {"expert_units": ["8", "x"]}),
      ("paper_option_under_paddlerec", "propensity_clip",
       {"compat": "paddlerec", "propensity_clip": 0.5}),
      ("dr_jl_under_paddlerec", "loss",
       {"compat": "paddlerec", "loss": "dr_jl"}),
      ("mrdr_under_paddlerec", "loss", {"compat": "paddlerec", "loss": "mrdr"}),
      ("dropout_out_of_range", "dropout", {"dropout": 1.5}),
      ("monitor_not_validation", "early_stopping_monitor",
       {"early_stopping_monitor": "loss"}),
      ("monitor_unknown", "early_stopping_monitor",
       {"early_stopping_monitor": "val_accuracy",
        "early_stopping_patience": 1}),
      ("validation_fraction_zero", "validation_fraction",
       {"validation_fraction": 0.0}),
      ("validation_fraction_above_half", "validation_fraction",
       {"validation_fraction": 0.6}),
      ("validation_fraction_negative", "validation_fraction",
       {"validation_fraction": -0.1}),
      ("empty_validation_glob", "validation_data",
       {"validation_data": "/nonexistent/*.gz"}),
      ("missing_stats_file", "stats_file",
       {"stats_file": "/nonexistent/stats.json"}),
      ("label_propensities", "propensity", {"propensity": "label"}),
      ("negative_seed", "seed", {"seed": -1}),
  )
  def test_rejected(self, flag, overrides):
    self.assert_rejected(flag, **overrides)

  def test_vocab_of_other_data(self):
    self.assert_rejected("vocab_dir", vocab_dir=self.bad_vocab)

  @parameterized.parameters("train", "test")
  def test_validation_data_shared_with_training_or_evaluation(self, split):
    self.assert_rejected("validation_data",
                         validation_data=self.data[split])

  def test_no_stats_beside_the_vocabulary(self):
    vocab_dir = layout.vocab_dir(new_dir())
    shutil.copytree(self.data["vocab_dir"], vocab_dir)
    self.assert_rejected("stats_file", vocab_dir=vocab_dir)
    # The message says where the file was looked for and how to do without.
    _, _, stderr = run_main(**run_flags(self.data, new_dir(),
                                        vocab_dir=vocab_dir))
    self.assertIn(layout.stats_beside(vocab_dir),
                  stderr)
    self.assertIn("--nobase_rate_init --norecalibrate", stderr)

  def test_vocab_missing_a_field(self):
    vocab_dir = new_dir()
    for field in schema.FIELD_NAMES[1:]:
      with open(os.path.join(vocab_dir, f"{field}.tsv"), "w") as f:
        f.write("1\t1\n")
    self.assert_rejected("vocab_dir", vocab_dir=vocab_dir)

  def test_unknown_loss_is_refused_by_the_flag_parser(self):
    with testing.tool_flags(train_cli.TOOL):
      with self.assertRaisesRegex(flags.IllegalFlagValueError, "--loss"):
        FLAGS["loss"].parse("esmm2")

  def test_unknown_loss_is_refused_by_main(self):
    self.assert_rejected("loss", loss="esmm2")

  def test_unknown_loss_exits_non_zero_from_the_command_line(self):
    result = testing.run_subprocess(testing.python_command(
        "from escm2_tf.cli import train; train.run()", "--loss=esmm2"),
                                    tf_log_level="3")
    self.assertNotEqual(result.returncode, 0)
    self.assertIn("--loss=esmm2", result.stderr)


class NanTest(tf.test.TestCase):

  def test_huge_learning_rate_stops_with_a_message(self):
    data = datasets.make_synthetic_data(new_dir())
    model_dir = new_dir()
    status, _, stderr = run_main(**run_flags(data, model_dir,
                                             learning_rate=1e38))
    self.assertEqual(status, 1)
    self.assertRegex(stderr, r"escm2-train: error: training stopped: the "
                     r"training loss became NaN or infinite in epoch 1")
    # No checkpoint of the broken weights, no metrics.
    self.assertEmpty(glob.glob(os.path.join(
        model_dir, run_dir.CHECKPOINT_DIR, "*.index")))
    self.assertFalse(os.path.exists(os.path.join(model_dir,
                                                 run_dir.METRICS_FILE)))


class FlagfileTest(tf.test.TestCase, parameterized.TestCase):

  def parse(self, name: str) -> dict:
    """The configs of escm2-train --flagfile=configs/<name>."""
    binding = flagbind.Binding(*train_cli.TOOL.binding.sections,
                               flag_values=flags.FlagValues()).define()
    binding.flag_values(["escm2-train", "--flagfile=" + os.path.join(
        REPO, "configs", name)])
    return train_cli.TOOL.build(binding)

  @parameterized.parameters(("demo.flags", "dr"), ("bigdata.flags", "dr"),
                            ("paddlerec.flags", "dr"))
  def test_parses_into_configs(self, name, loss):
    config = self.parse(name)["experiment"]
    self.assertEqual(config.loss.loss, loss)
    self.assertNotEmpty(config.trainer.export_dir)

  def test_paddlerec_hyperparameters(self):
    config = self.parse("paddlerec.flags")["experiment"]
    train, model, loss = config.trainer, config.model, config.loss
    self.assertEqual((train.batch_size, train.epochs, train.learning_rate),
                     (1024, 10, 1e-3))
    self.assertEqual((model.embedding_dim, model.backbone, model.num_experts,
                      model.expert_units, model.tower_units),
                     (12, "mmoe", 8, (16,), (8,)))
    self.assertEqual((loss.compat, loss.lambda_g, loss.lambda_c),
                     ("paddlerec", 0.5, 0.5))
    # PaddleRec trains every epoch on all the data from zero output biases,
    # keeps the biases it trained, and has a row for every id.
    self.assertEqual((train.early_stopping_patience, train.base_rate_init,
                      train.recalibrate, config.data.min_count),
                     (0, False, False, 1))

  def test_demo_stops_early_on_held_out_training_data(self):
    config = self.parse("demo.flags")["experiment"]
    # Early stopping ends the run; the validation slice comes out of the
    # training data, never the evaluation data.
    self.assertGreater(config.trainer.early_stopping_patience, 0)
    self.assertEqual(config.data.validation_data, "")
    self.assertTrue(config.trainer.base_rate_init)
    self.assertStartsWith(config.data.train_data, "demo_output/")
    self.assertNotEmpty(config.data.ground_truth)


if __name__ == "__main__":
  tf.test.main()
