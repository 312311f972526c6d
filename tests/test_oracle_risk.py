"""The counterfactual risks against the true risk, and the imputations' targets.

escm2-synth's simulator knows every impression's counterfactual conversion
r_cf (would it have converted, had it been clicked), so the entire-space risk
a CVR estimator targets, 1/|D| Σ BCE(r_cf, r̂), is computable. Clicks are
redrawn here at one flat probability (the true propensity, known); IPS, DR,
DR-JL and MRDR are unbiased for that risk whatever the imputation, and each
estimate must lie within four standard errors of it (the standard error of
its per-impression difference from the truth, computed from the data). The
interval is narrow enough to catch a risk rescaled by 10 % or an unweighted
one.

With the simulator's own (selective) clicks and true propensities, a
constant imputation trained through ``compute_losses`` against a fixed pCVR
must converge to the error its risk weighs in: the IPS-weighted mean error
Σ o·w·δ / Σ o·w for dr and dr_jl, the o·w·(w − 1)-weighted one for mrdr.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

import test_oracle_propensity
from escm2_tf import config as config_lib
from escm2_tf import losses
from escm2_tf import simulator

FLAT_PROPENSITY = 0.25
Z = 4.0
# A small, dense world with strong selection: clicked impressions convert far
# more often than the average one.
WORLD = dict(num_train=200_000, num_test=1, seed=3, num_users=2_000,
             num_items=4_000, num_categories=100, ctr=0.1, cvr=0.1,
             click_conversion_correlation=0.8)
# A fixed pCVR for the imputation check, and its optimiser.
FIXED_CVR = 0.1
STEPS = 1000
LEARNING_RATE = 2.0


def _logit(p: np.ndarray) -> np.ndarray:
  return np.log(p) - np.log1p(-p)


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-x))


def _bce(label: np.ndarray, prob: np.ndarray) -> np.ndarray:
  return -(label * np.log(prob) + (1.0 - label) * np.log1p(-prob))


def simulated_truth() -> dict[str, np.ndarray]:
  """The simulator's training split: true rates, clicks and r_cf."""
  config = simulator.SimulatorConfig(**WORLD)
  _, truth = simulator.sample_split(config, simulator.build_world(config),
                                    "train")
  return {name: np.asarray(values, np.float64)
          for name, values in truth.items()}


def compute(config: config_lib.LossConfig, click: np.ndarray,
            conversion: np.ndarray, propensity: np.ndarray, cvr: np.ndarray,
            imputation: np.ndarray) -> dict[str, float]:
  """compute_losses on numpy columns (the CTR output is the propensity)."""
  const = lambda x: tf.constant(x, tf.float32)
  result = losses.compute_losses(
      config, {"click": const(click), "conversion": const(conversion),
               "p_click": const(propensity)},
      {"ctr": const(propensity), "cvr": const(cvr),
       "ctcvr": const(propensity * cvr), "imputation": const(imputation)})
  return {key: float(value) for key, value in result.items()}


class TrueRiskTest(tf.test.TestCase, parameterized.TestCase):
  """Flat clicks: every estimator is unbiased for the entire-space risk."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    truth = simulated_truth()
    rng = np.random.default_rng(7)
    cls.counterfactual = truth["conversion_counterfactual"]
    cls.click = (rng.random(cls.counterfactual.size)
                 < FLAT_PROPENSITY).astype(np.float64)
    cls.conversion = cls.click * cls.counterfactual
    true_logit = _logit(truth["p_conversion"])
    # A pCVR that over-estimates and a pseudo-label that under-estimates.
    cls.cvr = _sigmoid(true_logit + 0.3)
    cls.pseudo_label = _sigmoid(true_logit - 0.7)
    cls.true_risk = float(np.mean(_bce(cls.counterfactual, cls.cvr)))

  def per_impression(self, loss: str, weight: float) -> np.ndarray:
    """Each impression's term of the estimator, o weighted by ``weight``."""
    delta = _bce(self.conversion, self.cvr)
    if loss == "ipw":
      return self.click * weight * delta
    # dr imputes this error directly; dr_jl and mrdr derive it from r̃.
    imputed = _bce(self.pseudo_label, self.cvr)
    return imputed + self.click * weight * (delta - imputed)

  def estimate(self, loss: str) -> float:
    propensity = np.full_like(self.click, FLAT_PROPENSITY)
    imputation = (_bce(self.pseudo_label, self.cvr) if loss == "dr"
                  else self.pseudo_label)
    config = config_lib.LossConfig(loss=loss, propensity="label")
    return compute(config, self.click, self.conversion, propensity, self.cvr,
                   imputation)["cvr_loss"]

  @parameterized.parameters("ipw", "dr", "dr_jl", "mrdr")
  def test_risk_matches_the_true_risk(self, loss):
    difference = (self.per_impression(loss, 1.0 / FLAT_PROPENSITY)
                  - _bce(self.counterfactual, self.cvr))
    half_width = Z * difference.std() / np.sqrt(difference.size)
    value = self.estimate(loss)
    self.assertLess(abs(value - self.true_risk), half_width,
                    f"{loss}: {value:.5f} vs true risk {self.true_risk:.5f}")
    # The numpy transcription agrees to float32 precision.
    self.assertAllClose(value, self.per_impression(
        loss, 1.0 / FLAT_PROPENSITY).mean(), rtol=1e-4)
    # The interval would catch a rescaled or an unweighted risk.
    self.assertGreater(abs(1.1 * value - self.true_risk), half_width)
    unweighted = self.per_impression(loss, 1.0).mean()
    self.assertGreater(abs(unweighted - self.true_risk), half_width)


