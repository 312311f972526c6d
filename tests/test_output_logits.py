"""Tests of escm2_tf.output_logits: the shift of logits to a rate."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import math

import numpy as np
import tensorflow as tf

from escm2_tf import output_logits


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


class LogitShiftTest(tf.test.TestCase):

  def test_matches_newton(self):
    logits = np.random.default_rng(0).normal(-2.0, 1.5, size=5000)
    for rate in (0.001, 0.04, 0.3, 0.9):
      shift = output_logits.logit_shift(logits, rate)
      self.assertAllClose(shift, newton_shift(logits, rate), atol=1e-9)
      mean = (1.0 / (1.0 + np.exp(-(logits + shift)))).mean()
      self.assertAllClose(mean, rate, rtol=1e-9)

  def test_weighted_matches_newton(self):
    rng = np.random.default_rng(1)
    logits = rng.normal(-3.0, 1.0, size=5000)
    weights = rng.uniform(0.0, 1.0, size=5000) * (rng.random(5000) < 0.3)
    for rate in (0.01, 0.2):
      shift = output_logits.logit_shift(logits, rate, weights)
      self.assertAllClose(shift, newton_shift(logits, rate, weights),
                          atol=1e-9)
    # Zero weights do not count: the same shift as the weighted subset.
    kept = weights > 0
    self.assertAllClose(
        output_logits.logit_shift(logits, 0.05, kept.astype(float)),
        output_logits.logit_shift(logits[kept], 0.05), atol=1e-12)

  def test_calibrated_logits_need_no_shift(self):
    logits = np.full(10, math.log(0.04 / 0.96))
    self.assertAllClose(output_logits.logit_shift(logits, 0.04), 0.0,
                        atol=1e-9)

  def test_rejects_empty_logits_and_bad_rates(self):
    with self.assertRaisesRegex(ValueError, "at least one logit"):
      output_logits.logit_shift(np.zeros(0), 0.1)
    with self.assertRaisesRegex(ValueError, "positive weight"):
      output_logits.logit_shift(np.zeros(3), 0.1, np.zeros(3))
    for rate in (0.0, 1.0, -0.1):
      with self.assertRaisesRegex(ValueError, "rate in"):
        output_logits.logit_shift(np.zeros(3), rate)

