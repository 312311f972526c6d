"""Tests of escm2_tf.metrics against brute-force and numpy expectations."""

import escm2_tf  # pylint: disable=unused-import  # Legacy Keras before TF.

import json
import math
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from escm2_tf import metrics
from escm2_tf import ranking
from escm2_tf import schema


def pairwise_auc(labels, scores):
  """O(n^2) AUC: the share of (positive, negative) pairs ranked right."""
  labels, scores = np.asarray(labels), np.asarray(scores)
  pos, neg = scores[labels == 1], scores[labels == 0]
  if pos.size == 0 or neg.size == 0:
    return math.nan
  wins = 0.0
  for p in pos:
    for n in neg:
      wins += 1.0 if p > n else 0.5 if p == n else 0.0
  return wins / (pos.size * neg.size)


def np_log_loss(y, p, eps=1e-7):
  p = np.clip(np.asarray(p, np.float64), eps, 1 - eps)
  return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def binned_error(predictions, truth, num_bins):
  """Count-weighted mean |mean prediction - mean truth| in quantile bins.

  Bin i holds the predictions in [edge_i, edge_i+1), the last bin its top.
  """
  edges = np.quantile(predictions, np.linspace(0, 1, num_bins + 1))
  total = 0.0
  for i, (low, high) in enumerate(zip(edges[:-1], edges[1:])):
    members = (predictions >= low) & (
        (predictions <= high) if i == num_bins - 1 else (predictions < high))
    if members.any():
      total += members.sum() * abs(predictions[members].mean()
                                   - truth[members].mean())
  return total / predictions.size


class ExactAucTest(parameterized.TestCase):

  @parameterized.parameters((0, 50, 3), (1, 200, 10), (2, 301, 1000),
                            (3, 120, 2))
  def test_matches_pairwise_count_with_ties(self, seed, n, levels):
    rng = np.random.default_rng(seed)
    # Few distinct score levels force many ties across the classes.
    scores = rng.integers(0, levels, n) / levels
    labels = (rng.random(n) < 0.2 + 0.5 * scores).astype(np.int64)
    self.assertAlmostEqual(metrics.exact_auc(labels, scores),
                           pairwise_auc(labels, scores), places=12)

  def test_known_values(self):
    self.assertEqual(metrics.exact_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]), 1)
    self.assertEqual(metrics.exact_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]), 0)
    self.assertEqual(metrics.exact_auc([1, 0, 1, 0], [0.5] * 4), 0.5)
    # Pairs: 0.8 > 0.3, 0.8 > 0.5, 0.5 > 0.3, 0.5 = 0.5 -> 3.5 / 4.
    self.assertAlmostEqual(
        metrics.exact_auc([1, 0, 1, 0], [0.8, 0.3, 0.5, 0.5]), 0.875)

  @parameterized.parameters(([1, 1, 1],), ([0, 0],), ([],))
  def test_one_class_is_nan(self, labels):
    self.assertTrue(math.isnan(metrics.exact_auc(labels, [0.3] * len(labels))))

  @parameterized.named_parameters(
      ("non_binary", [0, 2, 1], [0.1, 0.2, 0.3], "labels must be 0/1"),
      ("nan_score", [0, 1, 1], [0.1, math.nan, 0.3], "scores has 1 non-finite"),
      ("size", [0, 1], [0.1, 0.2, 0.3], "labels has 2 values"),
  )
  def test_bad_input(self, labels, scores, message):
    with self.assertRaisesRegex(ValueError, message):
      metrics.exact_auc(labels, scores)


class LogLossCalibrationTest(parameterized.TestCase):

  def test_log_loss_matches_numpy_with_clipping(self):
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 100)
    predictions = np.concatenate([[0.0, 1.0, 0.0, 1.0], rng.random(96)])
    labels[:4] = [0, 1, 1, 0]
    got = metrics.log_loss(labels, predictions)
    self.assertAlmostEqual(got, np_log_loss(labels, predictions), places=10)
    self.assertTrue(math.isfinite(got))
    self.assertTrue(math.isnan(metrics.log_loss([], [])))

  def test_calibration(self):
    self.assertAlmostEqual(metrics.calibration([0, 1, 0, 0], [0.5, 0.1, 0.2,
                                                              0.0]),
                           0.2 / 0.25)
    self.assertTrue(math.isnan(metrics.calibration([0, 0], [0.1, 0.2])))


class EvaluatePredictionsTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(7)
    n = 400
    self.truth = {"p_click": rng.uniform(0.05, 0.5, n),
                  "p_conversion": rng.uniform(0.05, 0.6, n)}
    self.click = (rng.random(n) < self.truth["p_click"]).astype(np.int64)
    self.truth["conversion_counterfactual"] = (
        rng.random(n) < self.truth["p_conversion"]).astype(np.int64)
    self.conversion = self.click * self.truth["conversion_counterfactual"]
    self.ctr = np.clip(self.truth["p_click"] + rng.normal(0, 0.1, n), 0.01,
                       0.99).astype(np.float32)
    self.cvr = np.clip(self.truth["p_conversion"] + rng.normal(0, 0.2, n),
                       0.01, 0.99).astype(np.float32)
    self.ctcvr = self.ctr * self.cvr

  def evaluate(self, **kwargs):
    return metrics.evaluate_predictions(self.click, self.conversion, self.ctr,
                                        self.cvr, self.ctcvr, **kwargs)

  def test_values_match_independent_computation(self):
    got = self.evaluate(ground_truth=self.truth)
    c = self.click == 1
    y_ctcvr = self.click * self.conversion
    expected = {
        "auc_ctr": pairwise_auc(self.click, self.ctr),
        "auc_cvr": pairwise_auc(self.conversion[c], self.cvr[c]),
        "auc_cvr_all": pairwise_auc(self.conversion, self.cvr),
        "auc_ctcvr": pairwise_auc(y_ctcvr, self.ctcvr),
        "logloss_ctr": np_log_loss(self.click, self.ctr),
        "logloss_cvr": np_log_loss(self.conversion[c], self.cvr[c]),
        "logloss_ctcvr": np_log_loss(y_ctcvr, self.ctcvr),
        "calibration_ctr": self.ctr.mean() / self.click.mean(),
        "calibration_cvr": self.cvr[c].mean() / self.conversion[c].mean(),
        "calibration_ctcvr": self.ctcvr.mean() / y_ctcvr.mean(),
        "count": 400, "clicks": self.click.sum(),
        "conversions": self.conversion.sum(),
        "cvr_bias": self.cvr.mean() - self.truth["p_conversion"].mean(),
        "cvr_bias_clicked": (self.cvr[c].mean() -
                             self.truth["p_conversion"][c].mean()),
        "auc_cvr_truth": pairwise_auc(self.truth["conversion_counterfactual"],
                                      self.cvr),
        "true_cvr_mean": self.truth["p_conversion"].mean(),
        "calibration_cvr_truth": (self.cvr[c].mean() /
                                  self.truth["p_conversion"][c].mean()),
        "calibration_ctr_truth": self.ctr.mean() / self.truth["p_click"].mean(),
        "calibration_ctcvr_truth": self.ctcvr.mean() / (
            self.truth["p_click"] * self.truth["p_conversion"]).mean(),
        "auc_ctr_oracle": pairwise_auc(self.click, self.truth["p_click"]),
        "ctr_calibration_error": binned_error(
            self.ctr, self.truth["p_click"], 10)
                                 / self.truth["p_click"].mean(),
        "ips_true_cvr": (np.sum(self.truth["p_conversion"][c] / self.ctr[c])
                         / np.sum(1 / self.ctr[c])),
        "ips_true_cvr_oracle": (
            np.sum(self.truth["p_conversion"][c] / self.truth["p_click"][c])
            / np.sum(1 / self.truth["p_click"][c])),
    }
    self.assertCountEqual(got.keys(), expected.keys())
    for key, value in expected.items():
      self.assertIs(type(got[key]), float, key)
      self.assertAlmostEqual(got[key], float(value), places=5, msg=key)
    # The clicked-only CVR AUC is a different number from PaddleRec's.
    self.assertNotAlmostEqual(got["auc_cvr"], got["auc_cvr_all"], places=3)
    json.loads(json.dumps(got))

  @parameterized.parameters(5, 64, 1 << 20)
  def test_float32_columns_in_chunks_equal_float64_in_memory(self, chunk):
    # Scores on 20 levels: runs of ties inside chunks and across their ends.
    rng = np.random.default_rng(chunk)
    n = 2000
    click = (rng.random(n) < 0.3).astype(np.float32)
    conversion = click * (rng.random(n) < 0.4).astype(np.float32)
    scores = {name: (rng.integers(1, 20, n) / 20).astype(np.float32)
              for name in schema.OUTPUT_NAMES}
    with mock.patch.object(ranking, "CHUNK", chunk):
      got = metrics.evaluate_predictions(click, conversion, **scores)
    y = {"ctr": click.astype(np.float64),
         "ctcvr": (click * conversion).astype(np.float64)}
    wide = {name: values.astype(np.float64) for name, values in scores.items()}
    c = click == 1
    expected = {
        "auc_cvr": pairwise_auc(conversion[c], wide["cvr"][c]),
        "auc_cvr_all": pairwise_auc(conversion, wide["cvr"]),
        "logloss_cvr": np_log_loss(conversion[c], wide["cvr"][c]),
        "calibration_cvr": (wide["cvr"][c].mean()
                            / conversion[c].astype(np.float64).mean()),
        "clicks": click.sum(), "conversions": conversion.sum()}
    for task in ("ctr", "ctcvr"):
      expected.update({
          f"auc_{task}": pairwise_auc(y[task], wide[task]),
          f"logloss_{task}": np_log_loss(y[task], wide[task]),
          f"calibration_{task}": wide[task].mean() / y[task].mean()})
    for key, value in expected.items():
      self.assertAlmostEqual(got[key], float(value), delta=1e-12, msg=key)

  def test_truth_calibration_without_p_click(self):
    truth = {k: v for k, v in self.truth.items() if k != "p_click"}
    got = self.evaluate(ground_truth=truth)
    self.assertIn("calibration_cvr_truth", got)
    self.assertNotIn("calibration_ctr_truth", got)
    self.assertNotIn("calibration_ctcvr_truth", got)

  def test_oracle_propensities_recover_the_entire_space_cvr(self):
    # Weighting clicks by the true 1/p_click undoes the selection; weighting
    # by a flat pCTR leaves the clicked impressions' CVR.
    rng = np.random.default_rng(3)
    n = 200_000
    score = rng.standard_normal(n)
    p_click = 1 / (1 + np.exp(-(score - 3)))
    p_conversion = 1 / (1 + np.exp(-(score - 2)))
    click = (rng.random(n) < p_click).astype(np.int64)
    got = metrics.propensity_metrics(click, np.full(n, p_click.mean()),
                                     p_click, p_conversion)
    clicked = click == 1
    self.assertAlmostEqual(got["ips_true_cvr_oracle"], p_conversion.mean(),
                           delta=0.05 * p_conversion.mean())
    self.assertAlmostEqual(got["ips_true_cvr"],
                           p_conversion[clicked].mean(), places=9)
    self.assertGreater(got["ips_true_cvr"], 1.5 * p_conversion.mean())
    # A constant pCTR is one bin, calibrated; a flattened one is not.
    self.assertAlmostEqual(got["ctr_calibration_error"], 0.0)
    flat = p_click.mean() + 0.2 * (p_click - p_click.mean())
    flattened = metrics.propensity_metrics(click, flat, p_click, p_conversion)
    self.assertGreater(flattened["ctr_calibration_error"], 0.3)
    self.assertBetween(flattened["ips_true_cvr"], got["ips_true_cvr_oracle"],
                       got["ips_true_cvr"])
    perfect = metrics.propensity_metrics(click, p_click, p_click,
                                         p_conversion)
    self.assertAlmostEqual(perfect["ctr_calibration_error"], 0.0)

  def test_without_ground_truth_or_clicks(self):
    self.click = np.zeros_like(self.click)
    self.conversion = np.zeros_like(self.conversion)
    got = self.evaluate()
    self.assertNotIn("cvr_bias", got)
    for key in ("auc_ctr", "auc_cvr", "auc_cvr_all", "logloss_cvr",
                "calibration_ctr", "calibration_cvr"):
      self.assertTrue(math.isnan(got[key]), key)
    self.assertEqual(got["clicks"], 0.0)
    self.assertTrue(math.isfinite(got["logloss_ctr"]))

  def test_length_mismatch_names_arrays(self):
    self.cvr = self.cvr[:-1]
    with self.assertRaisesRegex(ValueError, "ctr=400, cvr=399"):
      self.evaluate()

  def test_missing_ground_truth_key(self):
    del self.truth["conversion_counterfactual"]
    with self.assertRaisesRegex(ValueError, "conversion_counterfactual"):
      self.evaluate(ground_truth=self.truth)


if __name__ == "__main__":
  absltest.main()
