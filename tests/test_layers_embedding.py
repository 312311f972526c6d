"""Tests of escm2_tf.layers.embedding against numpy references."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import os

from absl.testing import parameterized
import numpy as np
import tensorflow as tf
import tf_keras as keras

import layer_testing
import testing

from escm2_tf import layers
from escm2_tf import schema
from escm2_tf import vocab

# Two weighted behaviour fields and a plain one, with their vocabularies.
_VOCABULARIES = {"109_14": np.array([11, 12, 13], np.int64),
                 "205": np.array([21, 22], np.int64),
                 "150_14": np.array([], np.int64)}
_WEIGHTED = ("109_14", "150_14")


def _ragged(rows, dtype):
  return tf.ragged.constant(rows, dtype=dtype, row_splits_dtype=tf.int64)


def _inputs():
  ids = {"109_14": [[11, 13, 99], [], [12], [-5, 1 << 60]],
         "205": [[22], [21], [7], []],
         "150_14": [[4, 5], [], [6], []]}
  weights = {"109_14_w": [[0.5, 2.0, 1.0], [], [], [1.0, 3.0]],
             "150_14_w": [[1.5, 0.5], [], [2.0], []]}
  inputs = {name: _ragged(rows, tf.int64) for name, rows in ids.items()}
  inputs.update({name: _ragged(rows, tf.float32)
                 for name, rows in weights.items()})
  return ids, weights, inputs


class PoolSegmentsTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.product(mode=("sum", "mean"), weighted=(False, True))
  def test_matches_numpy(self, mode, weighted):
    rng = np.random.default_rng(0)
    num_segments = 9
    # Segments 0, 4 and the tail 7, 8 are empty.
    segment_ids = np.sort(rng.choice([1, 2, 3, 5, 6], size=20))
    embeddings = rng.normal(size=(20, 3)).astype(np.float32)
    weights = rng.random(20).astype(np.float32) if weighted else None
    expected = np.zeros((num_segments, 3), np.float32)
    for s in range(num_segments):
      rows = segment_ids == s
      w = weights[rows] if weighted else np.ones(rows.sum(), np.float32)
      if rows.any():
        expected[s] = (w[:, None] * embeddings[rows]).sum(0)
        if mode == "mean":
          expected[s] /= w.sum()
    pooled = layers.pool_segments(
        tf.constant(embeddings), tf.constant(segment_ids), num_segments, mode,
        None if weights is None else tf.constant(weights))
    self.assertAllClose(pooled, expected, atol=1e-6)


class FusedEmbeddingTest(tf.test.TestCase, parameterized.TestCase):

  def _layer(self, **kwargs):
    return layers.FusedEmbedding(_VOCABULARIES, 4, initializer="glorot_uniform",
                                 **kwargs)

  def test_rows_follow_field_blocks_and_oov_buckets(self):
    layer = self._layer(oov_buckets=3)
    layer.build()
    # Blocks: 109_14 rows 0-2 (+ OOV 3-5), 205 rows 6-7 (+ OOV 8-10),
    # 150_14 OOV rows 11-13.
    self.assertEqual(layer.num_rows, 14)
    field = tf.constant([0, 0, 0, 0, 1, 1, 2, 1], tf.int64)
    ids = tf.constant([12, 99, -5, (1 << 60) + 1, 22, 11, 4, 13], tf.int64)
    self.assertAllEqual(
        layer.rows(field, ids),
        [1, 3 + 99 % 3, 3 + (-5 % 3), 3 + ((1 << 60) + 1) % 3, 7,
         8 + 11 % 3, 11 + 4 % 3, 8 + 13 % 3])

  def test_weights_are_made_in_build(self):
    layer = self._layer()
    self.assertEmpty(layer.weights)
    self.assertFalse(hasattr(layer, "embeddings"))
    layer(_inputs()[2])
    self.assertEqual([w.name for w in layer.weights], ["embeddings:0"])
    self.assertEqual(layer.embeddings.shape, (layer.num_rows, 4))
    self.assertLen(layer.tables, 3)

  def test_docstring_example(self):
    embedding = layers.FusedEmbedding({"205": np.array([21, 22]),
                                       "150_14": np.array([7])},
                                      embedding_dim=4)
    outputs = embedding({"205": _ragged([[21], [99]], tf.int64),
                         "150_14": _ragged([[7, 7], []], tf.int64)})
    table = embedding.embeddings.numpy()
    self.assertEqual(table.shape, (5, 4))
    self.assertAllClose(outputs, [np.r_[table[0], 2 * table[3]],
                                  np.r_[table[2], np.zeros(4)]])

  def test_missing_fields_are_named(self):
    inputs = _inputs()[2]
    del inputs["205"]
    with self.assertRaisesRegex(ValueError, "lack field.* 205"):
      self._layer()(inputs)

  @parameterized.product(pooling=("sum", "mean"), use_weights=(False, True))
  def test_output_matches_numpy(self, pooling, use_weights):
    layer = self._layer(pooling=pooling, use_weights=use_weights)
    ids, weights, inputs = _inputs()
    outputs = layer(inputs)
    table = layer.embeddings.numpy()
    offsets = {"109_14": 0, "205": 4, "150_14": 7}
    expected = np.zeros((4, 3, 4), np.float32)
    for f, field in enumerate(layer.fields):
      vocabulary = list(_VOCABULARIES[field])
      for b, row in enumerate(ids[field]):
        rows = [offsets[field] + (vocabulary.index(i) if i in vocabulary
                                  else len(vocabulary)) for i in row]
        w = np.ones(len(row), np.float32)
        given = weights.get(schema.weight_name(field)) if (
            use_weights and field in _WEIGHTED) else None
        if given is not None and given[b]:
          w = np.array(given[b], np.float32)
        if rows:
          expected[b, f] = (w[:, None] * table[rows]).sum(0)
          if pooling == "mean":
            expected[b, f] /= w.sum()
    self.assertAllClose(outputs, expected.reshape(4, 12), atol=1e-6)

  @parameterized.parameters(False, True)
  def test_gradient_holds_each_row_once(self, use_weights):
    layer = self._layer(use_weights=use_weights)
    ids, weights, inputs = _inputs()
    upstream = tf.random.stateless_normal([4, 12], seed=[4, 5])
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(layer(inputs) * upstream)
    gradient = tape.gradient(loss, layer.embeddings)
    self.assertIsInstance(gradient, tf.IndexedSlices)
    indices = gradient.indices.numpy()
    self.assertLen(set(indices.tolist()), len(indices))
    # d loss / d row = sum over the uses of the row of weight * upstream.
    expected = np.zeros((layer.num_rows, 4), np.float32)
    offsets = {"109_14": 0, "205": 4, "150_14": 7}
    upstream = upstream.numpy().reshape(4, 3, 4)
    for f, field in enumerate(layer.fields):
      vocabulary = list(_VOCABULARIES[field])
      for b, row in enumerate(ids[field]):
        given = weights.get(schema.weight_name(field)) if (
            use_weights and field in _WEIGHTED) else None
        w = given[b] if given is not None and given[b] else [1.0] * len(row)
        for i, weight in zip(row, w):
          index = offsets[field] + (vocabulary.index(i) if i in vocabulary
                                    else len(vocabulary))
          expected[index] += weight * upstream[b, f]
    dense = np.zeros_like(expected)
    dense[indices] = gradient.values.numpy()
    self.assertAllClose(dense, expected, atol=1e-6)
    self.assertCountEqual(indices, np.flatnonzero(np.abs(expected).sum(1)))

  def test_unknown_ids_do_not_crash_and_share_the_oov_row(self):
    layer = self._layer()
    _, _, inputs = _inputs()
    inputs["205"] = _ragged([[123456], [987654], [22], []], tf.int64)
    outputs = layer(inputs).numpy()
    self.assertAllEqual(outputs[0, 4:8], outputs[1, 4:8])
    self.assertAllEqual(outputs[0, 4:8], layer.embeddings.numpy()[6])

  def test_misaligned_weights_fail_naming_the_feature(self):
    layer = self._layer(use_weights=True)
    _, _, inputs = _inputs()
    inputs["109_14_w"] = _ragged([[1.0], [], [], []], tf.float32)
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "109_14_w"):
      layer(inputs)

  def test_l2_penalises_the_rows_in_use(self):
    layer = self._layer(l2=0.5)
    _, _, inputs = _inputs()
    layer(inputs)
    table = layer.embeddings.numpy()
    # Rows looked up: 109_14 -> 0, 2, OOV 3, 1, OOV 3, OOV 3;
    # 205 -> 5, 4, OOV 6; 150_14 -> OOV 7 three times.
    rows = [0, 2, 3, 1, 3, 3, 5, 4, 6, 7, 7, 7]
    self.assertAllClose(layer.losses[0],
                        0.5 * np.square(table[rows]).sum() / 4)

  def test_empty_vocabularies_send_every_id_to_oov(self):
    layer = layers.FusedEmbedding({"205": np.array([], np.int64),
                                   "206": np.array([], np.int64)}, 2)
    outputs = layer({"205": _ragged([[1], [2, 3]], tf.int64),
                     "206": _ragged([[], [-1]], tf.int64)})
    table = layer.embeddings.numpy()
    self.assertAllClose(outputs, [np.r_[table[0], 0, 0],
                                  np.r_[2 * table[0], table[1]]])

  def test_rejects_ids_outside_the_key_space(self):
    with self.assertRaisesRegex(ValueError, "205"):
      layers.FusedEmbedding({"205": np.array([vocab.MAX_ID + 1])}, 2)


class FusedEmbeddingSerializationTest(tf.test.TestCase,
                                      parameterized.TestCase):

  @parameterized.named_parameters(
      ("defaults", {}),
      ("every_option", dict(oov_buckets=3, pooling="mean", use_weights=True,
                            l2=0.25, name="embedding")))
  def test_config_round_trip(self, options):
    layer = layers.FusedEmbedding(
        _VOCABULARIES, 4, initializer=keras.initializers.RandomNormal(
            stddev=0.3, seed=6), **options)
    rebuilt = layer_testing.assert_layer_serializes(self, layer, _inputs()[2])
    # The vocabularies travel inline, in field order, empty ones included.
    config = layer.get_config()
    self.assertEqual(list(config["vocabularies"]), list(_VOCABULARIES))
    self.assertEqual(config["vocabularies"]["109_14"], [11, 12, 13])
    self.assertEqual(config["vocabularies"]["150_14"], [])
    self.assertEqual(rebuilt.num_rows, layer.num_rows)
    self.assertEqual(rebuilt.weighted_fields, layer.weighted_fields)
    if options:
      self.assertAllClose(rebuilt.losses, layer.losses)

  def test_initializer_is_rebuilt_from_the_config(self):
    initializer = keras.initializers.RandomUniform(-0.5, 0.5, seed=4)
    layer = layers.FusedEmbedding(_VOCABULARIES, 3, initializer=initializer)
    rebuilt = layers.FusedEmbedding.from_config(layer.get_config())
    layer.build()
    rebuilt.build()
    # Same seeded initializer, same table, without copying weights.
    self.assertAllEqual(rebuilt.embeddings, layer.embeddings)

  def test_model_saves_and_loads_with_the_lookup_tables(self):
    _, _, inputs = _inputs()
    model_inputs = {name: keras.Input(shape=(None,), ragged=True,
                                      dtype=value.dtype, name=name)
                    for name, value in inputs.items()}
    layer = layers.FusedEmbedding(_VOCABULARIES, 4, oov_buckets=2,
                                  use_weights=True,
                                  initializer="glorot_uniform")
    model = keras.Model(model_inputs, layer(model_inputs))
    path = os.path.join(testing.new_dir(), "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    self.assertIsInstance(loaded.layers[-1], layers.FusedEmbedding)
    self.assertAllClose(loaded(inputs), model(inputs), atol=0, rtol=0)


if __name__ == "__main__":
  tf.test.main()
