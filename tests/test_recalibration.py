"""Tests of escm2_tf.recalibration and of the trainer's recalibration."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import math
import os

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

import datasets
import testing
from escm2_tf import base_rates
from escm2_tf import config as config_lib
from escm2_tf import data
from escm2_tf import evaluation
from escm2_tf import layout
from escm2_tf import model as model_lib
from escm2_tf import recalibration
from escm2_tf import run_dir
from escm2_tf import training
from escm2_tf import vocab

# Standard errors a calibrated model's mean may stray from a sample's rate.
TOLERANCE_SE = 4.0


def newton_shift(logits: np.ndarray, rate: float,
                 weights: np.ndarray | None = None) -> float:
  """An independent solution: Newton's method on the weighted mean - rate."""
  weights = np.ones_like(logits) if weights is None else weights
  shift = 0.0
  for _ in range(100):
    p = 1.0 / (1.0 + np.exp(-(logits + shift)))
    shift -= (np.average(p, weights=weights) - rate) / np.average(
        p * (1.0 - p), weights=weights)
  return shift


def rate_tolerance(rate: float, *counts: int) -> float:
  """TOLERANCE_SE binomial standard errors of a difference of rates."""
  return TOLERANCE_SE * math.sqrt(rate * (1 - rate) *
                                  sum(1.0 / n for n in counts))


class LogitShiftTest(tf.test.TestCase):

  def test_matches_newton(self):
    logits = np.random.default_rng(0).normal(-2.0, 1.5, size=5000)
    for rate in (0.001, 0.04, 0.3, 0.9):
      shift = recalibration.logit_shift(logits, rate)
      self.assertAllClose(shift, newton_shift(logits, rate), atol=1e-9)
      mean = (1.0 / (1.0 + np.exp(-(logits + shift)))).mean()
      self.assertAllClose(mean, rate, rtol=1e-9)

  def test_weighted_matches_newton(self):
    rng = np.random.default_rng(1)
    logits = rng.normal(-3.0, 1.0, size=5000)
    weights = rng.uniform(0.0, 1.0, size=5000) * (rng.random(5000) < 0.3)
    for rate in (0.01, 0.2):
      shift = recalibration.logit_shift(logits, rate, weights)
      self.assertAllClose(shift, newton_shift(logits, rate, weights),
                          atol=1e-9)
    # Zero weights do not count: the same shift as the weighted subset.
    kept = weights > 0
    self.assertAllClose(
        recalibration.logit_shift(logits, 0.05, kept.astype(float)),
        recalibration.logit_shift(logits[kept], 0.05), atol=1e-12)

  def test_calibrated_logits_need_no_shift(self):
    logits = np.full(10, math.log(0.04 / 0.96))
    self.assertAllClose(recalibration.logit_shift(logits, 0.04), 0.0,
                        atol=1e-9)

  def test_rejects_empty_logits_and_bad_rates(self):
    with self.assertRaisesRegex(ValueError, "at least one logit"):
      recalibration.logit_shift(np.zeros(0), 0.1)
    with self.assertRaisesRegex(ValueError, "positive weight"):
      recalibration.logit_shift(np.zeros(3), 0.1, np.zeros(3))
    for rate in (0.0, 1.0, -0.1):
      with self.assertRaisesRegex(ValueError, "rate in"):
        recalibration.logit_shift(np.zeros(3), rate)


class CvrWeightsTest(tf.test.TestCase, parameterized.TestCase):
  """The CVR level each estimator's risk fixes."""

  CTR = np.array([0.1, 0.2, 0.3])
  CLICKED = np.array([True, False, True])

  def test_naive_weighs_the_clicks(self):
    self.assertAllEqual(
        recalibration.cvr_weights("naive", self.CTR, self.CLICKED),
        [1.0, 0.0, 1.0])

  def test_esmm_weighs_by_pctr(self):
    self.assertAllEqual(
        recalibration.cvr_weights("esmm", self.CTR, self.CLICKED), self.CTR)

  @parameterized.parameters("ipw", "dr", "dr_jl", "mrdr")
  def test_counterfactual_estimators_keep_their_level(self, loss):
    self.assertIsNone(
        recalibration.cvr_weights(loss, self.CTR, self.CLICKED))

  def test_unknown_loss(self):
    with self.assertRaisesRegex(ValueError, "unknown loss 'bpr'"):
      recalibration.cvr_weights("bpr", self.CTR, self.CLICKED)


