"""Tests of the TensorFlow-free tf.train.Example encoder."""

import escm2_tf  # noqa: F401  Selects tf-keras before TensorFlow loads.

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from escm2_tf.formats import examples
from escm2_tf import schema

_USER = {"101": ([8], [1.0]), "121": ([77], [1.0]),
         "109_14": ([300, 301, 302], [0.5, 2.0, 1.25]),
         "150_14": ([(1 << 40) + 3], [3.5])}
_ITEM = {"205": ([123456789], [1.0]), "210": ([5, 6, 7], [1.0, 1.0, 1.0]),
         "301": ([1], [1.0])}


def _reference_example(sample_id, click, conversion, features):
  """The same record built with TensorFlow's own proto API."""
  feature = {
      schema.SAMPLE_ID: tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[sample_id.encode()])),
      schema.CLICK: tf.train.Feature(
          int64_list=tf.train.Int64List(value=[click])),
      schema.CONVERSION: tf.train.Feature(
          int64_list=tf.train.Int64List(value=[conversion])),
  }
  for field, (ids, values) in features.items():
    feature[field] = tf.train.Feature(int64_list=tf.train.Int64List(value=ids))
    if field in schema.WEIGHTED_FIELDS and any(v != 1.0 for v in values):
      feature[schema.weight_name(field)] = tf.train.Feature(
          float_list=tf.train.FloatList(value=values))
  return tf.train.Example(features=tf.train.Features(feature=feature))


