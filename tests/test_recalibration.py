"""Tests of escm2_tf.recalibration and of the trainer's recalibration."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import math
import os

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


def newton_shift(logits: np.ndarray, rate: float) -> float:
  """An independent solution: Newton's method on mean(sigmoid) - rate."""
  shift = 0.0
  for _ in range(100):
    p = 1.0 / (1.0 + np.exp(-(logits + shift)))
    shift -= (p.mean() - rate) / (p * (1.0 - p)).mean()
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

  def test_calibrated_logits_need_no_shift(self):
    logits = np.full(10, math.log(0.04 / 0.96))
    self.assertAllClose(recalibration.logit_shift(logits, 0.04), 0.0,
                        atol=1e-9)

  def test_rejects_empty_logits_and_bad_rates(self):
    with self.assertRaisesRegex(ValueError, "at least one logit"):
      recalibration.logit_shift(np.zeros(0), 0.1)
    for rate in (0.0, 1.0, -0.1):
      with self.assertRaisesRegex(ValueError, "rate in"):
        recalibration.logit_shift(np.zeros(3), rate)


class _SimulatedWorldTest(tf.test.TestCase):
  """4,000 training and 4,000 test impressions, and the training rates."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = datasets.make_synthetic_data(testing.new_dir(),
                                            num_train=4000, num_test=4000)
    cls.rates = base_rates.read_base_rates(
        layout.stats_beside(cls.data["vocab_dir"]))


class RecalibrateTest(_SimulatedWorldTest):
  """A model whose output biases are deliberately wrong is corrected."""


  def test_mis_set_biases_are_corrected(self):
    wrong = base_rates.BaseRates(ctr=0.7, cvr=0.9)
    model = model_lib.build_model(
        testing.TINY_MODEL, config_lib.LossConfig(loss="esmm"),
        vocab.load_vocabularies(self.data["vocab_dir"]), base_rates=wrong,
        seed=5)
    held_out = data.make_dataset(
        self.data["train"], 256, training=False,
        split=data.HashSplit(0.5, validation=True))
    before = evaluation.predict_keras_model(model, self.data["test"], 512)
    shifts = recalibration.recalibrate(model, held_out, self.rates)
    after = evaluation.predict_keras_model(model, self.data["test"], 512)
    clicked = after["click"] > 0.5
    clicks, count = int(clicked.sum()), len(clicked)
    ctr_tolerance = rate_tolerance(self.rates.ctr, count, 4000)
    cvr_tolerance = rate_tolerance(self.rates.cvr, clicks,
                                   round(self.rates.ctr * 4000))
    # Without the shift the model is far off; with it, within sampling error
    # of the test data's own rates.
    self.assertGreater(abs(before["ctr"].mean() - after["click"].mean()),
                       5 * ctr_tolerance)
    self.assertGreater(abs(before["cvr"][clicked].mean()
                           - after["conversion"][clicked].mean()),
                       5 * cvr_tolerance)
    self.assertLess(abs(after["ctr"].mean() - after["click"].mean()),
                    ctr_tolerance)
    self.assertLess(abs(after["cvr"][clicked].mean()
                        - after["conversion"][clicked].mean()), cvr_tolerance)
    self.assertLess(shifts["ctr"], 0.0)
    self.assertLess(shifts["cvr"], 0.0)


class TrainerRecalibrationTest(_SimulatedWorldTest):
  """escm2-train's default ends calibrated, in the saved weights."""


  def train(self, **overrides):
    # Output biases started at 0 (pCTR 0.5) and a short, slow run: the mean
    # is far from the click rate unless it is recalibrated.
    config = testing.tiny_config(
        self.data, os.path.join(testing.new_dir(), "model"), epochs=2,
        base_rate_init=False, learning_rate=1e-4, validation_fraction=0.5,
        loss="ipw", seed=5, **overrides)
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