def numpy_risk_scaling(z: np.ndarray, row_gradient) -> tuple[float, float]:
  """An independent solution: Newton's method on [z, 1] with a given

  per-impression derivative of the risk in the logit, row_gradient(p);
  every estimator's second derivative in the logit is p(1 - p).
  """
  params = np.array([1.0, 0.0])
  design = np.stack([z, np.ones_like(z)], axis=1)
  for _ in range(100):
    p = 1.0 / (1.0 + np.exp(-(design @ params)))
    gradient = design.T @ row_gradient(p)
    hessian = design.T @ (design * (p * (1.0 - p))[:, None])
    params -= np.linalg.solve(hessian, gradient)
  return tuple(params)


def scored_world(size: int = 100_000, seed: int = 0):
  """A flat, noisy model's logits in a world whose clicks favour conversions.

  The model's logit z is (t - 1) / 2.5 plus noise, t the true CVR logit; the
  click propensity rises with t, so among impressions of equal z the clicked
  ones convert more often. Returns (Scored, true CVR of every impression).
  """
  rng = np.random.default_rng(seed)
  truth = rng.normal(-3.0, 1.0, size)
  z = (truth - 1.0) / 2.5 + rng.normal(0.0, 0.3, size)
  p_click = 1.0 / (1.0 + np.exp(-(-2.5 + 1.2 * (truth + 3.0))))
  p_conversion = 1.0 / (1.0 + np.exp(-truth))
  click = (rng.random(size) < p_click).astype(np.float32)
  conversion = (rng.random(size) < p_conversion).astype(np.float32)
  pctr = np.clip(p_click * rng.uniform(0.8, 1.25, size), 1e-4, 1 - 1e-4)
  pseudo_label = 1.0 / (1.0 + np.exp(-(z + rng.normal(0.0, 0.5, size))))
  cvr = 1.0 / (1.0 + np.exp(-z))
  outputs = {"ctr": pctr, "cvr": cvr, "ctcvr": pctr * cvr,
             "imputation": pseudo_label}
  labels = {"click": click, "conversion": conversion, "p_click": p_click,
            "sample_id": np.array([b"%d" % i for i in range(size)])}
  logits = np.stack([np.log(pctr / (1 - pctr)), z, z], axis=1)
  return (recalibration.Scored(logits.astype(np.float32),
                               {k: v.astype(np.float32)
                                for k, v in outputs.items()}, labels),
          p_conversion)


