"""``TaskTowers``: every task's tower as one batched matrix product a layer."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

from typing import Any, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from escm2_tf.layers import common


@keras.saving.register_keras_serializable(package="escm2_tf")
class TaskTowers(common.TaskLayer):
  """One MLP tower per task ending in a logit, all computed together.

  Input [B, num_tasks, H] (task t's tower reads row t) or [B, H] (shared by
  every tower); output the logits [B, num_tasks]. Task t's tower is
  h ← act(h·W_t + b_t) through ``units``, then the logit h·w_t + c_t. The
  T towers' kernels are stacked [T, in, out], so each layer is T matrix
  products in one op.

  Example:

    towers = TaskTowers(num_tasks=3, units=(16,), seed=0,
                        output_biases=(-3.0, -2.0, 0.5))
    towers(tf.ones([32, 3, 8])).shape   # [32, 3]: a logit per task
    towers(tf.ones([32, 8])).shape      # [32, 3]: one input for all

  Args:
    num_tasks: T, the towers.
    units: The hidden widths of every tower (may be empty).
    activation: The hidden layers' activation.
    dropout: The dropout rate after each hidden layer.
    seed: Seeds the kernels and the dropout; None draws them.
    output_biases: Each tower's initial logit bias (default 0), e.g. the
      base rates' log-odds, so that the model starts calibrated.
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
    input_shape = tf.TensorShape(input_shape)
    per_task = (input_shape.rank == 3 and
                input_shape[1] in (None, self.num_tasks))
    if not (input_shape.rank == 2 or per_task) or input_shape[-1] is None:
      raise ValueError(f"TaskTowers expects inputs [B, {self.num_tasks}, H] "
                       f"or [B, H] with a known H, got {input_shape}.")
    fan_in = int(input_shape[-1])
    self.kernels, self.biases = [], []
    for layer, units in enumerate(self.units + (1,)):
      self.kernels.append(self.add_weight(
          f"kernel_{layer}", shape=(self.num_tasks, fan_in, units),
          initializer=common.stacked_glorot(
              fan_in, units, common.offset_seed(self.seed, 2 * layer + 2))))
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
