"""Tests of escm2_tf.layers.multitask against numpy references."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import os

from absl.testing import parameterized
import numpy as np
import tensorflow as tf
import tf_keras as keras

import layer_testing
import testing
from escm2_tf import layers

class MMoETest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(((16,),), ((8, 4),))
  def test_shapes_and_gates(self, expert_units):
    layer = layers.MMoE(num_experts=5, expert_units=expert_units, num_tasks=3,
                        seed=1)
    inputs = tf.random.stateless_normal([7, 10], seed=[1, 2])
    outputs = layer(inputs)
    self.assertEqual(outputs.shape, (7, 3, expert_units[-1]))
    gates = layer.gates(inputs).numpy()
    self.assertEqual(gates.shape, (7, 3, 5))
    self.assertAllClose(gates.sum(-1), np.ones((7, 3)))
    logits = np.einsum("bi,ite->bte", inputs.numpy(),
                       layer.gate_kernel.numpy()) + layer.gate_bias.numpy()
    softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    self.assertAllClose(gates, softmax, atol=1e-6)

  def test_matches_a_loop_over_experts(self):
    layer = layers.MMoE(num_experts=3, expert_units=(4,), num_tasks=2, seed=3)
    inputs = tf.random.stateless_normal([5, 6], seed=[3, 4])
    layer(inputs)
    layer.biases[0].assign(tf.random.stateless_normal([3, 4], seed=[5, 6]))
    x = inputs.numpy()
    experts = np.stack([np.maximum(x @ layer.kernels[0].numpy()[:, e] +
                                   layer.biases[0].numpy()[e], 0)
                        for e in range(3)], axis=1)
    gates = layer.gates(inputs).numpy()
    expected = np.einsum("bte,beu->btu", gates, experts)
    self.assertAllClose(layer(inputs), expected, atol=1e-5)

  def test_equal_seeds_give_equal_weights(self):
    first = layers.MMoE(4, (3,), 2, seed=9)
    second = layers.MMoE(4, (3,), 2, seed=9)
    inputs = tf.ones([2, 5])
    self.assertAllEqual(first(inputs), second(inputs))
    third = layers.MMoE(4, (3,), 2, seed=10)
    self.assertNotAllClose(first(inputs), third(inputs))


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


class SerializationTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(
      ("defaults", {}),
      ("every_option", dict(activation="tanh", dropout=0.25, seed=3,
                            name="mmoe")))
  def test_mmoe_config_round_trip(self, options):
    layer = layers.MMoE(4, (6, 5), 3, **options)
    inputs = tf.random.stateless_normal([7, 10], seed=[1, 2])
    layer_testing.assert_layer_serializes(self, layer, inputs, training=False)
    self.assertEqual(layer.get_config()["expert_units"], [6, 5])

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

  def test_equal_seeds_in_the_config_give_equal_weights(self):
    layer = layers.MMoE(3, (4,), 2, seed=11)
    rebuilt = layers.MMoE.from_config(layer.get_config())
    inputs = tf.ones([2, 5])
    self.assertAllEqual(rebuilt(inputs), layer(inputs))

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