class _ScoredWorldTest(tf.test.TestCase, parameterized.TestCase):
  """``scored_world``'s impressions and their IPS weights."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.scored, cls.p_conversion = scored_world()

  def weights(self, config: config_lib.LossConfig) -> np.ndarray:
    labels, outputs = self.scored.labels, self.scored.outputs
    propensity = (labels["p_click"] if config.propensity == "label"
                  else outputs["ctr"])
    return labels["click"] / np.maximum(propensity, config.propensity_clip)


class RiskScalingTest(_ScoredWorldTest):
  """The CVR refit minimises each estimator's own risk (losses.py)."""

  @parameterized.parameters(
      ("ipw", "model"), ("ipw", "label"), ("dr", "model"))
  def test_ips_estimators_solve_the_weighted_platt_condition(
      self, loss, propensity):
    # R_IPS's and (the imputation held fixed) ESCM2-DR's derivative in the
    # logit: o / ô * (p - r).
    config = config_lib.LossConfig(loss=loss, propensity=propensity)
    weights = self.weights(config)
    conversion = self.scored.labels["conversion"]
    expected = numpy_risk_scaling(self.scored.logits[:, 1].astype(float),
                                  lambda p: weights * (p - conversion))
    self.assertAllClose(recalibration.risk_scaling(config, self.scored),
                        expected, atol=2e-4)

  @parameterized.parameters("dr_jl", "mrdr")
  def test_joint_learning_estimators_solve_the_doubly_robust_condition(
      self, loss):
    # ê = BCE(r̃, p), δ = BCE(r, p): the derivative of ê + o·w·(δ − ê) in
    # the logit is (p − r̃) + o·w·(r̃ − r), the same for both.
    config = config_lib.LossConfig(loss=loss)
    weights = self.weights(config)
    conversion = self.scored.labels["conversion"]
    pseudo = self.scored.outputs["imputation"].astype(float)
    expected = numpy_risk_scaling(
        self.scored.logits[:, 1].astype(float),
        lambda p: (p - pseudo) + weights * (pseudo - conversion))
    self.assertAllClose(recalibration.risk_scaling(config, self.scored),
                        expected, atol=2e-4)

  def test_self_normalisation_has_the_same_minimum(self):
    plain = recalibration.risk_scaling(config_lib.LossConfig(loss="ipw"),
                                       self.scored)
    snips = recalibration.risk_scaling(
        config_lib.LossConfig(loss="ipw", self_normalized=True), self.scored)
    self.assertAllClose(snips, plain, atol=2e-4)

  def test_true_propensities_recover_the_entire_space_cvr(self):
    # IPW with the true propensity is unbiased: the refit's mean over every
    # impression meets the true mean within the IPS estimate's sampling
    # error (1.0 of it here), the flat model's slope steepens (1.6). The
    # clicked impressions alone (naive Platt scaling) land 9 of them above.
    config = config_lib.LossConfig(loss="ipw", propensity="label")
    slope, shift = recalibration.risk_scaling(config, self.scored)
    z = self.scored.logits[:, 1].astype(float)
    refit = 1.0 / (1.0 + np.exp(-(slope * z + shift)))
    truth = self.p_conversion.mean()
    conversion = self.scored.labels["conversion"]
    standard_error = np.std(self.weights(config) * conversion) / math.sqrt(
        len(z))
    self.assertLess(abs(refit.mean() - truth), TOLERANCE_SE * standard_error)
    self.assertGreater(slope, 1.5)
    clicked = self.scored.clicked
    naive = numpy_risk_scaling(z[clicked], lambda p: p - conversion[clicked])
    naive_mean = (1.0 / (1.0 + np.exp(-(naive[0] * z + naive[1])))).mean()
    self.assertGreater(naive_mean - truth, 2 * TOLERANCE_SE * standard_error)

  def test_logits_that_barely_vary_get_the_level_alone(self):
    # An untrained tower: a slope beyond MAX_SLOPE would be needed, so only
    # the shift moves, to R_IPS's level condition (weighted means equal).
    flat = np.float32(0.01) * self.scored.logits
    scored = recalibration.Scored(flat, self.scored.outputs,
                                  self.scored.labels)
    config = config_lib.LossConfig(loss="ipw")
    slope, shift = recalibration.risk_scaling(config, scored)
    self.assertEqual(slope, 1.0)
    weights = self.weights(config)
    self.assertAllClose(
        shift, newton_shift(flat[:, 1].astype(float),
                            np.average(self.scored.labels["conversion"],
                                       weights=weights), weights),
        atol=1e-4)

  @parameterized.product(refit=("risk_scaling", "counterfactual_refit"),
                          value=(np.nan, np.inf))
  def test_a_diverged_model_is_left_alone(self, refit, value):
    logits = self.scored.logits.copy()
    logits[7, 1] = value
    scored = recalibration.Scored(logits, self.scored.outputs,
                                  self.scored.labels)
    self.assertEqual(getattr(recalibration, refit)(
        config_lib.LossConfig(loss="ipw"), scored), (1.0, 0.0))

  def test_without_conversions_nothing_moves(self):
    scored = recalibration.Scored(
        self.scored.logits, self.scored.outputs,
        dict(self.scored.labels,
             conversion=np.zeros_like(self.scored.labels["conversion"])))
    self.assertEqual(recalibration.risk_scaling(
        config_lib.LossConfig(loss="ipw"), scored), (1.0, 0.0))


