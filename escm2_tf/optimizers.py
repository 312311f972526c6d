"""Optimizers for ESCM2: Keras' Adam, and a row-wise ("lazy") Adam.

Keras' ``Adam`` decays the moment estimates of every row of the embedding
table at every step, even when the gradient is an ``IndexedSlices`` that
touches a few thousand of its rows: with PaddleRec's 737k x 12 table that
whole-table update costs more than the rest of the training step.
``LazyAdam`` applies Adam's update to the rows present in the batch only,
as TensorFlow Addons' LazyAdam did (Addons has reached its end of life).
Dense gradients (the MMoE, the towers) get Keras' Adam update unchanged, so
one optimizer serves the whole model.

For a row present in step t (the optimizer's step count, not the row's),
with its gradient g (duplicates summed):

    m <- beta_1 * m + (1 - beta_1) * g
    v <- beta_2 * v + (1 - beta_2) * g^2
    row <- row - lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + eps)

Rows absent from the step keep their value and their moments. Dense Adam
would instead decay their moments and keep moving them along their old
momentum.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import tensorflow as tf
import tf_keras as keras

from escm2_tf import config as config_lib

ADAM = config_lib.ADAM
LAZY_ADAM = config_lib.LAZY_ADAM
OPTIMIZERS = config_lib.OPTIMIZERS


def _sum_duplicates(gradient: tf.IndexedSlices) -> tf.IndexedSlices:
  """The same gradient with each index once, its values summed."""
  indices, positions = tf.unique(gradient.indices, out_idx=tf.int64)
  count = tf.size(gradient.indices, out_type=tf.int64)
  unique_count = tf.size(indices, out_type=tf.int64)

  def summed() -> tf.Tensor:
    # A sparse-dense product sums rows several times faster on CPUs than
    # tf.math.unsorted_segment_sum, whose kernel adds row by row.
    summation = tf.SparseTensor(
        tf.stack([positions, tf.range(count)], axis=1),
        tf.ones([count], gradient.values.dtype),
        tf.stack([unique_count, count]))
    rows = tf.sparse.sparse_dense_matmul(
        summation, tf.reshape(gradient.values, [count, -1]))
    return tf.reshape(rows, tf.concat(
        [[unique_count], tf.shape(gradient.values, out_type=tf.int64)[1:]],
        axis=0))

  # FusedEmbedding's gradients never repeat an index: skip the sum then.
  values = tf.cond(unique_count < count, summed, lambda: gradient.values)
  return tf.IndexedSlices(values, indices, gradient.dense_shape)


class LazyAdam(keras.optimizers.Adam):
  """Adam whose sparse updates touch only the rows in the gradient.

  Takes Keras ``Adam``'s arguments except ``amsgrad``, ``adaptive_epsilon``,
  ``weight_decay`` (which would decay every row at every step) and
  ``jit_compile``: the sparse update's shapes change every step, which would
  recompile XLA every step, so the update runs as plain TensorFlow ops.
  Checkpoints hold the same slots as Keras' Adam (``m`` and ``v`` per
  variable), so either optimizer restores the other's.
  """

  def __init__(self, learning_rate: float = 1e-3, beta_1: float = 0.9,
               beta_2: float = 0.999, epsilon: float = 1e-7,
               name: str = "LazyAdam", **kwargs):
    for unsupported in ("amsgrad", "adaptive_epsilon", "jit_compile",
                        "weight_decay"):
      if kwargs.pop(unsupported, None):
        raise ValueError(f"LazyAdam does not support {unsupported}.")
    super().__init__(learning_rate=learning_rate, beta_1=beta_1,
                     beta_2=beta_2, epsilon=epsilon, jit_compile=False,
                     name=name, **kwargs)

  def _deduplicate_sparse_grad(self, grads):
    """Sums the values of repeated indices of every ``IndexedSlices``.

    Overrides Keras' version, which sums with ``unsorted_segment_sum``
    whether or not an index repeats.
    """
    return [_sum_duplicates(g) if isinstance(g, tf.IndexedSlices) else g
            for g in grads]

  def update_step(self, gradient, variable):
    if not isinstance(gradient, tf.IndexedSlices):
      return super().update_step(gradient, variable)
    dtype = variable.dtype
    local_step = tf.cast(self.iterations + 1, dtype)
    beta_1 = tf.cast(self.beta_1, dtype)
    beta_2 = tf.cast(self.beta_2, dtype)
    alpha = (tf.cast(self.learning_rate, dtype) *
             tf.sqrt(1 - tf.pow(beta_2, local_step)) /
             (1 - tf.pow(beta_1, local_step)))
    index = self._index_dict[self._var_key(variable)]
    m, v = self._momentums[index], self._velocities[index]
    # apply_gradients sums duplicate indices before calling update_step.
    indices, values = gradient.indices, gradient.values
    m_rows = beta_1 * tf.gather(m, indices) + (1 - beta_1) * values
    v_rows = beta_2 * tf.gather(v, indices) + (1 - beta_2) * tf.square(values)
    rows = tf.gather(variable, indices) - alpha * m_rows / (
        tf.sqrt(v_rows) + self.epsilon)
    m.scatter_update(tf.IndexedSlices(m_rows, indices))
    v.scatter_update(tf.IndexedSlices(v_rows, indices))
    # A gather and a scatter_update are several times faster on CPUs than
    # one scatter_sub, whose kernel updates row by row.
    return variable.scatter_update(tf.IndexedSlices(rows, indices))


def make_optimizer(name: str, learning_rate: float
                   ) -> keras.optimizers.Optimizer:
  """The optimizer ``name`` (one of ``OPTIMIZERS``) at ``learning_rate``.

  ``"lazy_adam"`` is ``LazyAdam``; ``"adam"`` is Keras' Adam, whose sparse
  update decays every row of the embedding table at every step.

  Raises:
    ValueError: An unknown name or a non-positive learning rate.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"Unknown optimizer {name!r}; expected one of "
                     f"{', '.join(OPTIMIZERS)}.")
  if not 0.0 < learning_rate < float("inf"):
    raise ValueError(f"learning_rate must be a positive finite number, got "
                     f"{learning_rate!r}.")
  if name == LAZY_ADAM:
    return LazyAdam(learning_rate)
  return keras.optimizers.Adam(learning_rate)
