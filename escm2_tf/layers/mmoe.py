"""``MMoE``: the experts' first layer and all gates as one matrix product."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

from typing import Any, Sequence

import tensorflow as tf
import tf_keras as keras

from escm2_tf.layers import common


@keras.saving.register_keras_serializable(package="escm2_tf")
class MMoE(common.TaskLayer):
  """Multi-gate mixture of experts (Ma et al., KDD 2018).

  Input x [B, I]; output [B, num_tasks, expert_units[-1]]: task t's
  y_t = Σ_e softmax(x·G_t + g_t)_e · f_e(x), its softmax gate mixing the
  experts f_e (MLPs of ``expert_units``). The experts' first layer and all
  gates read the same input, so they run as one [I, E*U + T*E] matrix
  product.

  Example:

    mmoe = MMoE(num_experts=4, expert_units=(16, 8), num_tasks=3, seed=0)
    mmoe(tf.ones([32, 10])).shape   # [32, 3, 8]
    mmoe.gates(tf.ones([32, 10]))   # [32, 3, 4], rows summing to 1

  Args:
    num_experts: E, the experts every task's gate mixes.
    expert_units: The widths of each expert's layers; the last is U.
    num_tasks: T, one gate (and one output row) per task.
    activation: The experts' activation.
    dropout: The dropout rate after each expert layer.
    seed: Seeds the kernels and the dropout; None draws them.
  """

  def __init__(self, num_experts: int, expert_units: Sequence[int],
               num_tasks: int, *, activation: str = "relu",
               dropout: float = 0.0, seed: int | None = None, **kwargs):
    super().__init__(num_tasks, activation=activation, dropout=dropout,
                     seed=seed, **kwargs)
    self.num_experts = num_experts
    self.expert_units = tuple(expert_units)

  def build(self, input_shape: tf.TensorShape):
    input_shape = tf.TensorShape(input_shape)
    if input_shape.rank != 2 or input_shape[-1] is None:
      raise ValueError(f"MMoE expects inputs [B, I] with a known I, got "
                       f"{input_shape}.")
    fan_in = int(input_shape[-1])
    self.gate_kernel = self.add_weight(
        "gate_kernel", shape=(fan_in, self.num_tasks, self.num_experts),
        initializer=common.stacked_glorot(fan_in, self.num_experts,
                                          common.offset_seed(self.seed, 0)))
    self.gate_bias = self.add_weight(
        "gate_bias", shape=(self.num_tasks, self.num_experts),
        initializer="zeros")
    # The first kernel is [I, E, U] (input-major, for the fused product);
    # deeper ones are [E, U, V].
    shapes = [(fan_in, self.num_experts, self.expert_units[0])] + [
        (self.num_experts, u, v)
        for u, v in zip(self.expert_units, self.expert_units[1:])]
    self.kernels, self.biases = [], []
    for layer, shape in enumerate(shapes):
      self.kernels.append(self.add_weight(
          f"expert_kernel_{layer}", shape=shape,
          initializer=common.stacked_glorot(
              shape[-2] if layer else fan_in, shape[-1],
              common.offset_seed(self.seed, 2 * layer + 2))))
      self.biases.append(self.add_weight(
          f"expert_bias_{layer}", shape=(self.num_experts, shape[-1]),
          initializer="zeros"))
    super().build(input_shape)

  def _first_layer(self, inputs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The experts' first pre-activations [B, E, U], gate logits [B, T, E]."""
    fan_in = tf.shape(self.kernels[0])[0]
    experts_width = self.num_experts * self.expert_units[0]
    fused = tf.matmul(inputs, tf.concat(
        [tf.reshape(self.kernels[0], [fan_in, experts_width]),
         tf.reshape(self.gate_kernel, [fan_in, -1])], axis=1))
    experts, gates = tf.split(
        fused, [experts_width, self.num_tasks * self.num_experts], axis=1)
    experts = tf.reshape(experts, [-1, self.num_experts, self.expert_units[0]])
    gates = tf.reshape(gates, [-1, self.num_tasks, self.num_experts])
    return experts + self.biases[0], gates + self.gate_bias

  def gates(self, inputs: tf.Tensor) -> tf.Tensor:
    """Each task's expert weights [B, num_tasks, num_experts]; rows sum to 1."""
    return tf.nn.softmax(self._first_layer(inputs)[1])

  def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
    hidden, gate_logits = self._first_layer(inputs)
    hidden = self.dropout(self.activation(hidden), training=training)
    for kernel, bias in zip(self.kernels[1:], self.biases[1:]):
      hidden = tf.einsum("beu,euv->bev", hidden, kernel) + bias
      hidden = self.dropout(self.activation(hidden), training=training)
    gates = tf.nn.softmax(gate_logits)
    # [B, T, E] @ [B, E, U]: measured faster than broadcasting to
    # [B, T, E, U] and summing.
    return tf.matmul(gates, hidden)

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(), "num_experts": self.num_experts,
            "expert_units": list(self.expert_units)}