def memorised(scored: recalibration.Scored, up: float, down: float
              ) -> recalibration.Scored:
  """The scores of a tower that memorised its training clicks.

  Each clicked impression's CVR logit moves towards its label (by ``up`` if
  it converted, by ``-down`` if not), as a network's does on the examples
  it was fitted to; the unclicked ones, which the CVR tower has no label
  of, keep their logits.
  """
  logits = scored.logits.copy()
  conversion = scored.labels["conversion"] > 0.5
  logits[:, 1] += scored.clicked * np.where(conversion, up, -down)
  cvr = 1.0 / (1.0 + np.exp(-logits[:, 1]))
  return recalibration.Scored(
      logits, dict(scored.outputs, cvr=cvr.astype(np.float32)), scored.labels)


class CounterfactualRefitTest(_ScoredWorldTest):
  """The slope from the risk, the level from the IPS estimate."""

  @parameterized.parameters(0.0, -15.0)
  def test_slope_of_the_risk_mean_at_the_estimate(self, offset):
    # An offset of -15 needs a shift beyond logit_shift's bounds (+22).
    logits = self.scored.logits + np.float32([0.0, offset, offset])
    scored = recalibration.Scored(logits, self.scored.outputs,
                                  self.scored.labels)
    config = config_lib.LossConfig(loss="ipw", propensity_clip=0.05)
    slope, shift = recalibration.counterfactual_refit(config, scored)
    self.assertEqual(slope, recalibration.risk_scaling(config, scored)[0])
    z = logits[:, 1].astype(float)
    estimate = np.mean(self.weights(config)
                       * self.scored.labels["conversion"])
    self.assertAllClose(np.mean(1.0 / (1.0 + np.exp(-(slope * z + shift)))),
                        estimate, rtol=1e-5)

  def test_memorised_clicks_bias_the_risk_level_not_the_refit(self):
    # Training scores from a tower that memorised its clicks; new
    # impressions of the same world scored without memory. With the true
    # propensities the refit's mean over the new impressions meets their
    # true mean within the IPS estimate's sampling error; the risk's own
    # level (its o/ô-weighted condition on the memorised clicks) lands
    # more than TOLERANCE_SE of them low.
    config = config_lib.LossConfig(loss="ipw", propensity="label")
    training = memorised(self.scored, up=1.0, down=0.25)
    new, p_conversion = scored_world(seed=1)
    z = new.logits[:, 1].astype(float)
    truth = p_conversion.mean()
    standard_error = np.std(self.weights(config)
                            * self.scored.labels["conversion"]) / math.sqrt(
                                len(z))
    def error(slope, shift):
      mean = np.mean(1.0 / (1.0 + np.exp(-(slope * z + shift))))
      return (mean - truth) / standard_error
    self.assertLess(error(*recalibration.risk_scaling(config, training)),
                    -TOLERANCE_SE)
    self.assertLess(
        abs(error(*recalibration.counterfactual_refit(config, training))),
        TOLERANCE_SE)


  def test_the_clicked_mean_is_left_to_the_risk(self):
    # The clicks here select on what z does not reveal (its noise), so the
    # best sigmoid(a * z + b) predicts the clicked impressions below their
    # conversion rate. With the true propensities the refit keeps that
    # shortfall; meeting the clicked rate as well (a steeper slope, the
    # level at the refit's) doubles the squared error against the truth.
    config = config_lib.LossConfig(loss="ipw", propensity="label")
    slope, shift = recalibration.counterfactual_refit(config, self.scored)
    z = self.scored.logits[:, 1].astype(float)
    clicked = self.scored.clicked
    rate = self.scored.labels["conversion"][clicked].mean()
    refit = 1.0 / (1.0 + np.exp(-(slope * z + shift)))
    self.assertLess(refit[clicked].mean() - rate,
                    -TOLERANCE_SE * math.sqrt(rate * (1 - rate)
                                              / clicked.sum()))
    steep = clicked_moment_fit(z, clicked, refit.mean(), rate)
    self.assertAllClose(steep[clicked].mean(), rate, rtol=1e-6)
    self.assertGreater(np.mean((steep - self.p_conversion) ** 2),
                       1.5 * np.mean((refit - self.p_conversion) ** 2))


