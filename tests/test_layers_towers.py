"""Tests of escm2_tf.layers.towers against numpy references."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import os

from absl.testing import parameterized
import numpy as np
import tensorflow as tf
import tf_keras as keras

import layer_testing
import testing
from escm2_tf import layers


class TaskTowersTest(tf.test.TestCase):

  def test_each_task_reads_only_its_row(self):
    towers = layers.TaskTowers(num_tasks=3, units=(4,), seed=0)
    inputs = tf.random.stateless_normal([2, 3, 5], seed=[0, 1])
    logits = towers(inputs)
    self.assertEqual(logits.shape, (2, 3))
    changed = tf.tensor_scatter_nd_add(inputs, [[0, 1]], tf.ones([1, 5]))
    delta = (towers(changed) - logits).numpy()
    self.assertAllEqual(delta[:, [0, 2]], np.zeros((2, 2)))
    self.assertAllEqual(delta[1], np.zeros(3))

  def test_shared_input_and_no_hidden_layers(self):
    towers = layers.TaskTowers(num_tasks=2, units=(), seed=0)
    inputs = tf.random.stateless_normal([4, 6], seed=[2, 3])
    logits = towers(inputs)
    towers.biases[0].assign([[0.5], [-1.0]])
    expected = np.einsum("bi,ti->bt", inputs.numpy(),
                         towers.kernels[0].numpy()[..., 0]) + [0.5, -1.0]
    self.assertEqual(logits.shape, (4, 2))
    self.assertAllClose(towers(inputs), expected, atol=1e-6)

  def test_docstring_example(self):
    towers = layers.TaskTowers(num_tasks=3, units=(16,), seed=0,
                               output_biases=(-3.0, -2.0, 0.5))
    self.assertEqual(towers(tf.ones([32, 3, 8])).shape, (32, 3))
    self.assertEqual(towers(tf.ones([32, 8])).shape, (32, 3))

  def test_inputs_must_match_the_tasks(self):
    with self.assertRaisesRegex(ValueError, r"\[B, 3, H\] or \[B, H\]"):
      layers.TaskTowers(3, (4,))(tf.ones([4, 2, 5]))


class TaskTowersSerializationTest(tf.test.TestCase,
                                  parameterized.TestCase):

  @parameterized.named_parameters(
      ("per_task_inputs", [7, 3, 5], {}),
      ("shared_input", [7, 5], dict(activation="sigmoid", dropout=0.5,
                                    seed=8, name="towers")),
      ("output_biases", [7, 3, 5], dict(output_biases=(-3.0, -2.5, 0.5))))
  def test_task_towers_config_round_trip(self, shape, options):
    layer = layers.TaskTowers(3, (4, 2), **options)
    inputs = tf.random.stateless_normal(shape, seed=[3, 4])
    layer_testing.assert_layer_serializes(self, layer, inputs, training=False)
    self.assertEqual(layer.get_config()["units"], [4, 2])

  def test_output_biases_start_the_logit_biases(self):
    layer = layers.TaskTowers(2, (4,), seed=0, output_biases=(-3.0, 1.5))
    layer(tf.ones([1, 2, 5]))
    self.assertAllEqual(layer.biases[-1], [[-3.0], [1.5]])
    self.assertAllEqual(layer.biases[0], tf.zeros([2, 4]))
    with self.assertRaisesRegex(ValueError, "one output bias per task"):
      layers.TaskTowers(3, (4,), output_biases=(0.0,))

  def test_model_saves_and_loads(self):
    inputs = keras.Input(shape=(6,))
    hidden = layers.MMoE(3, (8,), 3, dropout=0.1, seed=1)(inputs)
    logits = layers.TaskTowers(3, (4,), dropout=0.1, seed=2)(hidden)
    model = keras.Model(inputs, layers.Heads(True)(logits))
    path = os.path.join(testing.new_dir(), "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    self.assertEqual([type(layer) for layer in loaded.layers],
                     [type(layer) for layer in model.layers])
    batch = tf.random.stateless_normal([5, 6], seed=[5, 6])
    expected, outputs = model(batch), loaded(batch)
    self.assertCountEqual(outputs, expected)
    for name in expected:
      self.assertAllClose(outputs[name], expected[name], atol=0, rtol=0)


if __name__ == "__main__":
  tf.test.main()
