"""Tests of benchmarks/level_estimates.py: its figures and a kept model."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import importlib.util
import os

from absl.testing import absltest
import numpy as np

import datasets
import testing
from escm2_tf import data_size
from escm2_tf import training
from escm2_tf.options import ConfigError


def _script():
  path = os.path.join(testing.REPO, "benchmarks", "level_estimates.py")
  spec = importlib.util.spec_from_file_location("level_estimates", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


class SplitFiguresTest(absltest.TestCase):

  def test_against_hand_computed_values(self):
    # Four impressions: two clicks (one converts), ô clipped at 0.1.
    figures = _script().split_figures(
        clicked=np.array([1, 1, 0, 0]), converted=np.array([1, 0, 0, 0]),
        pctr=np.array([0.5, 0.05, 0.2, 0.2], np.float32),
        true_ctr=np.array([0.25, 0.25, 0.4, 0.1], np.float32),
        pcvr=np.array([0.3, 0.1, 0.1, 0.3], np.float32),
        true_cvr=np.array([0.2, 0.2, 0.2, 0.2], np.float32),
        propensity_clip=0.1)
    self.assertEqual(figures["impressions"], 4)
    self.assertAlmostEqual(figures["ctr_on_clicks"], 0.275 / 0.25, places=6)
    self.assertAlmostEqual(figures["ctr_off_clicks"], 0.2 / 0.25, places=6)
    inverse_mass = (1 / 0.5 + 1 / 0.1) / 4
    self.assertAlmostEqual(figures["inverse_mass"], inverse_mass)
    self.assertAlmostEqual(figures["inverse_mass_true"], 2 / 0.25 / 4)
    # Relative to the float32 truth 0.2.
    self.assertAlmostEqual(figures["ips"], (1 / 0.5) / 4 / 0.2 - 1, places=6)
    self.assertAlmostEqual(figures["snips"],
                           (1 / 0.5) / 4 / inverse_mass / 0.2 - 1, places=6)
    self.assertAlmostEqual(figures["ips_true"], (1 / 0.25) / 4 / 0.2 - 1,
                           places=6)
    self.assertAlmostEqual(figures["pcvr"], 0.2 / 0.2 - 1, places=6)
    # The converted click: 1/0.5 against 1/0.25; the other: 1/0.1 (clipped)
    # against 1/0.25.
    self.assertAlmostEqual(figures["weight_converted"], 2 / 4, places=6)
    self.assertAlmostEqual(figures["weight_unconverted"], 10 / 4, places=6)
    # The truth is one value: no correlation with it.
    self.assertEqual(figures["true_logit_sd"], 0.0)
    self.assertTrue(np.isnan(figures["logit_corr"]))

  def test_logit_figures_against_hand_computed_values(self):
    # pCVR logits 0, 2, 1 against true logits -1, 1, 1.
    sigmoid = lambda z: 1 / (1 + np.exp(-np.array(z, np.float64)))
    figures = _script().split_figures(
        clicked=np.array([1, 0, 1]), converted=np.array([1, 0, 0]),
        pctr=np.full(3, 0.5), true_ctr=np.full(3, 0.5),
        pcvr=sigmoid([0, 2, 1]), true_cvr=sigmoid([-1, 1, 1]),
        propensity_clip=0.1)
    self.assertAlmostEqual(figures["logit_gap"], 2 / 3)
    self.assertAlmostEqual(figures["logit_sd"], np.sqrt(2 / 3))
    self.assertAlmostEqual(figures["true_logit_sd"], np.sqrt(8 / 9))
    # Covariance 2/3 over sqrt(2/3 * 8/9).
    self.assertAlmostEqual(figures["logit_corr"], np.sqrt(3) / 2)


class KnownUsersTest(absltest.TestCase):

  def test_a_user_is_known_if_it_has_a_training_record(self):
    known = _script().known_users(train_users=np.array([5, 7, -1, 5]),
                                  test_users=np.array([5, 8, -1, 7, 9]))
    # A record without a user id (-1) is never known, even if training
    # records without one exist.
    np.testing.assert_array_equal(known, [True, False, False, True, False])


class KeptModelTest(absltest.TestCase):

  def test_every_split_of_a_trained_model(self):
    # 150 users: the test split holds users with and without training
    # records.
    data = datasets.make_synthetic_data(testing.new_dir(), num_users=150)
    model_dir = testing.new_dir()
    training.train(testing.tiny_config(data, model_dir, loss="ipw",
                                       export_dir=""), verbose=0)
    script = _script()
    rows = script.model_rows(data["directory"], model_dir)
    self.assertEqual([row["split"] for row in rows],
                     ["train", "held_out", "test", "test_known_users",
                      "test_new_users"])
    _, train_users = script.user_ids(data["train"])
    _, test_users = script.user_ids(data["test"])
    trained_users = set(train_users)
    self.assertEqual(rows[3]["impressions"],
                     sum(user in trained_users for user in test_users))
    self.assertEqual(rows[3]["impressions"] + rows[4]["impressions"],
                     rows[2]["impressions"])
    # The held-out slice is a tenth of the training records.
    num_train = data_size.count_records(data["train"])
    self.assertEqual(rows[0]["impressions"] + rows[1]["impressions"],
                     num_train)
    self.assertBetween(rows[1]["impressions"], 0.05 * num_train,
                       0.15 * num_train)
    self.assertEqual(rows[2]["impressions"],
                     data_size.count_records(data["test"]))
    for row in rows:
      self.assertTrue(all(np.isfinite(v) for k, v in row.items()
                          if k not in ("model_dir", "split")), row)
      # The truth is the simulator's, not the model's: an untuned tiny
      # model's pCVR is off it, and true propensities are positive.
      self.assertGreater(row["inverse_mass_true"], 0.0)
      self.assertGreater(row["true_cvr"], 0.0)


class CrossFittedTest(absltest.TestCase):

  def test_every_training_record_is_scored_by_the_model_that_left_it_out(self):
    data = datasets.make_synthetic_data(testing.new_dir())
    work_dir = testing.new_dir()
    script = _script()
    row = script.cross_fitted_row(data["directory"], work_dir, folds=2,
                                  loss="ipw")
    folds = [os.path.join(work_dir, f"fold{k}.tfrecord.gz") for k in (0, 1)]
    sizes = [data_size.count_records(path) for path in folds]
    self.assertEqual(row["impressions"], data_size.count_records(data["train"]))
    self.assertEqual(sum(sizes), row["impressions"])
    self.assertTrue(all(size > 0 for size in sizes), sizes)
    for k in (0, 1):
      trained_on = os.listdir(os.path.join(work_dir, f"train{k}"))
      self.assertEqual(trained_on, [os.path.basename(folds[1 - k])])
    self.assertEqual(row["split"], "out_of_fold")
    self.assertTrue(np.isfinite(row["ips"]) and np.isfinite(row["snips"]))

  def test_flags_name_what_is_missing(self):
    flags = _script().LevelFlags
    with self.assertRaisesRegex(ConfigError, "^model_dir: .*unless --folds"):
      flags(data_dir="d")
    with self.assertRaisesRegex(ConfigError, "^folds: must be 0 or at least 2"):
      flags(data_dir="d", folds=1, work_dir="w")
    with self.assertRaisesRegex(ConfigError, "^work_dir: is required"):
      flags(data_dir="d", folds=2)


if __name__ == "__main__":
  absltest.main()
