"""The ESCM2 network's layers, built for throughput on CPUs.

* ``FusedEmbedding``: one hash-table lookup, one gather and one segment sum for
  all fields together: every field owns a block of rows in one shared table.
* ``MMoE``: the experts' first layer and all gates as one matrix product.
* ``TaskTowers``: all task towers as one batched matrix product per layer.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from escm2_tf import schema
from escm2_tf import vocab

# A lookup key packs the field's index above the id's 56 bits.
_ID_BITS = 56
_MAX_FIELDS = 1 << (63 - _ID_BITS)


def pool_segments(embeddings: tf.Tensor, segment_ids: tf.Tensor,
                  num_segments: tf.Tensor, mode: str,
                  weights: tf.Tensor | None = None,
                  lengths: tf.Tensor | None = None) -> tf.Tensor:
  """Sum or mean of the (optionally weighted) rows of each segment.

  Args:
    embeddings: [N, D] rows.
    segment_ids: int [N], the segment of every row, sorted ascending.
    num_segments: The number of segments S; empty ones pool to zeros.
    mode: ``"sum"`` or ``"mean"``; the weighted mean divides by the weights'
      sum.
    weights: Optional float32 [N] row weights.
    lengths: Optional int [S] rows per segment, which the unweighted mean
      divides by; computed from ``segment_ids`` when not given.

  Returns:
    [S, D] pooled rows.
  """
  if weights is not None:
    embeddings = embeddings * weights[:, tf.newaxis]
  # The sorted kernel is about three times faster than the unsorted one; it
  # stops at the last non-empty segment, so pad the empty tail back.
  pooled = tf.math.segment_sum(embeddings, segment_ids)
  num_segments = tf.cast(num_segments, tf.int64)
  pooled = tf.pad(pooled, [[0, num_segments - tf.shape(pooled,
                                                      out_type=tf.int64)[0]],
                           [0, 0]])
  if mode == "sum":
    return pooled
  if weights is not None:
    totals = tf.math.unsorted_segment_sum(weights, segment_ids, num_segments)
  elif lengths is not None:
    totals = tf.cast(lengths, embeddings.dtype)
  else:
    size = tf.cast(num_segments, tf.int32)
    totals = tf.math.bincount(tf.cast(segment_ids, tf.int32), minlength=size,
                              maxlength=size, dtype=embeddings.dtype)
  return tf.math.divide_no_nan(pooled, totals[:, tf.newaxis])


def align_weights(field: str, ids: tf.RaggedTensor,
                  weights: tf.RaggedTensor) -> tf.Tensor:
  """Every id's weight: its own, or 1.0 where its row carries no weights.

  Serving requests may leave a weight list out; a row with some weights but
  not one per id is malformed and fails, naming the feature.
  """
  id_lengths = ids.row_lengths()
  weight_lengths = tf.cast(weights.row_lengths(), id_lengths.dtype)
  aligned = tf.equal(weight_lengths, id_lengths)
  absent = tf.equal(weight_lengths, 0)
  check = tf.debugging.Assert(
      tf.reduce_all(aligned | absent),
      [f"Every row of {schema.weight_name(field)} must be empty or as long as "
       f"the row of {field}; row lengths:", weight_lengths, id_lengths])
  with tf.control_dependencies([check]):
    has_weight = tf.repeat(aligned & ~absent, id_lengths)
  return tf.tensor_scatter_nd_update(
      tf.ones_like(ids.values, dtype=tf.float32), tf.where(has_weight),
      tf.cast(weights.values, tf.float32))


def _table_entries(vocabularies: Mapping[str, np.ndarray], oov_buckets: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Lookup keys, their rows, and the first OOV row of every field."""
  sizes = [len(ids) + oov_buckets for ids in vocabularies.values()]
  offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
  # Keys are never negative, so -1 is a key no lookup matches: it keeps the
  # table non-empty (TensorFlow refuses empty ones) when no field has ids.
  keys, rows = [np.array([-1], np.int64)], [np.array([-1], np.int64)]
  for index, (field, ids) in enumerate(vocabularies.items()):
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() > vocab.MAX_ID):
      raise ValueError(f"Vocabulary of field {field} has ids outside "
                       f"[0, {vocab.MAX_ID}].")
    keys.append((np.int64(index) << _ID_BITS) | ids)
    rows.append(offsets[index] + np.arange(ids.size, dtype=np.int64))
  return np.concatenate(keys), np.concatenate(rows), offsets[1:] - oov_buckets