def clicked_moment_fit(z: np.ndarray, clicked: np.ndarray, mean: float,
                       clicked_mean: float) -> np.ndarray:
  """sigmoid(a * z + b) with the given mean and clicked mean: bisections."""
  def with_mean(logits):
    low, high = -60.0, 60.0
    for _ in range(80):
      p = 1.0 / (1.0 + np.exp(-(logits + 0.5 * (low + high))))
      low, high = (0.5 * (low + high), high) if p.mean() < mean else (
          low, 0.5 * (low + high))
    return p

  low, high = 0.0, 20.0
  for _ in range(60):
    p = with_mean(0.5 * (low + high) * z)
    low, high = (0.5 * (low + high), high) if (
        p[clicked].mean() < clicked_mean) else (low, 0.5 * (low + high))
  return p


class _SimulatedWorldTest(tf.test.TestCase):
  """4,000 training and 4,000 test impressions, and the training rates."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = datasets.make_synthetic_data(testing.new_dir(),
                                            num_train=4000, num_test=4000)
    cls.rates = base_rates.read_base_rates(
        layout.stats_beside(cls.data["vocab_dir"]))


class RecalibrateTest(_SimulatedWorldTest, parameterized.TestCase):
  """A model whose output biases are deliberately wrong is corrected."""

  def model(self, loss, **loss_settings):
    wrong = base_rates.BaseRates(ctr=0.7, cvr=0.9)
    return model_lib.build_model(
        testing.TINY_MODEL, config_lib.LossConfig(loss=loss, **loss_settings),
        vocab.load_vocabularies(self.data["vocab_dir"]), base_rates=wrong,
        seed=5)

  def held_out(self):
    return data.make_dataset(self.data["train"], 256, training=False,
                             split=data.HashSplit(0.5, validation=True))

  def training(self):
    return data.make_dataset(self.data["train"], 256, training=False,
                             split=data.HashSplit(0.5, validation=False))

  def recalibrated(self, loss):
    model = self.model(loss)
    before = evaluation.predict_keras_model(model, self.data["test"], 512)
    shifts = recalibration.recalibrate(model, self.held_out(), self.rates)
    after = evaluation.predict_keras_model(model, self.data["test"], 512)
    count = len(after["click"])
    # Without the shift the model is far off; with it, within sampling error
    # of the test data's own click rate.
    ctr_tolerance = rate_tolerance(self.rates.ctr, count, 4000)
    self.assertGreater(abs(before["ctr"].mean() - after["click"].mean()),
                       5 * ctr_tolerance)
    self.assertLess(abs(after["ctr"].mean() - after["click"].mean()),
                    ctr_tolerance)
    self.assertLess(shifts["ctr"], 0.0)
    return before, after, shifts

  def test_naive_ends_at_the_conversions_per_click(self):
    before, after, shifts = self.recalibrated("naive")
    clicked = after["click"] > 0.5
    tolerance = rate_tolerance(self.rates.cvr, int(clicked.sum()),
                               round(self.rates.ctr * 4000))
    self.assertGreater(abs(before["cvr"][clicked].mean()
                           - after["conversion"][clicked].mean()),
                       5 * tolerance)
    self.assertLess(abs(after["cvr"][clicked].mean()
                        - after["conversion"][clicked].mean()), tolerance)
    self.assertLess(shifts["cvr"], 0.0)

  def test_esmm_ends_at_the_conversions_per_impression(self):
    before, after, shifts = self.recalibrated("esmm")
    rate = self.rates.ctr * self.rates.cvr
    tolerance = rate_tolerance(rate, len(after["click"]), 4000)
    observed = (after["click"] * after["conversion"]).mean()
    self.assertGreater(abs(before["ctcvr"].mean() - observed), 5 * tolerance)
    self.assertLess(abs(after["ctcvr"].mean() - observed), tolerance)
    self.assertLess(shifts["cvr"], 0.0)

  @parameterized.parameters("ipw", "dr", "dr_jl", "mrdr")
  def test_counterfactual_cvr_without_training_data_stays(self, loss):
    before, after, shifts = self.recalibrated(loss)
    self.assertEqual((shifts["cvr"], shifts["cvr_slope"]), (0.0, 1.0))
    self.assertAllClose(after["cvr"], before["cvr"], rtol=1e-6)

  @parameterized.parameters("ipw", "dr", "dr_jl", "mrdr")
  def test_counterfactual_cvr_is_refit(self, loss):
    model = self.model(loss)
    training = self.training()
    before = recalibration.score(model, training)
    changes = recalibration.recalibrate(model, self.held_out(), self.rates,
                                        training=training)
    self.assertNotAllClose([changes["cvr_slope"], changes["cvr"]], [1., 0.])
    after = recalibration.score(model, training)
    # The weights now give slope * z + shift of the logits before ...
    self.assertAllClose(after.logits[:, 1],
                        changes["cvr_slope"] * before.logits[:, 1]
                        + changes["cvr"], atol=1e-4)
    # ... with the risk's slope and the IPS estimate's level: a second
    # refit changes nothing.
    self.assertAllClose(
        recalibration.counterfactual_refit(model.loss_config, after),
        (1.0, 0.0), atol=1e-3)

  def test_paddlerec_cvr_is_not_refit(self):
    model = self.model("ipw", compat="paddlerec")
    changes = recalibration.recalibrate(model, self.held_out(), self.rates,
                                        training=self.training())
    self.assertEqual((changes["cvr"], changes["cvr_slope"]), (0.0, 1.0))


class TrainerRecalibrationTest(_SimulatedWorldTest):
  """escm2-train's default ends calibrated, in the saved weights."""


  def train(self, **overrides):
    # Output biases started at 0 (pCTR 0.5) and a short, slow run: the mean
    # is far from the click rate unless it is recalibrated.
    config = testing.tiny_config(
        self.data, os.path.join(testing.new_dir(), "model"), epochs=2,
        base_rate_init=False, learning_rate=1e-4, validation_fraction=0.5,
        loss="naive", seed=5, **overrides)
    return config, training.train(config, verbose=0)

  def test_final_model_is_calibrated_on_held_out_data(self):
    config, result = self.train()
    metrics = result["metrics"]
    clicks = metrics["clicks"]
    self.assertLess(abs(metrics["calibration_ctr"] - 1.0) * self.rates.ctr,
                    rate_tolerance(self.rates.ctr, metrics["count"], 4000))
    self.assertLess(abs(metrics["calibration_cvr"] - 1.0) * self.rates.cvr,
                    rate_tolerance(self.rates.cvr, clicks,
                                   round(self.rates.ctr * 4000)))
    # The shift is in the saved weights: the final checkpoint's output
    # biases are the best epoch's plus it.
    checkpoints = os.path.join(config.trainer.model_dir,
                               run_dir.CHECKPOINT_DIR)
    model = model_lib.build_model(config.model, config.loss,
                                  vocab.load_vocabularies(
                                      config.data.vocab_dir))
    bias = {}
    for checkpoint in (f"epoch-{result['best_epoch']:03d}",
                       run_dir.FINAL_CHECKPOINT):
      model.load_weights(os.path.join(checkpoints, checkpoint)
                         ).expect_partial()
      bias[checkpoint] = model.network.get_layer(
          recalibration.TOWERS_LAYER).biases[-1].numpy()[:, 0]
    shifts = result["output_bias_shifts"]
    self.assertAllClose(
        bias[run_dir.FINAL_CHECKPOINT],
        bias[f"epoch-{result['best_epoch']:03d}"]
        + [shifts["ctr"], shifts["cvr"]], atol=1e-6)

  def test_without_recalibration_the_run_is_not_calibrated(self):
    _, result = self.train(recalibrate=False)
    metrics = result["metrics"]
    self.assertIsNone(result["output_bias_shifts"])
    self.assertGreater(abs(metrics["calibration_ctr"] - 1.0) * self.rates.ctr,
                       5 * rate_tolerance(self.rates.ctr, metrics["count"],
                                          4000))
