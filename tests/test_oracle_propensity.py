"""The counterfactual CVR risks with the true propensity: the estimator itself.

Impressions are drawn in numpy with click and conversion propensities that
rise with the same latent variable, so clicked impressions convert more often
than the average impression: the selection bias ESCM2 corrects. A constant
CVR predictor (one logit) is trained by gradient descent on
``losses.compute_losses``' total loss with the true click probability as the
propensity (``LossConfig(propensity="label")``). Its pCVR is then one number,
its estimate of the mean CVR over all impressions; IPW and DR must recover the
true mean within the 99 % confidence interval of the IPS estimate computed
from the data, and the naive clicked-only risk must miss it. This separates
"the estimator is coded right" from "the CTR tower is weak". Every trained
value is also checked against its closed form in numpy: the weighted means
that the risks' stationary points are, with the clip binding or not, and the
imputations' targets.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from escm2_tf import config as config_lib
from escm2_tf import losses

NUM_IMPRESSIONS = 100_000
Z_99 = 2.576
# Below every true propensity drawn here: the clip must not bias the check.
CLIP = 1e-3
STEPS = 300
LEARNING_RATE = 5.0


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-x))


def simulate(seed: int = 0) -> dict[str, np.ndarray]:
  """Impressions with correlated click and conversion propensities."""
  rng = np.random.default_rng(seed)
  latent = rng.normal(size=NUM_IMPRESSIONS)
  p_click = _sigmoid(-2.0 + 1.0 * latent)
  p_conversion = _sigmoid(-2.0 + 1.5 * latent)
  click = rng.random(NUM_IMPRESSIONS) < p_click
  counterfactual = rng.random(NUM_IMPRESSIONS) < p_conversion
  return {"p_click": p_click, "p_conversion": p_conversion,
          "click": click.astype(np.float64),
          "conversion": (click & counterfactual).astype(np.float64)}


def weighted_mean(data: dict[str, np.ndarray], weights: np.ndarray
                  ) -> tuple[float, float]:
  """The click-weighted mean conversion and its delta-method standard error.

  This is where a constant predictor minimising Σ o·w·BCE(r, r̂) ends up; with
  w = 1/p_click it is the IPS estimate of the mean CVR over all impressions.
  """
  w = data["click"] * weights
  mean = float(np.sum(w * data["conversion"]) / np.sum(w))
  error = float(np.sqrt(np.sum((w * (data["conversion"] - mean)) ** 2))
                / np.sum(w))
  return mean, error


def imputation_output(config: config_lib.LossConfig,
                      logit: tf.Tensor) -> tf.Tensor:
  """The imputation tower's head: a pseudo-label or a predicted error."""
  if config.loss in config_lib.JOINT_LEARNING_LOSSES:
    return tf.sigmoid(logit)
  return tf.nn.softplus(logit)


def train_constant_cvr(config: config_lib.LossConfig,
                       data: dict[str, np.ndarray],
                       ctr: np.ndarray | None = None) -> float:
  """The pCVR of a one-logit CVR model trained through compute_losses.

  The imputation, if any, is one logit too, trained in the same steps. The
  CTR output is ``ctr``, by default the true click probability.
  """
  cvr_logit = tf.Variable(0.0)
  imputation_logit = tf.Variable(0.0)
  ctr = tf.constant(data["p_click"] if ctr is None else ctr, tf.float32)
  labels = {name: tf.constant(data[name], tf.float32)
            for name in ("click", "conversion", "p_click")}
  ones = tf.ones_like(ctr)
  optimizer = tf.keras.optimizers.SGD(LEARNING_RATE)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      cvr = tf.sigmoid(cvr_logit) * ones
      outputs = {"ctr": ctr, "cvr": cvr, "ctcvr": ctr * cvr,
                 "imputation": imputation_output(config, imputation_logit)
                               * ones}
      loss = losses.compute_losses(config, labels, outputs)["loss"]
    variables = [cvr_logit, imputation_logit]
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

  for _ in range(STEPS):
    step()
  return float(tf.sigmoid(cvr_logit))