def train_constant_imputation(config: config_lib.LossConfig,
                              truth: dict[str, np.ndarray]) -> float:
  """The imputed error of a one-logit imputation, the pCVR held fixed."""
  imputation_logit = tf.Variable(0.0)
  labels = {name: tf.constant(truth[name], tf.float32)
            for name in ("click", "conversion", "p_click")}
  ctr = labels["p_click"]
  cvr = tf.fill(tf.shape(ctr), FIXED_CVR)
  activation = (tf.sigmoid if config.loss in config_lib.JOINT_LEARNING_LOSSES
                else tf.nn.softplus)
  optimizer = tf.keras.optimizers.SGD(LEARNING_RATE)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      outputs = {"ctr": ctr, "cvr": cvr, "ctcvr": ctr * cvr,
                 "imputation": activation(imputation_logit) * tf.ones_like(ctr)}
      loss = losses.compute_losses(config, labels, outputs)["loss"]
    optimizer.apply_gradients(
        [(tape.gradient(loss, imputation_logit), imputation_logit)])

  for _ in range(STEPS):
    step()
  imputation = float(activation(imputation_logit))
  if config.loss in config_lib.JOINT_LEARNING_LOSSES:
    return float(_bce(imputation, FIXED_CVR))
  return imputation


class ImputationTargetTest(tf.test.TestCase, parameterized.TestCase):
  """Selective clicks, true propensities: where the imputation converges."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.truth = simulated_truth()
    cls.delta = _bce(cls.truth["conversion"], FIXED_CVR)

  def weighted_error(self, weights: np.ndarray) -> float:
    return float(np.sum(weights * self.delta) / np.sum(weights))

  def imputation_weights(self, loss: str) -> np.ndarray:
    return test_oracle_propensity.imputation_weights(
        self.truth, loss, config_lib.LossConfig.propensity_clip)

  @parameterized.parameters("dr", "dr_jl", "mrdr")
  def test_imputation_converges_to_the_weighted_mean_error(self, loss):
    weights = self.imputation_weights(loss)
    applied = test_oracle_propensity.applied_imputation_weights(
        self.truth, loss, config_lib.LossConfig.propensity_clip)
    # R_imp scaled to weights of mean 1: the same minimiser, one step size.
    config = config_lib.LossConfig(loss=loss, propensity="label", lambda_c=0.0,
                                   lambda_g=0.0,
                                   lambda_imp=1.0 / float(np.mean(applied)))
    value = train_constant_imputation(config, self.truth)
    target = self.weighted_error(weights)
    self.assertAllClose(value, target, rtol=1e-4)
    # The weights matter: the clicked mean error is elsewhere, and an
    # untrained imputation (softplus(0), or BCE(0.5, r̂)) too.
    self.assertGreater(abs(self.weighted_error(self.truth["click"]) - target),
                       1e-3 * target)
    start = (np.log(2.0) if loss == "dr" else float(_bce(0.5, FIXED_CVR)))
    self.assertGreater(abs(start - target), 0.1 * target)

  def test_mrdr_and_dr_jl_targets_differ(self):
    self.assertNotAllClose(
        self.weighted_error(self.imputation_weights("mrdr")),
        self.weighted_error(self.imputation_weights("dr_jl")), rtol=1e-2)


if __name__ == "__main__":
  tf.test.main()
