"""``FusedEmbedding``: every field's ids looked up and pooled in one table.

All fields share one table, looked up and pooled together: one hash-table
lookup per field, one ``tf.unique`` over the rows of the batch, one gather of
the distinct rows and one sparse-dense matrix product that pools them.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import types
from typing import Any, Mapping

import numpy as np
import tensorflow as tf
import tf_keras as keras

from escm2_tf import schema
from escm2_tf import vocab
# Table rows are int32: tf.unique and the gathers are faster on them.
_MAX_ROWS = np.iinfo(np.int32).max


def _sparse_matmul(sparse: tf.SparseTensor, dense: tf.Tensor) -> tf.Tensor:
  """``sparse @ dense``, differentiable in ``dense`` only.

  TensorFlow's own gradient also differentiates the sparse values, a gather
  of both operands at every non-zero that pooling never needs.
  """

  @tf.custom_gradient
  def matmul(dense):
    def grad(upstream):
      return tf.sparse.sparse_dense_matmul(sparse, upstream, adjoint_a=True)
    return tf.sparse.sparse_dense_matmul(sparse, dense), grad

  return matmul(dense)


def pool_segments(embeddings: tf.Tensor, segment_ids: tf.Tensor,
                  num_segments: tf.Tensor, mode: str,
                  weights: tf.Tensor | None = None,
                  lengths: tf.Tensor | None = None,
                  positions: tf.Tensor | None = None) -> tf.Tensor:
  """Sum or mean of the (optionally weighted) rows of each segment.

  Value ``n`` adds row ``positions[n]`` of ``embeddings`` to segment
  ``segment_ids[n]``. The pooling is a sparse [S, R] by dense [R, D] matrix
  product: on CPUs both it and its gradient (the transposed product) are
  several times faster than segment sums over gathered rows, whose gradient
  needs an unsorted segment sum.

  Args:
    embeddings: [R, D] rows.
    segment_ids: int [N], the segment of every value.
    num_segments: The number of segments S; empty ones pool to zeros.
    mode: ``"sum"`` or ``"mean"``; the weighted mean divides by the weights'
      sum.
    weights: Optional float32 [N] value weights.
    lengths: Optional int [S] values per segment, which the unweighted mean
      divides by; computed from ``segment_ids`` when not given.
    positions: Optional int [N], the row of every value; by default value
      ``n`` is row ``n`` (then R = N).

  Returns:
    [S, D] pooled rows.
  """
  segment_ids = tf.cast(segment_ids, tf.int64)
  num_segments = tf.cast(num_segments, tf.int64)
  if positions is None:
    positions = tf.range(tf.size(segment_ids, out_type=tf.int64))
  values = (tf.ones_like(segment_ids, dtype=embeddings.dtype)
            if weights is None else tf.cast(weights, embeddings.dtype))
  pooling = tf.SparseTensor(
      tf.stack([segment_ids, tf.cast(positions, tf.int64)], axis=1), values,
      tf.stack([num_segments, tf.shape(embeddings, out_type=tf.int64)[0]]))
  pooled = _sparse_matmul(pooling, embeddings)
  if mode == "sum":
    return pooled
  if weights is not None:
    totals = tf.math.unsorted_segment_sum(values, segment_ids, num_segments)
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


def _segment_ids(lengths: tf.Tensor) -> tf.Tensor:
  """[N] the segment of every value, given the [S] values per segment."""
  splits = tf.concat([tf.zeros([1], tf.int64), tf.cumsum(lengths)], axis=0)
  # RaggedTensorToSparse writes the row ids in one pass; tf.repeat builds a
  # [S, max length] mask first and is about twice as slow.
  placeholder = tf.zeros([splits[-1]], tf.int8)
  return tf.RaggedTensor.from_row_splits(
      placeholder, splits, validate=False).to_sparse().indices[:, 0]


@keras.saving.register_keras_serializable(package="escm2_tf")
class FusedEmbedding(keras.layers.Layer):
  """Looks up and pools the ids of all fields in one shared table.

  Field ``f`` owns rows ``[offset_f, offset_f + len(vocab_f) + oov_buckets)``:
  its vocabulary in order, then its OOV rows. Ids outside the vocabulary
  (unknown, negative or too large) go to OOV row ``id mod oov_buckets``.

  A batch's ids repeat a lot (a popular shop appears in many users'
  behaviour), so the layer gathers each distinct row once; its gradient is
  then an ``IndexedSlices`` over distinct rows, which a row-wise optimizer
  (``optimizers.LazyAdam``) applies without touching the rest of the table.

  Input: a dict with an int64 ``tf.RaggedTensor`` [B, None] per field (and,
  with ``use_weights``, float32 ``<field>_w`` for ``schema.WEIGHTED_FIELDS``).
  Output: float32 [B, num_fields * embedding_dim], fields in vocabulary order.

  ``get_config`` holds the vocabularies inline, as lists of ints in field
  order (as Keras' ``IntegerLookup`` holds an inline vocabulary): the lookup
  tables are not weights, so the config alone must rebuild them. That makes
  the config as large as the vocabularies (one JSON number per id);
  ``ESCM2Model`` itself is rebuilt from its ``ModelConfig`` and the
  vocabulary files instead (``run_dir.restore_model``).

  Example:

    embedding = FusedEmbedding({"205": np.array([21, 22]),
                                "150_14": np.array([7])}, embedding_dim=4)
    embedding({"205": tf.ragged.constant([[21], [99]], tf.int64),
               "150_14": tf.ragged.constant([[7, 7], []], tf.int64)})
    # [2, 8]: per row, the field 205 embedding then 150_14's (summed);
    # 99 is unknown (205's OOV row) and the empty 150_14 row pools to 0.
    embedding.embeddings.shape   # [(2 + 1) + (1 + 1), 4]: one OOV row each

  Args:
    vocabularies: Field name -> its raw ids in [0, ``vocab.MAX_ID``], in
      row order; the fields' order is the output's.
    embedding_dim: D, the width of every field's embedding.
    oov_buckets: OOV rows per field.
    pooling: ``"sum"`` or ``"mean"`` of a row's (weighted) embeddings.
    use_weights: Whether ``schema.WEIGHTED_FIELDS`` weigh their ids by their
      ``<field>_w`` input.
    initializer: The table's initializer.
    l2: The L2 penalty per use of a row, averaged over the batch
      (``layer.losses``).
  """

  def __init__(self, vocabularies: Mapping[str, np.ndarray],
               embedding_dim: int, *, oov_buckets: int = 1,
               pooling: str = "sum", use_weights: bool = False,
               initializer: keras.initializers.Initializer | str = "uniform",
               l2: float = 0.0, **kwargs):
    super().__init__(**kwargs)
    self.fields = tuple(vocabularies)
    if not self.fields:
      raise ValueError("FusedEmbedding needs at least one field.")
    # A read-only view: Keras would track a plain dict as a checkpoint node.
    self.vocabularies = types.MappingProxyType(
        {f: np.asarray(vocabularies[f], np.int64) for f in self.fields})
    self.embedding_dim = embedding_dim
    self.oov_buckets = oov_buckets
    self.pooling = pooling
    self.use_weights = use_weights
    self.initializer = keras.initializers.get(initializer)
    self.l2 = l2
    self.weighted_fields = tuple(
        f for f in self.fields if use_weights and f in schema.WEIGHTED_FIELDS)
    sizes = [len(self.vocabularies[f]) + oov_buckets for f in self.fields]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    self.num_rows = int(offsets[-1])
    if self.num_rows > _MAX_ROWS:
      raise ValueError(f"FusedEmbedding holds at most {_MAX_ROWS} rows, the "
                       f"vocabularies need {self.num_rows}.")
    for field, ids in self.vocabularies.items():
      if ids.size and (ids.min() < 0 or ids.max() > vocab.MAX_ID):
        raise ValueError(f"Vocabulary of field {field} has ids outside "
                         f"[0, {vocab.MAX_ID}].")
    self._offsets = offsets[:-1]
    self._oov_start = offsets[1:] - oov_buckets

  def build(self, input_shape: Any = None):
    """The lookup tables and the embedding table; the inputs do not matter."""
    del input_shape  # Every size follows from the vocabularies.
    self.tables = [self._field_table(self.vocabularies[field], start, oov)
                   for field, start, oov in zip(self.fields, self._offsets,
                                                self._oov_start)]
    # Outside the layer's name scope, as when it was made in the
    # constructor: parameter-server shards and the trainer's report name it
    # "embeddings".
    with tf.name_scope(""):
      self.embeddings = self.add_weight(
          "embeddings", shape=(self.num_rows, self.embedding_dim),
          initializer=self.initializer, trainable=True)
    super().build(None)

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(),
            "vocabularies": {f: ids.tolist()
                             for f, ids in self.vocabularies.items()},
            "embedding_dim": self.embedding_dim,
            "oov_buckets": self.oov_buckets, "pooling": self.pooling,
            "use_weights": self.use_weights,
            "initializer": keras.initializers.serialize(self.initializer),
            "l2": self.l2}

  def _field_table(self, ids: np.ndarray, start: int,
                   oov_start: int) -> tf.lookup.StaticHashTable:
    """Raw id -> row of one field; unknown ids get ``default_value``."""
    rows = start + np.arange(ids.size, dtype=np.int64)
    if not ids.size:
      # TensorFlow refuses empty tables. -1 is never a vocabulary id; it
      # maps to its own OOV row, as any unknown id does.
      ids = np.array([-1], np.int64)
      rows = np.array([oov_start + (-1 % self.oov_buckets)], np.int64)
    # With one OOV row the table's default is that row: no further ops.
    default = oov_start if self.oov_buckets == 1 else -1
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(ids, rows.astype(np.int32)),
        default_value=np.int32(default))

  def field_rows(self, field_index: int, ids: tf.Tensor) -> tf.Tensor:
    """The int32 table rows of the int64 ``ids`` of field ``field_index``."""
    found = self.tables[field_index].lookup(ids)
    if self.oov_buckets == 1:
      return found
    oov = self._oov_start[field_index] + tf.math.floormod(ids,
                                                          self.oov_buckets)
    return tf.where(found >= 0, found, tf.cast(oov, tf.int32))

  def rows(self, field_index: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
    """The table rows of ``ids`` of the fields at ``field_index`` (both [N])."""
    field_index = tf.cast(field_index, tf.int32)
    num_fields = len(self.fields)
    parts = tf.dynamic_partition(tf.cast(ids, tf.int64), field_index,
                                 num_fields)
    positions = tf.dynamic_partition(tf.range(tf.size(ids)), field_index,
                                     num_fields)
    return tf.dynamic_stitch(
        positions, [self.field_rows(f, part) for f, part in enumerate(parts)])

  def call(self, inputs: Mapping[str, tf.RaggedTensor]) -> tf.Tensor:
    missing = [f for f in self.fields if f not in inputs]
    if missing:
      raise ValueError(f"FusedEmbedding's inputs lack field(s) "
                       f"{', '.join(missing)}.")
    ragged = [inputs[f] for f in self.fields]
    batch_size = ragged[0].nrows(out_type=tf.int64)
    # Field-major segments: segment s = field * B + example.
    lengths = tf.concat([tf.cast(r.row_lengths(), tf.int64) for r in ragged],
                        axis=0)
    num_segments = batch_size * len(self.fields)
    rows = tf.concat([self.field_rows(f, tf.cast(r.values, tf.int64))
                      for f, r in enumerate(ragged)], axis=0)
    # int32 positions: tf.unique's hash map is faster on them than on int64.
    unique_rows, positions = tf.unique(rows, out_idx=tf.int32)
    # embedding_lookup, not gather: gather on a ShardedVariable (parameter
    # servers) returns the rows grouped by shard, not in the order asked.
    embedded = tf.nn.embedding_lookup(self.embeddings, unique_rows)
    if self.l2:
      # Each use of a row counts, as if every id's row were penalised.
      uses = tf.math.bincount(
          positions, minlength=tf.size(unique_rows),
          dtype=tf.float32)
      penalty = tf.reduce_sum(uses * tf.reduce_sum(tf.square(embedded), 1))
      self.add_loss(self.l2 * penalty /
                    tf.cast(tf.maximum(batch_size, 1), tf.float32))
    weights = None
    if self.weighted_fields:
      weights = tf.concat(
          [align_weights(f, r, inputs[schema.weight_name(f)])
           if f in self.weighted_fields else tf.ones_like(r.values, tf.float32)
           for f, r in zip(self.fields, ragged)], axis=0)
    pooled = pool_segments(embedded, _segment_ids(lengths), num_segments,
                           self.pooling, weights, lengths, positions)
    pooled = tf.reshape(pooled, [len(self.fields), -1, self.embedding_dim])
    return tf.reshape(tf.transpose(pooled, [1, 0, 2]),
                      [-1, len(self.fields) * self.embedding_dim])
