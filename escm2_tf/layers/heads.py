"""``Heads``: the towers' logits turned into the model's named outputs."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

from typing import Any

import tensorflow as tf
import tf_keras as keras

from escm2_tf import schema


@keras.saving.register_keras_serializable(package="escm2_tf")
class Heads(keras.layers.Layer):
  """Task logits [B, T] -> the named outputs, float32 [B] each.

  ``ctr`` = σ(logit 0) and ``cvr`` = σ(logit 1) are probabilities, and
  ``ctcvr = ctr · cvr`` (ESMM's entire-space product). With a third task,
  ``imputation`` = softplus(logit 2) is DR's imputed CVR cross-entropy: it
  must be non-negative but, unlike a probability, may exceed 1.

  Example:

    heads = Heads(with_imputation=True)
    outputs = heads(tf.zeros([4, 3]))
    # {"ctr": [4], "cvr": [4], "ctcvr": [4], "imputation": [4]}; ctr = 0.5.

  Args:
    with_imputation: Whether the logits have the third (imputation) task.
  """

  def __init__(self, with_imputation: bool, **kwargs):
    super().__init__(**kwargs)
    self.with_imputation = with_imputation

  def call(self, logits: tf.Tensor) -> dict[str, tf.Tensor]:
    num_tasks = 3 if self.with_imputation else 2
    if logits.shape.rank != 2 or logits.shape[1] not in (None, num_tasks):
      raise ValueError(f"Heads expects logits [B, {num_tasks}], got "
                       f"{logits.shape}.")
    # Unstacking differentiates to a stack, cheaper than strided slices.
    tasks = tf.unstack(logits, num=num_tasks, axis=1)
    ctr, cvr = tf.sigmoid(tasks[0]), tf.sigmoid(tasks[1])
    outputs = {schema.CTR: ctr, schema.CVR: cvr, schema.CTCVR: ctr * cvr}
    if self.with_imputation:
      outputs[schema.IMPUTATION] = tf.nn.softplus(tasks[2])
    return outputs

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(), "with_imputation": self.with_imputation}
