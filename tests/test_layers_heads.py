"""Tests of escm2_tf.layers.heads."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import numpy as np
import tensorflow as tf

import layer_testing
from escm2_tf import layers
from escm2_tf import schema

_LOGITS = tf.constant([[0.0, 1.0, 3.0], [-2.0, 0.5, -4.0]])


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


class HeadsTest(tf.test.TestCase):

  def test_outputs_match_numpy(self):
    outputs = layers.Heads(with_imputation=True)(_LOGITS)
    self.assertCountEqual(outputs, schema.OUTPUT_NAMES + (schema.IMPUTATION,))
    ctr, cvr = _sigmoid([0.0, -2.0]), _sigmoid([1.0, 0.5])
    self.assertAllClose(outputs["ctr"], ctr)
    self.assertAllClose(outputs["cvr"], cvr)
    self.assertAllClose(outputs["ctcvr"], ctr * cvr)
    self.assertAllClose(outputs["imputation"], np.log1p(np.exp([3.0, -4.0])))
    # A cross-entropy, not a probability: it may exceed 1.
    self.assertGreater(outputs["imputation"][0], 1.0)

  def test_pseudo_label_is_a_probability(self):
    outputs = layers.Heads(True, pseudo_label=True)(_LOGITS)
    self.assertAllClose(outputs["imputation"], _sigmoid([3.0, -4.0]))
    self.assertAllClose(outputs["ctr"], _sigmoid([0.0, -2.0]))

  def test_two_tasks_have_no_imputation(self):
    outputs = layers.Heads(False)(_LOGITS[:, :2])
    self.assertCountEqual(outputs, schema.OUTPUT_NAMES)

  def test_logits_of_the_wrong_width_are_refused(self):
    with self.assertRaisesRegex(ValueError, r"logits \[B, 2\]"):
      layers.Heads(False)(_LOGITS)
    with self.assertRaisesRegex(ValueError, r"logits \[B, 3\]"):
      layers.Heads(True)(_LOGITS[:, :2])

  def test_config_round_trip(self):
    for with_imputation, pseudo_label, logits in (
        (False, False, _LOGITS[:, :2]), (True, False, _LOGITS),
        (True, True, _LOGITS)):
      rebuilt = layer_testing.assert_layer_serializes(
          self, layers.Heads(with_imputation, pseudo_label, name="heads"),
          logits)
      self.assertEqual(rebuilt.with_imputation, with_imputation)
      self.assertEqual(rebuilt.pseudo_label, pseudo_label)


if __name__ == "__main__":
  tf.test.main()
