"""Double robustness: a correct imputation corrects a wrong propensity.

The other half of the oracle checks in test_oracle_propensity.py. There the
propensity is true and the imputation anything; here every click gets the same
propensity, the mean click rate, which carries none of the selection (IPW
weighted by it is the clicked mean), and the imputation is the truth: the
pseudo-label r̃ = p_conversion for DR-JL and MRDR, the expected error
BCE(p_conversion, r̂) for the paper's DR. A one-logit CVR model is trained
through ``losses.compute_losses`` with the imputation held fixed.

With r̂ = c for every impression, the CVR gradient of DR-JL's and MRDR's
risk is 1/|D| Σ [(c − r̃) + o/ô·(r̃ − r)], so c ends at
mean(r̃) + mean(o·(r − r̃))/ô: the true mean CVR up to a sampling error, since
given p_conversion a conversion does not depend on the click. The paper's DR
holds its imputed error fixed in the prediction risk, so its CVR gradient is
IPW's and it ends where IPW does, whatever the imputation.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

import test_oracle_propensity
from escm2_tf import losses
from escm2_tf import paper_risks
from escm2_tf.simulator import traffic

STEPS = test_oracle_propensity.STEPS
LEARNING_RATE = test_oracle_propensity.LEARNING_RATE
Z_99 = test_oracle_propensity.Z_99
# A pseudo-label that under-states every impression's odds by e^0.7.
WRONG_SHIFT = -0.7


def train_with_fixed_imputation(loss: str, data: dict[str, np.ndarray],
                                propensity: float,
                                pseudo_label: np.ndarray) -> float:
  """The pCVR of a one-logit CVR model, the imputation held at the truth.

  Args:
    loss: a counterfactual estimator of ``compute_losses``.
    data: ``test_oracle_propensity.simulate``'s impressions.
    propensity: ô, the same for every impression.
    pseudo_label: r̃ per impression; ``dr`` imputes BCE(r̃, r̂) directly.

  Returns:
    The trained pCVR.
  """
  config = test_oracle_propensity.oracle_config(loss)
  labels = {name: tf.constant(data[name], tf.float32)
            for name in ("click", "conversion")}
  labels["p_click"] = tf.fill(tf.shape(labels["click"]), propensity)
  pseudo_label = tf.constant(pseudo_label, tf.float32)
  cvr_logit = tf.Variable(0.0)
  optimizer = tf.keras.optimizers.SGD(LEARNING_RATE)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      cvr = tf.sigmoid(cvr_logit) * tf.ones_like(pseudo_label)
      imputation = (paper_risks.binary_cross_entropy(pseudo_label, cvr,
                                                     config.epsilon)
                    if loss == "dr" else pseudo_label)
      outputs = {"ctr": labels["p_click"], "cvr": cvr,
                 "ctcvr": labels["p_click"] * cvr, "imputation": imputation}
      total = losses.compute_losses(config, labels, outputs)["loss"]
    optimizer.apply_gradients([(tape.gradient(total, cvr_logit), cvr_logit)])

  for _ in range(STEPS):
    step()
  return float(tf.sigmoid(cvr_logit))


class DoubleRobustnessTest(tf.test.TestCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = test_oracle_propensity.simulate()
    cls.truth = float(cls.data["p_conversion"].mean())
    cls.flat = float(cls.data["click"].mean())
    cls.clicked_mean = float(
        np.sum(cls.data["click"] * cls.data["conversion"])
        / np.sum(cls.data["click"]))

  def stationary_point(self, pseudo_label: np.ndarray) -> tuple[float, float]:
    """mean(r̃) + mean(o·(r − r̃))/ô, and its second term's standard error."""
    residual = (self.data["click"] * (self.data["conversion"] - pseudo_label)
                / self.flat)
    error = float(residual.std() / np.sqrt(residual.size))
    return float(pseudo_label.mean() + residual.mean()), error

  def test_the_flat_propensity_is_wrong(self):
    # IPW weighted by it is the clicked mean, far above the truth.
    value = train_with_fixed_imputation("ipw", self.data, self.flat,
                                        self.data["p_conversion"])
    self.assertAllClose(value, self.clicked_mean, atol=1e-4)
    self.assertGreater(value - self.truth, 0.05)

  @parameterized.parameters("dr_jl", "mrdr")
  def test_a_true_pseudo_label_recovers_the_true_mean_cvr(self, loss):
    value = train_with_fixed_imputation(loss, self.data, self.flat,
                                        self.data["p_conversion"])
    expected, error = self.stationary_point(self.data["p_conversion"])
    self.assertAllClose(value, expected, atol=1e-4)
    self.assertLess(abs(value - self.truth), Z_99 * error,
                    f"{loss}: {value:.5f} vs true mean CVR {self.truth:.5f}")

  @parameterized.parameters("dr_jl", "mrdr")
  def test_a_wrong_pseudo_label_does_not(self, loss):
    # Both models wrong: the check above could fail.
    wrong = traffic.sigmoid(traffic.logit(self.data["p_conversion"])
                            + WRONG_SHIFT)
    value = train_with_fixed_imputation(loss, self.data, self.flat, wrong)
    expected, error = self.stationary_point(wrong)
    self.assertAllClose(value, expected, atol=1e-4)
    self.assertGreater(abs(value - self.truth), Z_99 * error)

  def test_the_papers_dr_ends_where_ipw_does(self):
    # Its imputed error is constant in the prediction risk, so a true
    # imputation does not move its CVR gradient off IPW's.
    value = train_with_fixed_imputation("dr", self.data, self.flat,
                                        self.data["p_conversion"])
    self.assertAllClose(value, self.clicked_mean, atol=1e-4)


if __name__ == "__main__":
  tf.test.main()
