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
momentum, which measurably helps the test AUCs (docs/benchmarks.md).

``LazyAdam(catch_up=True)`` (the optimizer ``"sparse_adam"``) keeps that
benefit at the row-wise price: every row remembers the step it was last
updated, and when it is next present, k steps later, it first receives what
dense Adam's k skipped updates would have done, in closed form:

    row <- row - alpha * m / (sqrt(v) + eps) * r * (1 - r^k) / (1 - r),
        r = beta_1 / sqrt(beta_2)
    m <- beta_1^k * m,  v <- beta_2^k * v

This is dense Adam's trajectory with two approximations: ``alpha`` (the
bias-corrected step size) is held at its current value over the k steps,
and ``eps`` is added once instead of at each step. The tail that a row would
still travel after its last appearance is not applied.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import tensorflow as tf
import tf_keras as keras

from escm2_tf import config as config_lib



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


def _power(base: tf.Tensor, exponents: tf.Tensor) -> tf.Tensor:
  """``base ** exponents`` for a positive scalar base, element-wise.

  As ``exp(exponents * log(base))``: TensorFlow's CPU ``pow`` kernel takes
  the general path for every element, several times slower than ``exp``.
  """
  return tf.exp(exponents * tf.math.log(base))


class LazyAdam(keras.optimizers.Adam):
  """Adam whose sparse updates touch only the rows in the gradient.

  Takes Keras ``Adam``'s arguments except ``amsgrad``, ``adaptive_epsilon``,
  ``weight_decay`` (which would decay every row at every step) and
  ``jit_compile``: the sparse update's shapes change every step, which would
  recompile XLA every step, so the update runs as plain TensorFlow ops.
  Checkpoints hold the same slots as Keras' Adam (``m`` and ``v`` per
  variable), so either optimizer restores the other's; with ``catch_up``
  also the step at which every row was last updated.

  Attributes:
    catch_up: Apply to a row, when it is next present, the updates that
      dense Adam would have given it while it was absent (module docstring).
  """

  def __init__(self, learning_rate: float = 1e-3, beta_1: float = 0.9,
               beta_2: float = 0.999, epsilon: float = 1e-7,
               name: str = "LazyAdam", catch_up: bool = False, **kwargs):
    for unsupported in ("amsgrad", "adaptive_epsilon", "jit_compile",
                        "weight_decay"):
      if kwargs.pop(unsupported, None):
        raise ValueError(f"LazyAdam does not support {unsupported}.")
    super().__init__(learning_rate=learning_rate, beta_1=beta_1,
                     beta_2=beta_2, epsilon=epsilon, jit_compile=False,
                     name=name, **kwargs)
    self.catch_up = catch_up

  def build(self, var_list):
    super().build(var_list)
    if not self.catch_up or hasattr(self, "_last_steps"):
      return
    # The step (1-based) at which each row was last updated; 0 for never.
    self._last_steps = [
        self.add_variable(variable.shape[:1], dtype=tf.int64,
                          name=f"last_step/{self._var_key(variable)}")
        for variable in var_list]

  def get_config(self):
    config = super().get_config()
    config["catch_up"] = self.catch_up
    return config

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
    m_old, v_old = tf.gather(m, indices), tf.gather(v, indices)
    rows = tf.gather(variable, indices)
    if self.catch_up:
      rows, m_old, v_old = self._catch_up(index, indices, rows, m_old, v_old,
                                          alpha)
    m_rows = beta_1 * m_old + (1 - beta_1) * values
    v_rows = beta_2 * v_old + (1 - beta_2) * tf.square(values)
    rows -= alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon)
    m.scatter_update(tf.IndexedSlices(m_rows, indices))
    v.scatter_update(tf.IndexedSlices(v_rows, indices))
    # A gather and a scatter_update are several times faster on CPUs than
    # one scatter_sub, whose kernel updates row by row.
    return variable.scatter_update(tf.IndexedSlices(rows, indices))

  def _catch_up(self, index: int, indices: tf.Tensor, rows: tf.Tensor,
                m: tf.Tensor, v: tf.Tensor, alpha: tf.Tensor
                ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The rows and moments after dense Adam's updates of their absence."""
    dtype = rows.dtype
    last_steps = self._last_steps[index]
    step = tf.cast(self.iterations + 1, tf.int64)
    missed = step - 1 - tf.gather(last_steps, indices)
    # Rows never updated have zero moments: nothing to catch up.
    missed = tf.where(tf.gather(last_steps, indices) > 0, missed,
                      tf.zeros_like(missed))
    shape = tf.concat([tf.shape(missed), tf.ones([tf.rank(rows) - 1],
                                                 tf.int32)], axis=0)
    k = tf.reshape(tf.cast(missed, dtype), shape)
    beta_1 = tf.cast(self.beta_1, dtype)
    beta_2 = tf.cast(self.beta_2, dtype)
    ratio = beta_1 / tf.sqrt(beta_2)
    series = ratio * (1 - _power(ratio, k)) / (1 - ratio)
    rows -= alpha * series * m / (tf.sqrt(v) + self.epsilon)
    last_steps.scatter_update(tf.IndexedSlices(
        tf.fill(tf.shape(indices), step), indices))
    return rows, _power(beta_1, k) * m, _power(beta_2, k) * v


def make_optimizer(name: str, learning_rate: float
                   ) -> keras.optimizers.Optimizer:
  """The optimizer ``name`` (one of ``config.OPTIMIZERS``) at ``learning_rate``.

  ``"lazy_adam"`` is ``LazyAdam``; ``"sparse_adam"`` is
  ``LazyAdam(catch_up=True)``; ``"adam"`` is Keras' Adam, whose sparse
  update decays every row of the embedding table at every step.

  Raises:
    ValueError: An unknown name or a non-positive learning rate.
  """
  if name not in config_lib.OPTIMIZERS:
    raise ValueError(f"Unknown optimizer {name!r}; expected one of "
                     f"{', '.join(config_lib.OPTIMIZERS)}.")
  if not 0.0 < learning_rate < float("inf"):
    raise ValueError(f"learning_rate must be a positive finite number, got "
                     f"{learning_rate!r}.")
  if name == config_lib.LAZY_ADAM:
    return LazyAdam(learning_rate)
  if name == config_lib.SPARSE_ADAM:
    return LazyAdam(learning_rate, catch_up=True, name="SparseAdam")
  return keras.optimizers.Adam(learning_rate)
