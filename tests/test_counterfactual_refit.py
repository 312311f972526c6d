"""Tests of escm2_tf.counterfactual_refit: the CVR's slope and level."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import math

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

import test_output_logits
import test_recalibration
from escm2_tf import config as config_lib
from escm2_tf import counterfactual_refit
from escm2_tf import output_logits


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
  return (output_logits.Scored(logits.astype(np.float32),
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
    self.assertAllClose(counterfactual_refit.risk_scaling(config, self.scored),
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
    self.assertAllClose(counterfactual_refit.risk_scaling(config, self.scored),
                        expected, atol=2e-4)

  def test_self_normalisation_has_the_same_minimum(self):
    plain = counterfactual_refit.risk_scaling(
        config_lib.LossConfig(loss="ipw"), self.scored)
    snips = counterfactual_refit.risk_scaling(
        config_lib.LossConfig(loss="ipw", self_normalized=True), self.scored)
    self.assertAllClose(snips, plain, atol=2e-4)

  def test_true_propensities_recover_the_entire_space_cvr(self):
    # IPW with the true propensity is unbiased: the refit's mean over every
    # impression meets the true mean within the IPS estimate's sampling
    # error (1.0 of it here), the flat model's slope steepens (1.6). The
    # clicked impressions alone (naive Platt scaling) land 9 of them above.
    config = config_lib.LossConfig(loss="ipw", propensity="label")
    slope, shift = counterfactual_refit.risk_scaling(config, self.scored)
    z = self.scored.logits[:, 1].astype(float)
    refit = 1.0 / (1.0 + np.exp(-(slope * z + shift)))
    truth = self.p_conversion.mean()
    conversion = self.scored.labels["conversion"]
    standard_error = np.std(self.weights(config) * conversion) / math.sqrt(
        len(z))
    self.assertLess(abs(refit.mean() - truth),
                    test_recalibration.TOLERANCE_SE * standard_error)
    self.assertGreater(slope, 1.5)
    clicked = self.scored.clicked
    naive = numpy_risk_scaling(z[clicked], lambda p: p - conversion[clicked])
    naive_mean = (1.0 / (1.0 + np.exp(-(naive[0] * z + naive[1])))).mean()
    self.assertGreater(naive_mean - truth,
                       2 * test_recalibration.TOLERANCE_SE * standard_error)

  def test_logits_that_barely_vary_get_the_level_alone(self):
    # An untrained tower: a slope beyond MAX_SLOPE would be needed, so only
    # the shift moves, to R_IPS's level condition (weighted means equal).
    flat = np.float32(0.01) * self.scored.logits
    scored = output_logits.Scored(flat, self.scored.outputs,
                                  self.scored.labels)
    config = config_lib.LossConfig(loss="ipw")
    slope, shift = counterfactual_refit.risk_scaling(config, scored)
    self.assertEqual(slope, 1.0)
    weights = self.weights(config)
    self.assertAllClose(
        shift, test_output_logits.newton_shift(
            flat[:, 1].astype(float),
            np.average(self.scored.labels["conversion"], weights=weights),
            weights),
        atol=1e-4)

  @parameterized.product(refit=("risk_scaling", "counterfactual_refit"),
                          value=(np.nan, np.inf))
  def test_a_diverged_model_is_left_alone(self, refit, value):
    logits = self.scored.logits.copy()
    logits[7, 1] = value
    scored = output_logits.Scored(logits, self.scored.outputs,
                                  self.scored.labels)
    self.assertEqual(getattr(counterfactual_refit, refit)(
        config_lib.LossConfig(loss="ipw"), scored), (1.0, 0.0))

  def test_without_conversions_nothing_moves(self):
    scored = output_logits.Scored(
        self.scored.logits, self.scored.outputs,
        dict(self.scored.labels,
             conversion=np.zeros_like(self.scored.labels["conversion"])))
    self.assertEqual(counterfactual_refit.risk_scaling(
        config_lib.LossConfig(loss="ipw"), scored), (1.0, 0.0))


def memorised(scored: output_logits.Scored, up: float, down: float
              ) -> output_logits.Scored:
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
  return output_logits.Scored(
      logits, dict(scored.outputs, cvr=cvr.astype(np.float32)), scored.labels)


class CounterfactualRefitTest(_ScoredWorldTest):
  """The slope from the risk, the level from the IPS estimate."""

  @parameterized.parameters(0.0, -15.0)
  def test_slope_of_the_risk_mean_at_the_estimate(self, offset):
    # An offset of -15 needs a shift beyond logit_shift's bounds (+22).
    logits = self.scored.logits + np.float32([0.0, offset, offset])
    scored = output_logits.Scored(logits, self.scored.outputs,
                                  self.scored.labels)
    config = config_lib.LossConfig(loss="ipw", propensity_clip=0.05)
    slope, shift = counterfactual_refit.counterfactual_refit(config, scored)
    self.assertEqual(slope,
                     counterfactual_refit.risk_scaling(config, scored)[0])
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
    self.assertLess(
        error(*counterfactual_refit.risk_scaling(config, training)),
        -test_recalibration.TOLERANCE_SE)
    self.assertLess(
        abs(error(*counterfactual_refit.counterfactual_refit(config,
                                                             training))),
        test_recalibration.TOLERANCE_SE)


  def test_the_clicked_mean_is_left_to_the_risk(self):
    # The clicks here select on what z does not reveal (its noise), so the
    # best sigmoid(a * z + b) predicts the clicked impressions below their
    # conversion rate. With the true propensities the refit keeps that
    # shortfall; meeting the clicked rate as well (a steeper slope, the
    # level at the refit's) doubles the squared error against the truth.
    config = config_lib.LossConfig(loss="ipw", propensity="label")
    slope, shift = counterfactual_refit.counterfactual_refit(config,
                                                             self.scored)
    z = self.scored.logits[:, 1].astype(float)
    clicked = self.scored.clicked
    rate = self.scored.labels["conversion"][clicked].mean()
    refit = 1.0 / (1.0 + np.exp(-(slope * z + shift)))
    self.assertLess(refit[clicked].mean() - rate,
                    -test_recalibration.TOLERANCE_SE
                    * math.sqrt(rate * (1 - rate) / clicked.sum()))
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