def imputation_weights(data: dict[str, np.ndarray], loss: str,
                       clip: float) -> np.ndarray:
  """How R_imp weighs each impression: o·w, or o·w·(w − 1) for mrdr.

  compute_losses scales MRDR's weights by one number, to DR-JL's total:
  their weighted means, the imputations' targets, are these.
  """
  w = 1.0 / np.maximum(data["p_click"], clip)
  return data["click"] * w * ((w - 1.0) if loss == "mrdr" else 1.0)


def applied_imputation_weights(data: dict[str, np.ndarray], loss: str,
                               clip: float) -> np.ndarray:
  """``imputation_weights`` as compute_losses applies them (one batch)."""
  weights = imputation_weights(data, loss, clip)
  ipw = imputation_weights(data, "dr_jl", clip)
  return weights * ipw.sum() / weights.sum()


def joint_learning_config(data: dict[str, np.ndarray], loss: str,
                          clip: float = CLIP, **overrides
                          ) -> config_lib.LossConfig:
  """``oracle_config`` with R_imp's applied weights scaled to mean 1.

  At a larger mean weight the imputation's gradient steps would overshoot
  into the sigmoid's flat tail. The scale does not move the risk's
  minimiser.
  """
  scale = 1.0 / float(np.mean(applied_imputation_weights(data, loss, clip)))
  return oracle_config(loss, propensity_clip=clip, lambda_imp=scale,
                       **overrides)


def joint_learning_target(data: dict[str, np.ndarray], loss: str,
                          self_normalized: bool, clip: float = CLIP) -> float:
  """Where a constant pCVR and pseudo-label trained by dr_jl or mrdr end.

  With r̂ constant, δ − ê = (r̃ − r)·logit(r̂), so the imputation risk puts
  r̃ at the mean conversion weighted as it weighs clicks: o·w (dr_jl) or
  o·w·(w − 1) (mrdr). The prediction risk's stationary point is then
  r̂ = (1 − mean(o·w))·r̃ + mean(o·w·r), or with SNIPS Σ o·w·r / Σ o·w
  whatever r̃.
  """
  weighted = data["click"] / np.maximum(data["p_click"], clip)
  if self_normalized:
    return float(np.sum(weighted * data["conversion"]) / np.sum(weighted))
  weights = imputation_weights(data, loss, clip)
  pseudo_label = np.sum(weights * data["conversion"]) / np.sum(weights)
  return float((1.0 - weighted.mean()) * pseudo_label
               + np.mean(weighted * data["conversion"]))


def oracle_config(loss: str, **overrides) -> config_lib.LossConfig:
  # lambda_g = 0: the CTCVR risk would pull the CVR logit too (ESMM's way);
  # the check is of the CVR risk alone.
  values = dict(loss=loss, propensity="label", lambda_c=1.0, lambda_g=0.0,
                propensity_clip=CLIP)
  values.update(overrides)
  return config_lib.LossConfig(**values)


