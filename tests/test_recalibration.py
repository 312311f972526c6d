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
from escm2_tf import counterfactual_refit
from escm2_tf import data
from escm2_tf import evaluation
from escm2_tf import layout
from escm2_tf import model as model_lib
from escm2_tf import output_logits
from escm2_tf import recalibration
from escm2_tf import run_dir
from escm2_tf import training
from escm2_tf import vocab

# Standard errors a calibrated model's mean may stray from a sample's rate.
TOLERANCE_SE = 4.0


def rate_tolerance(rate: float, *counts: int) -> float:
  """TOLERANCE_SE binomial standard errors of a difference of rates."""
  return TOLERANCE_SE * math.sqrt(rate * (1 - rate) *
                                  sum(1.0 / n for n in counts))


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
    before = output_logits.score(model, training)
    changes = recalibration.recalibrate(model, self.held_out(), self.rates,
                                        training=training)
    self.assertNotAllClose([changes["cvr_slope"], changes["cvr"]], [1., 0.])
    after = output_logits.score(model, training)
    # The weights now give slope * z + shift of the logits before ...
    self.assertAllClose(after.logits[:, 1],
                        changes["cvr_slope"] * before.logits[:, 1]
                        + changes["cvr"], atol=1e-4)
    # ... with the risk's slope and the IPS estimate's level: a second
    # refit changes nothing.
    self.assertAllClose(
        counterfactual_refit.counterfactual_refit(model.loss_config, after),
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
          output_logits.TOWERS_LAYER).biases[-1].numpy()[:, 0]
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
