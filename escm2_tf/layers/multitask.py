"""Multi-task layers: ``MMoE`` and ``TaskTowers``, batched for CPUs.

* ``MMoE``: the experts' first layer and all gates as one matrix product.
* ``TaskTowers``: all task towers as one batched matrix product per layer.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

from typing import Any, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

def stacked_glorot(fan_in: int, fan_out: int, seed: int | None
                   ) -> keras.initializers.Initializer:
  """Glorot-uniform for a stack of [fan_in, fan_out] kernels.

  Keras' GlorotUniform would count the stack dimension into the fans and
  shrink every kernel by its square root.
  """
  limit = float(np.sqrt(6.0 / (fan_in + fan_out)))
  return keras.initializers.RandomUniform(-limit, limit, seed=seed)


def offset_seed(seed: int | None, offset: int) -> int | None:
  """A distinct seed per initialiser or dropout; None stays None."""
  return None if seed is None else seed + offset


class _TaskLayer(keras.layers.Layer):
  """What ``MMoE`` and ``TaskTowers`` share: tasks, activation, dropout, seed.

  ``seed`` seeds the dropout (``seed + 1``) and the subclass's kernels.
  """

  def __init__(self, num_tasks: int, *, activation: str, dropout: float,
               seed: int | None, **kwargs):
    super().__init__(**kwargs)
    self.num_tasks = num_tasks
    self.activation = keras.activations.get(activation)
    self.dropout_rate = dropout
    self.dropout = keras.layers.Dropout(dropout, seed=offset_seed(seed, 1))
    self.seed = seed

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(), "num_tasks": self.num_tasks,
            "activation": keras.activations.serialize(self.activation),
            "dropout": self.dropout_rate, "seed": self.seed}


@keras.saving.register_keras_serializable(package="escm2_tf")
class MMoE(_TaskLayer):
  """Multi-gate mixture of experts (Ma et al., KDD 2018).

  Input [B, I]; output [B, num_tasks, expert_units[-1]], task t's softmax
  gate mixing the experts' outputs. The experts' first layer and all gates
  read the same input, so they run as one [I, E*U + T*E] matrix product.
  """

  def __init__(self, num_experts: int, expert_units: Sequence[int],
               num_tasks: int, *, activation: str = "relu",
               dropout: float = 0.0, seed: int | None = None, **kwargs):
    super().__init__(num_tasks, activation=activation, dropout=dropout,
                     seed=seed, **kwargs)
    self.num_experts = num_experts
    self.expert_units = tuple(expert_units)

  def build(self, input_shape: tf.TensorShape):
    fan_in = int(input_shape[-1])
    self.gate_kernel = self.add_weight(
        "gate_kernel", shape=(fan_in, self.num_tasks, self.num_experts),
        initializer=stacked_glorot(fan_in, self.num_experts,
                                   offset_seed(self.seed, 0)))
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
          initializer=stacked_glorot(shape[-2] if layer else fan_in,
                                     shape[-1],
                                     offset_seed(self.seed, 2 * layer + 2))))
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


@keras.saving.register_keras_serializable(package="escm2_tf")
class TaskTowers(_TaskLayer):
  """One MLP tower per task ending in a logit, all computed together.

  Input [B, num_tasks, H] (task t's tower reads row t) or [B, H] (shared by
  every tower); output the logits [B, num_tasks]. ``output_biases`` gives
  each tower's logit bias its initial value (default 0).
  """

  def __init__(self, num_tasks: int, units: Sequence[int], *,
               activation: str = "relu", dropout: float = 0.0,
               seed: int | None = None,
               output_biases: Sequence[float] | None = None, **kwargs):
    super().__init__(num_tasks, activation=activation, dropout=dropout,
                     seed=seed, **kwargs)
    if output_biases is not None and len(output_biases) != num_tasks:
      raise ValueError(f"TaskTowers needs one output bias per task "
                       f"({num_tasks}), got {list(output_biases)}.")
    self.units = tuple(units)
    self.output_biases = (None if output_biases is None
                          else [float(b) for b in output_biases])

  def build(self, input_shape: tf.TensorShape):
    fan_in = int(input_shape[-1])
    self.kernels, self.biases = [], []
    for layer, units in enumerate(self.units + (1,)):
      self.kernels.append(self.add_weight(
          f"kernel_{layer}", shape=(self.num_tasks, fan_in, units),
          initializer=stacked_glorot(fan_in, units,
                                     offset_seed(self.seed, 2 * layer + 2))))
      bias_initializer = "zeros"
      if layer == len(self.units) and self.output_biases is not None:
        bias_initializer = keras.initializers.Constant(
            np.reshape(self.output_biases, (self.num_tasks, 1)))
      self.biases.append(self.add_weight(
          f"bias_{layer}", shape=(self.num_tasks, units),
          initializer=bias_initializer))
      fan_in = units
    super().build(input_shape)

  def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
    # Task-major [T, B, H] turns every layer into T large matrix products,
    # measured faster than an einsum over [B, T, H].
    if inputs.shape.rank == 2:
      hidden = tf.matmul(inputs[tf.newaxis], self.kernels[0])
    else:
      hidden = tf.matmul(tf.transpose(inputs, [1, 0, 2]), self.kernels[0])
    hidden += self.biases[0][:, tf.newaxis]
    for kernel, bias in zip(self.kernels[1:], self.biases[1:]):
      hidden = self.dropout(self.activation(hidden), training=training)
      hidden = tf.matmul(hidden, kernel) + bias[:, tf.newaxis]
    return tf.transpose(tf.squeeze(hidden, axis=2))

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(), "units": list(self.units),
            "output_biases": self.output_biases}
