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
  ``ctcvr = ctr · cvr`` (ESMM's entire-space product). A third task is the
  ``imputation``: by default softplus(logit 2), DR's imputed CVR
  cross-entropy (non-negative but, unlike a probability, it may exceed 1);
  with ``pseudo_label`` σ(logit 2), a pseudo-label of the conversion (DR-JL,
  MRDR).

  Example:

    heads = Heads(with_imputation=True)
    outputs = heads(tf.zeros([4, 3]))
    # {"ctr": [4], "cvr": [4], "ctcvr": [4], "imputation": [4]}; ctr = 0.5.

  Args:
    with_imputation: Whether the logits have the third (imputation) task.
    pseudo_label: Whether that task is a pseudo-label (a sigmoid) rather
      than a predicted cross-entropy (a softplus).
  """

  def __init__(self, with_imputation: bool, pseudo_label: bool = False,
               **kwargs):
    super().__init__(**kwargs)
    self.with_imputation = with_imputation
    self.pseudo_label = pseudo_label

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
      activation = tf.sigmoid if self.pseudo_label else tf.nn.softplus
      outputs[schema.IMPUTATION] = activation(tasks[2])
    return outputs

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(), "with_imputation": self.with_imputation,
            "pseudo_label": self.pseudo_label}