class FusedEmbedding(keras.layers.Layer):
  """Looks up and pools the ids of all fields in one shared table.

  Field ``f`` owns rows ``[offset_f, offset_f + len(vocab_f) + oov_buckets)``:
  its vocabulary in order, then its OOV rows. Ids outside the vocabulary
  (unknown, negative or too large) go to OOV row ``id mod oov_buckets``.

  Input: a dict with an int64 ``tf.RaggedTensor`` [B, None] per field (and,
  with ``use_weights``, float32 ``<field>_w`` for ``schema.WEIGHTED_FIELDS``).
  Output: float32 [B, num_fields * embedding_dim], fields in vocabulary order.
  """

  def __init__(self, vocabularies: Mapping[str, np.ndarray],
               embedding_dim: int, *, oov_buckets: int = 1,
               pooling: str = "sum", use_weights: bool = False,
               initializer: keras.initializers.Initializer | str = "uniform",
               l2: float = 0.0, **kwargs):
    super().__init__(**kwargs)
    self.fields = tuple(vocabularies)
    if not 0 < len(self.fields) < _MAX_FIELDS:
      raise ValueError(f"FusedEmbedding takes 1 to {_MAX_FIELDS - 1} fields, "
                       f"got {len(self.fields)}.")
    self.embedding_dim = embedding_dim
    self.oov_buckets = oov_buckets
    self.pooling = pooling
    self.l2 = l2
    self.weighted_fields = tuple(
        f for f in self.fields if use_weights and f in schema.WEIGHTED_FIELDS)
    keys, rows, oov_start = _table_entries(vocabularies, oov_buckets)
    self.num_rows = int(oov_start[-1] + oov_buckets)
    self._oov_start = tf.constant(oov_start)
    self.table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(keys, rows), default_value=-1)
    self.embeddings = self.add_weight(
        "embeddings", shape=(self.num_rows, embedding_dim),
        initializer=initializer, trainable=True)

  def rows(self, field_index: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
    """The table rows of ``ids`` of the fields at ``field_index`` (both [N])."""
    # One shift tells both negative and too large ids apart from valid ones.
    in_range = tf.equal(tf.bitwise.right_shift(ids, _ID_BITS), 0)
    keys = tf.bitwise.bitwise_or(tf.bitwise.left_shift(field_index, _ID_BITS),
                                 tf.bitwise.bitwise_and(ids, vocab.MAX_ID))
    found = self.table.lookup(keys)
    oov = tf.gather(self._oov_start, field_index)
    if self.oov_buckets > 1:
      oov += tf.math.floormod(ids, self.oov_buckets)
    return tf.where(in_range & (found >= 0), found, oov)

  def call(self, inputs: Mapping[str, tf.RaggedTensor]) -> tf.Tensor:
    ragged = [inputs[f] for f in self.fields]
    batch_size = ragged[0].nrows(out_type=tf.int64)
    # Field-major segments: segment s = field * B + example.
    lengths = tf.concat([tf.cast(r.row_lengths(), tf.int64) for r in ragged],
                        axis=0)
    num_segments = batch_size * len(self.fields)
    segment_ids = tf.repeat(tf.range(num_segments), lengths)
    ids = tf.concat([tf.cast(r.values, tf.int64) for r in ragged], axis=0)
    embedded = tf.gather(self.embeddings,
                         self.rows(segment_ids // batch_size, ids))
    if self.l2:
      self.add_loss(self.l2 * tf.reduce_sum(tf.square(embedded)) /
                    tf.cast(tf.maximum(batch_size, 1), tf.float32))
    weights = None
    if self.weighted_fields:
      weights = tf.concat(
          [align_weights(f, r, inputs[schema.weight_name(f)])
           if f in self.weighted_fields else tf.ones_like(r.values, tf.float32)
           for f, r in zip(self.fields, ragged)], axis=0)
    pooled = pool_segments(embedded, segment_ids, num_segments, self.pooling,
                           weights, lengths)
    pooled = tf.reshape(pooled, [len(self.fields), -1, self.embedding_dim])
    return tf.reshape(tf.transpose(pooled, [1, 0, 2]),
                      [-1, len(self.fields) * self.embedding_dim])


def stacked_glorot(fan_in: int, fan_out: int, seed: int | None
                   ) -> keras.initializers.Initializer:
  """Glorot-uniform for a stack of [fan_in, fan_out] kernels.

  Keras' GlorotUniform would count the stack dimension into the fans and
  shrink every kernel by its square root.
  """
  limit = float(np.sqrt(6.0 / (fan_in + fan_out)))
  return keras.initializers.RandomUniform(-limit, limit, seed=seed)


def _seed(seed: int | None, offset: int) -> int | None:
  return None if seed is None else seed + offset


class MMoE(keras.layers.Layer):
  """Multi-gate mixture of experts (Ma et al., KDD 2018).

  Input [B, I]; output [B, num_tasks, expert_units[-1]], task t's softmax
  gate mixing the experts' outputs. The experts' first layer and all gates
  read the same input, so they run as one [I, E*U + T*E] matrix product.
  """

  def __init__(self, num_experts: int, expert_units: Sequence[int],
               num_tasks: int, *, activation: str = "relu",
               dropout: float = 0.0, seed: int | None = None, **kwargs):
    super().__init__(**kwargs)
    self.num_experts = num_experts
    self.expert_units = tuple(expert_units)
    self.num_tasks = num_tasks
    self.activation = keras.activations.get(activation)
    self.dropout = keras.layers.Dropout(dropout, seed=_seed(seed, 1))
    self.seed = seed

  def build(self, input_shape: tf.TensorShape):
    fan_in = int(input_shape[-1])
    self.gate_kernel = self.add_weight(
        "gate_kernel", shape=(fan_in, self.num_tasks, self.num_experts),
        initializer=stacked_glorot(fan_in, self.num_experts,
                                   _seed(self.seed, 0)))
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
                                     _seed(self.seed, 2 * layer + 2))))
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


class TaskTowers(keras.layers.Layer):
  """One MLP tower per task ending in a logit, all computed together.

  Input [B, num_tasks, H] (task t's tower reads row t) or [B, H] (shared by
  every tower); output the logits [B, num_tasks].
  """

  def __init__(self, num_tasks: int, units: Sequence[int], *,
               activation: str = "relu", dropout: float = 0.0,
               seed: int | None = None, **kwargs):
    super().__init__(**kwargs)
    self.num_tasks = num_tasks
    self.units = tuple(units)
    self.activation = keras.activations.get(activation)
    self.dropout = keras.layers.Dropout(dropout, seed=_seed(seed, 1))
    self.seed = seed

  def build(self, input_shape: tf.TensorShape):
    fan_in = int(input_shape[-1])
    self.kernels, self.biases = [], []
    for layer, units in enumerate(self.units + (1,)):
      self.kernels.append(self.add_weight(
          f"kernel_{layer}", shape=(self.num_tasks, fan_in, units),
          initializer=stacked_glorot(fan_in, units,
                                     _seed(self.seed, 2 * layer + 2))))
      self.biases.append(self.add_weight(
          f"bias_{layer}", shape=(self.num_tasks, units), initializer="zeros"))
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