class EncodeTest(tf.test.TestCase, parameterized.TestCase):

  def test_matches_tensorflow_proto(self):
    features = {**_USER, **_ITEM}
    serialized = examples.serialize_example("s1", 1, 0, features)
    self.assertProtoEquals(_reference_example("s1", 1, 0, features),
                           tf.train.Example.FromString(serialized))

  def test_concatenated_entries_parse_as_one_example(self):
    user = examples.field_entries(_USER)
    impression = (examples.label_entries("s2", 0, 1)
                  + examples.field_entries(_ITEM))
    joined = examples.example_from_entries(user, impression)
    self.assertProtoEquals(
        _reference_example("s2", 0, 1, {**_USER, **_ITEM}),
        tf.train.Example.FromString(joined))

  def test_parses_with_the_schema_spec(self):
    records = [examples.serialize_example("a", 1, 1, {**_USER, **_ITEM}),
               examples.serialize_example("b", 0, 0, _ITEM)]
    parsed = tf.io.parse_example(records,
                                 schema.feature_spec(with_sample_id=True))
    self.assertAllEqual(parsed[schema.SAMPLE_ID], [b"a", b"b"])
    self.assertAllEqual(parsed[schema.CLICK], [1, 0])
    self.assertAllEqual(parsed[schema.CONVERSION], [1, 0])
    self.assertEqual(parsed["109_14"].to_list(), [[300, 301, 302], []])
    self.assertEqual(parsed["150_14"].to_list(), [[(1 << 40) + 3], []])
    self.assertEqual(parsed["210"].to_list(), [[5, 6, 7], [5, 6, 7]])
    self.assertEqual(parsed["205"].to_list(), [[123456789], [123456789]])
    self.assertAllClose(parsed["109_14_w"].values, [0.5, 2.0, 1.25])
    self.assertEqual(parsed["508"].to_list(), [[], []])

  def test_weights_of_one_are_left_out(self):
    serialized = examples.serialize_example(
        "w", 0, 0, {"109_14": ([4, 5], [1.0, 1.0]),
                    "110_14": ([6, 7], [1.0, 2.0])})
    feature = tf.train.Example.FromString(serialized).features.feature
    self.assertEqual(list(feature["109_14"].int64_list.value), [4, 5])
    self.assertNotIn("109_14_w", feature)
    self.assertAllEqual(feature["110_14_w"].float_list.value, [1.0, 2.0])

  @parameterized.parameters(0, 1, 127, 128, 300, 1 << 35, (1 << 63) - 1,
                            -1, -(1 << 63))
  def test_int64_values_round_trip(self, value):
    serialized = examples.example_from_entries(
        examples.int64_entry("x", [value, 5]))
    parsed = tf.train.Example.FromString(serialized)
    self.assertEqual(list(parsed.features.feature["x"].int64_list.value),
                     [value, 5])
    self.assertEqual(examples.int64_lists(
        examples.int64_entry("x", [value, 5])), [("x", [value, 5])])

  def test_long_lists_need_multi_byte_lengths(self):
    ids = list(range(1, 3000))
    weights = [k / 7 for k in range(len(ids))]
    serialized = examples.serialize_example(
        "long", 0, 0, {"110_14": (ids, weights)})
    parsed = tf.train.Example.FromString(serialized).features.feature
    self.assertEqual(list(parsed["110_14"].int64_list.value), ids)
    self.assertAllEqual(parsed["110_14_w"].float_list.value,
                        np.float32(weights))

  def test_bytes_entry_holds_several_values(self):
    serialized = examples.example_from_entries(
        examples.bytes_entry("b", [b"", b"x" * 200, b"\x00\x01"]))
    parsed = tf.train.Example.FromString(serialized)
    self.assertEqual(list(parsed.features.feature["b"].bytes_list.value),
                     [b"", b"x" * 200, b"\x00\x01"])

  def test_labels_must_be_binary(self):
    with self.assertRaisesRegex(ValueError, "labels must be 0 or 1"):
      examples.label_entries("s", 2, 0)

  def test_int64_lists_reads_tensorflow_encoding_and_skips_others(self):
    serialized = _reference_example("s", 1, 0, _USER).SerializeToString()
    entries = tf.train.Example.FromString(serialized).features
    decoded = dict(examples.int64_lists(entries.SerializeToString()))
    self.assertEqual(decoded["109_14"], [300, 301, 302])
    self.assertEqual(decoded[schema.CLICK], [1])
    self.assertNotIn(schema.SAMPLE_ID, decoded)
    self.assertNotIn("109_14_w", decoded)

  @parameterized.parameters(
      b"\x12\x05hello",  # Not a map entry.
      b"\x0a\x09\x0a\x01x\x12\x04\x1a\x02\x0a\x05",  # Truncated list.
      b"\x0a\x08\x0a\x01x\x12\x03\x1a\x01\x0a",  # Length cut off.
      b"\x0a\x0a\x0a\x01x\x12\x05\x1a\x03\x0a\x01\xff",  # Open varint.
  )
  def test_int64_lists_rejects_foreign_bytes(self, entries):
    with self.assertRaises(ValueError):
      examples.int64_lists(entries)


class LimitValuesTest(parameterized.TestCase):

  def test_keeps_the_heaviest_in_file_order(self):
    features = {"110_14": ([1, 2, 3, 4, 5], [0.5, 3.0, 1.0, 3.0, 2.0]),
                "205": ([9], [1.0])}
    kept, dropped = examples.limit_values(features, 3)
    self.assertEqual(kept["110_14"], ([2, 4, 5], [3.0, 3.0, 2.0]))
    self.assertEqual(kept["205"], ([9], [1.0]))
    self.assertEqual(dropped, {"110_14": 2})

  def test_ties_go_to_the_earlier_id(self):
    features = {"210": ([30, 10, 20, 40], [1.0, 1.0, 1.0, 1.0])}
    kept, dropped = examples.limit_values(features, 2)
    self.assertEqual(kept["210"], ([30, 10], [1.0, 1.0]))
    self.assertEqual(dropped, {"210": 2})

  @parameterized.parameters(0, 5, 100)
  def test_leaves_short_fields_alone(self, max_values):
    features = {"110_14": ([1, 2, 3, 4, 5], [0.5, 3.0, 1.0, 3.0, 2.0])}
    kept, dropped = examples.limit_values(features, max_values)
    self.assertEqual(kept, features)
    self.assertEqual(dropped, {})


if __name__ == "__main__":
  tf.test.main()