class OraclePropensityTest(tf.test.TestCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = simulate()
    cls.truth = float(cls.data["p_conversion"].mean())
    cls.estimate, cls.error = weighted_mean(cls.data,
                                            1.0 / cls.data["p_click"])

  def assert_covers_truth(self, value: float):
    self.assertLess(abs(value - self.truth), Z_99 * self.error,
                    f"{value:.5f} vs true mean CVR {self.truth:.5f}, 99 % "
                    f"half-width {Z_99 * self.error:.5f}")

  def assert_misses_truth(self, value: float):
    self.assertGreater(abs(value - self.truth), Z_99 * self.error,
                       f"{value:.5f} should miss the true mean CVR "
                       f"{self.truth:.5f} (half-width "
                       f"{Z_99 * self.error:.5f})")

  def test_the_data_has_selection_bias(self):
    self.assertGreater(self.data["click"].sum(), 10_000)
    self.assertGreater(self.data["p_click"].min(), CLIP)
    # The IPS estimate itself is within its interval of the truth.
    self.assert_covers_truth(self.estimate)

  @parameterized.named_parameters(
      ("ipw", "ipw", False), ("dr", "dr", False),
      ("ipw_self_normalized", "ipw", True),
      ("dr_self_normalized", "dr", True))
  def test_recovers_the_true_mean_cvr(self, loss, self_normalized):
    value = train_constant_cvr(
        oracle_config(loss, self_normalized=self_normalized), self.data)
    self.assert_covers_truth(value)
    # Converged to the closed-form minimiser, not merely near the truth.
    self.assertAllClose(value, self.estimate, atol=1e-4)

  @parameterized.product(loss=("dr_jl", "mrdr"), self_normalized=(False, True))
  def test_joint_learning_recovers_the_true_mean_cvr(self, loss,
                                                     self_normalized):
    value = train_constant_cvr(
        joint_learning_config(self.data, loss,
                              self_normalized=self_normalized), self.data)
    self.assert_covers_truth(value)
    self.assertAllClose(value, joint_learning_target(
        self.data, loss, self_normalized), atol=1e-4)

  def test_mrdr_weighs_the_imputation_otherwise(self):
    # The two closed forms differ by more than the tolerance above, so the
    # recovery test tells MRDR's imputation weight from DR-JL's.
    self.assertGreater(abs(joint_learning_target(self.data, "mrdr", False)
                           - joint_learning_target(self.data, "dr_jl", False)),
                       5e-4)

  @parameterized.parameters("ipw", "dr", "dr_jl", "mrdr")
  def test_a_binding_clip_moves_the_answer(self, loss):
    # Clipped at 0.1, over 40 % of the propensities are raised: the risk
    # aims at the clipped weights' answer, not at the truth.
    clip = 0.1
    self.assertGreater(np.mean(self.data["p_click"] < clip), 0.4)
    if loss in config_lib.JOINT_LEARNING_LOSSES:
      config = joint_learning_config(self.data, loss, clip)
      expected = joint_learning_target(self.data, loss, False, clip)
    else:
      config = oracle_config(loss, propensity_clip=clip)
      expected = weighted_mean(
          self.data, 1.0 / np.maximum(self.data["p_click"], clip))[0]
    value = train_constant_cvr(config, self.data)
    self.assertAllClose(value, expected, atol=1e-4)
    unclipped = (joint_learning_target(self.data, loss, False)
                 if loss in config_lib.JOINT_LEARNING_LOSSES else self.estimate)
    self.assertGreater(abs(value - unclipped), 0.01)
    self.assert_misses_truth(value)

  def test_naive_is_biased(self):
    value = train_constant_cvr(oracle_config("naive"), self.data)
    self.assertAllClose(value, weighted_mean(
        self.data, np.ones(NUM_IMPRESSIONS))[0], atol=1e-4)
    self.assert_misses_truth(value)
    # Clicked impressions convert more often: the bias is upwards.
    self.assertGreater(value, self.truth)

  @parameterized.named_parameters(("no_weight", 0.0), ("squared", 2.0))
  def test_a_wrong_ips_weight_would_fail(self, power):
    # The interval is narrow enough to catch 1 or 1/p^2 for 1/p: the
    # recovery test above fails if the weight is coded wrong.
    value, _ = weighted_mean(self.data, self.data["p_click"] ** -power)
    self.assert_misses_truth(value)

  @parameterized.named_parameters(("model", "model", False),
                                  ("label", "label", True))
  def test_propensity_source(self, propensity, recovers):
    # A flat pCTR carries no information: IPW weighted by it is the naive
    # clicked mean; the label's true propensity still corrects it.
    flat = np.full(NUM_IMPRESSIONS, self.data["click"].mean())
    value = train_constant_cvr(oracle_config("ipw", propensity=propensity),
                               self.data, ctr=flat)
    if recovers:
      self.assert_covers_truth(value)
    else:
      self.assert_misses_truth(value)


if __name__ == "__main__":
  tf.test.main()
