"""Tests of escm2-evaluate on an export of escm2_tf.training.train."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import csv
import functools
import json
import os

from absl.testing import parameterized
import tensorflow as tf

import datasets
import testing
from escm2_tf import training
from escm2_tf.cli import evaluate as evaluate_cli

GROUND_TRUTH_KEYS = testing.GROUND_TRUTH_METRICS


new_dir = testing.new_dir
run_main = functools.partial(testing.run_main, evaluate_cli.TOOL)


class EvaluateTest(tf.test.TestCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = datasets.make_synthetic_data(new_dir())
    config = testing.tiny_config(
        cls.data, new_dir(), export_dir=os.path.join(new_dir(), "export"),
        ground_truth=cls.data["ground_truth_test"], loss="ipw")
    cls.trained = training.train(config, verbose=0)["metrics"]
    cls.export_dir = config.trainer.export_dir
    cls.training_batch_size = config.trainer.batch_size

  def evaluate(self, **overrides):
    output = os.path.join(new_dir(), "metrics.json")
    values = dict(data=self.data["test"], saved_model=self.export_dir,
                  output=output, ground_truth=self.data["ground_truth_test"],
                  batch_size=300)
    values.update(overrides)
    status, stdout, stderr = run_main(**values)
    return status, stdout, stderr, values["output"]

  def test_matches_the_trainers_metrics(self):
    status, stdout, stderr, output = self.evaluate()
    self.assertEqual(status, 0, stderr)
    with open(output) as f:
      metrics = json.load(f)
    self.assertSetEqual(set(metrics), set(self.trained))
    self.assertContainsSubset(GROUND_TRUTH_KEYS, metrics)
    for name, value in self.trained.items():
      self.assertAlmostEqual(metrics[name], value, delta=1e-6, msg=name)
    for name in metrics:
      self.assertRegex(stdout, rf"(?m)^{name}\s+\S+$")

  def test_in_the_trainers_batches_the_metrics_are_identical(self):
    # A row's float32 prediction may differ in its last bits with its place
    # in a batch (the tail rows of a matrix product), and an AUC over many
    # tied predictions turns that into up to 1e-3; in the same batches
    # the export computes what the trained model did, bit for bit.
    status, _, stderr, output = self.evaluate(
        batch_size=self.training_batch_size)
    self.assertEqual(status, 0, stderr)
    with open(output) as f:
      self.assertEqual(json.load(f), self.trained)

  def test_without_ground_truth(self):
    status, _, stderr, output = self.evaluate(ground_truth="")
    self.assertEqual(status, 0, stderr)
    with open(output) as f:
      metrics = json.load(f)
    self.assertEmpty(GROUND_TRUTH_KEYS & set(metrics))
    self.assertAlmostEqual(metrics["auc_ctr"], self.trained["auc_ctr"],
                           delta=1e-6)

  def test_accepts_a_version_directory(self):
    status, _, stderr, _ = self.evaluate(
        saved_model=os.path.join(self.export_dir, "1"), ground_truth="")
    self.assertEqual(status, 0, stderr)

  def ground_truth_without_one_row(self) -> str:
    path = os.path.join(new_dir(), "ground_truth.csv")
    with open(self.data["ground_truth_test"]) as source, open(path, "w") as f:
      rows = list(csv.reader(source))
      csv.writer(f).writerows(rows[:1] + rows[2:])
    return path

  def bad_header(self) -> str:
    path = os.path.join(new_dir(), "ground_truth.csv")
    with open(path, "w") as f:
      f.write("id,p\n1,0.5\n")
    return path

  @parameterized.named_parameters(
      ("no_data", "data", {"data": "/nonexistent/*.tfrecord.gz"}),
      ("missing_data", "data", {"data": ""}),
      ("not_a_saved_model", "saved_model", {"saved_model": "/nonexistent"}),
      ("no_output_dir", "output", {"output": "/nonexistent/metrics.json"}),
      ("missing_ground_truth", "ground_truth",
       {"ground_truth": "/nonexistent.csv"}),
  )
  def test_rejected(self, flag, overrides):
    self.assert_rejected(flag, **overrides)

  def test_data_without_records(self):
    path = os.path.join(new_dir(), "empty.tfrecord.gz")
    with tf.io.TFRecordWriter(path, "GZIP"):
      pass
    self.assert_rejected("data", data=path)

  def test_ground_truth_of_other_data(self):
    self.assert_rejected("ground_truth",
                         ground_truth=self.ground_truth_without_one_row())

  def test_ground_truth_of_the_training_split(self):
    ground_truth = self.data["ground_truth_train"]
    line = self.assert_rejected("ground_truth", ground_truth=ground_truth)
    self.assertIn(f"{ground_truth} is not the ground truth of "
                  f"{self.data['test']}", line)

  def test_ground_truth_with_other_labels(self):
    path = os.path.join(new_dir(), "ground_truth.csv")
    with open(self.data["ground_truth_test"]) as source, open(path, "w") as f:
      rows = list(csv.reader(source))
      rows[1][-2] = str(1 - int(rows[1][-2]))  # The click of the first row.
      csv.writer(f).writerows(rows)
    line = self.assert_rejected("ground_truth", ground_truth=path)
    # Rows the converter dropped (unclicked conversions) are not joined.
    self.assertRegex(line, r": 1 of \d+ joined rows log other labels \(first "
                     f"sample_id '{rows[1][0]}': ")

  def test_malformed_ground_truth(self):
    self.assert_rejected("ground_truth", ground_truth=self.bad_header())

  def assert_rejected(self, flag, **overrides):
    status, stdout, stderr, output = self.evaluate(**overrides)
    self.assertEqual(status, 2, stdout + stderr)
    lines = stderr.strip().splitlines()
    self.assertLen(lines, 1, stderr)
    self.assertStartsWith(lines[0], f"escm2-evaluate: error: --{flag}:")
    self.assertFalse(os.path.exists(output))
    return lines[0]


if __name__ == "__main__":
  tf.test.main()
