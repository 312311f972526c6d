"""Tests of escm2_tf.layers.common."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import numpy as np
import tensorflow as tf

from escm2_tf import layers
from escm2_tf.layers import common


class InitializerTest(tf.test.TestCase):

  def test_stacked_glorot_uses_each_kernels_fans(self):
    # Glorot-uniform of one [8, 4] kernel: limit sqrt(6 / 12) = 0.707.
    values = layers.stacked_glorot(8, 4, seed=0)((50, 8, 4)).numpy()
    self.assertLessEqual(np.abs(values).max(), np.sqrt(0.5))
    # Uniform on [-l, l] has standard deviation l / sqrt(3) = 0.408.
    self.assertAllClose(values.std(), np.sqrt(0.5 / 3), rtol=0.05)

  def test_offset_seed(self):
    self.assertEqual(layers.offset_seed(7, 3), 10)
    self.assertIsNone(layers.offset_seed(None, 3))


class TaskLayerTest(tf.test.TestCase):

  def test_config_holds_the_shared_arguments(self):
    layer = common.TaskLayer(3, activation="tanh", dropout=0.2, seed=4,
                             name="shared")
    config = layer.get_config()
    self.assertEqual({k: config[k] for k in
                      ("num_tasks", "activation", "dropout", "seed", "name")},
                     {"num_tasks": 3, "activation": "tanh", "dropout": 0.2,
                      "seed": 4, "name": "shared"})
    self.assertEqual(layer.dropout.seed, 5)


if __name__ == "__main__":
  tf.test.main()
