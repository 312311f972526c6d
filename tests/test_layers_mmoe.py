"""Tests of escm2_tf.layers.mmoe against numpy references."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

import layer_testing
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

  def test_docstring_example(self):
    mmoe = layers.MMoE(num_experts=4, expert_units=(16, 8), num_tasks=3,
                       seed=0)
    self.assertEqual(mmoe(tf.ones([32, 10])).shape, (32, 3, 8))
    gates = mmoe.gates(tf.ones([32, 10]))
    self.assertEqual(gates.shape, (32, 3, 4))
    self.assertAllClose(tf.reduce_sum(gates, -1), tf.ones([32, 3]))

  def test_inputs_must_be_matrices(self):
    with self.assertRaisesRegex(ValueError, r"MMoE expects inputs \[B, I\]"):
      layers.MMoE(2, (3,), 2)(tf.ones([4, 2, 5]))


class MMoESerializationTest(tf.test.TestCase,
                            parameterized.TestCase):

  @parameterized.named_parameters(
      ("defaults", {}),
      ("every_option", dict(activation="tanh", dropout=0.25, seed=3,
                            name="mmoe")))
  def test_mmoe_config_round_trip(self, options):
    layer = layers.MMoE(4, (6, 5), 3, **options)
    inputs = tf.random.stateless_normal([7, 10], seed=[1, 2])
    layer_testing.assert_layer_serializes(self, layer, inputs, training=False)
    self.assertEqual(layer.get_config()["expert_units"], [6, 5])

  def test_equal_seeds_in_the_config_give_equal_weights(self):
    layer = layers.MMoE(3, (4,), 2, seed=11)
    rebuilt = layers.MMoE.from_config(layer.get_config())
    inputs = tf.ones([2, 5])
    self.assertAllEqual(rebuilt(inputs), layer(inputs))


if __name__ == "__main__":
  tf.test.main()
