"""Consistency of the Ali-CCP schema and its tf.Example parsing specs."""

import escm2_tf  # noqa: F401  (selects legacy Keras before TensorFlow loads)

from absl.testing import parameterized
import tensorflow as tf

from escm2_tf import schema


def _int64(values):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _float(values):
  return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def _bytes(value: bytes):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


class FieldListsTest(tf.test.TestCase):

  def test_names_are_unique(self):
    self.assertLen(set(schema.FIELD_NAMES), len(schema.FIELDS))
    self.assertEqual(list(schema.FIELDS_BY_NAME), list(schema.FIELD_NAMES))

  def test_common_and_sample_fields_partition_the_fields(self):
    self.assertEmpty(set(schema.COMMON_FIELDS) & set(schema.SAMPLE_FIELDS))
    self.assertCountEqual(schema.COMMON_FIELDS + schema.SAMPLE_FIELDS,
                          schema.FIELD_NAMES)
    for name in schema.COMMON_FIELDS:
      self.assertIs(schema.FIELDS_BY_NAME[name].source, schema.Source.COMMON)
    for name in schema.SAMPLE_FIELDS:
      self.assertIs(schema.FIELDS_BY_NAME[name].source, schema.Source.SAMPLE)

  def test_sub_lists_keep_the_field_order(self):
    for sub in (schema.COMMON_FIELDS, schema.SAMPLE_FIELDS,
                schema.MULTI_VALUED_FIELDS, schema.WEIGHTED_FIELDS):
      positions = [schema.FIELD_NAMES.index(name) for name in sub]
      self.assertEqual(positions, sorted(positions))

  def test_weighted_fields_are_the_user_behaviour_fields(self):
    behaviour = [f.name for f in schema.FIELDS if f.name.endswith("_14")]
    self.assertNotEmpty(behaviour)
    self.assertEqual(list(schema.WEIGHTED_FIELDS), behaviour)
    for name in schema.WEIGHTED_FIELDS:
      field = schema.FIELDS_BY_NAME[name]
      self.assertIs(field.source, schema.Source.COMMON)
      self.assertTrue(field.multi_valued)

  def test_groups_are_known(self):
    groups = {f.group for f in schema.FIELDS}
    self.assertContainsSubset(groups, {"user", "item", "cross", "context"})
    for field in schema.FIELDS:
      self.assertEqual(field.group == "user",
                       field.source is schema.Source.COMMON)

  def test_weight_names(self):
    self.assertEqual(schema.WEIGHT_NAMES,
                     tuple(f"{name}_w" for name in schema.WEIGHTED_FIELDS))
    self.assertEqual(schema.weight_name(schema.WEIGHTED_FIELDS[0]),
                     schema.WEIGHT_NAMES[0])

  def test_weight_name_of_an_unweighted_field_raises(self):
    unweighted = next(name for name in schema.FIELD_NAMES
                      if name not in schema.WEIGHTED_FIELDS)
    with self.assertRaisesRegex(ValueError, unweighted):
      schema.weight_name(unweighted)

  def test_example_keys_never_collide(self):
    keys = (schema.FIELD_NAMES + schema.WEIGHT_NAMES + schema.LABELS
            + (schema.SAMPLE_ID,))
    self.assertLen(set(keys), len(keys))
    self.assertEqual(schema.LABELS, (schema.CLICK, schema.CONVERSION))


class FeatureSpecTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(
      (True, True, False), (False, True, False), (True, False, False),
      (True, True, True), (False, False, True))
  def test_keys_follow_the_options(self, labels, weights, sample_id):
    spec = schema.feature_spec(with_labels=labels, with_weights=weights,
                               with_sample_id=sample_id)
    expected = set(schema.FIELD_NAMES)
    expected |= set(schema.WEIGHT_NAMES) if weights else set()
    expected |= set(schema.LABELS) if labels else set()
    expected |= {schema.SAMPLE_ID} if sample_id else set()
    self.assertEqual(set(spec), expected)

  def test_dtypes(self):
    spec = schema.feature_spec(with_sample_id=True)
    for name in schema.FIELD_NAMES:
      self.assertIsInstance(spec[name], tf.io.RaggedFeature)
      self.assertEqual(spec[name].dtype, tf.int64)
    for name in schema.WEIGHT_NAMES:
      self.assertIsInstance(spec[name], tf.io.RaggedFeature)
      self.assertEqual(spec[name].dtype, tf.float32)
    for name in schema.LABELS:
      self.assertEqual(spec[name], tf.io.FixedLenFeature([], tf.int64))
    self.assertEqual(spec[schema.SAMPLE_ID].dtype, tf.string)

  def test_serving_spec_has_fields_and_weights_only(self):
    self.assertEqual(set(schema.serving_feature_spec()),
                     set(schema.FIELD_NAMES) | set(schema.WEIGHT_NAMES))

  def test_parses_a_hand_built_example(self):
    single, multi = "205", schema.WEIGHTED_FIELDS[0]
    absent = next(name for name in schema.FIELD_NAMES
                  if name not in (single, multi))
    example = tf.train.Example(features=tf.train.Features(feature={
        single: _int64([7]),
        multi: _int64([3, 5, 11]),
        schema.weight_name(multi): _float([0.5, 1.0, 2.5]),
        schema.CLICK: _int64([1]),
        schema.CONVERSION: _int64([0]),
        schema.SAMPLE_ID: _bytes(b"42"),
    }))
    serialized = tf.constant([example.SerializeToString()] * 2)
    parsed = tf.io.parse_example(serialized,
                                 schema.feature_spec(with_sample_id=True))
    self.assertAllEqual(parsed[single].to_list(), [[7], [7]])
    self.assertAllEqual(parsed[multi].to_list(), [[3, 5, 11]] * 2)
    self.assertAllClose(parsed[schema.weight_name(multi)].to_list(),
                        [[0.5, 1.0, 2.5]] * 2)
    self.assertAllEqual(parsed[absent].to_list(), [[], []])
    self.assertAllEqual(parsed[schema.CLICK], [1, 1])
    self.assertAllEqual(parsed[schema.CONVERSION], [0, 0])
    self.assertAllEqual(parsed[schema.SAMPLE_ID], [b"42", b"42"])

  def test_missing_label_fails_to_parse(self):
    example = tf.train.Example(features=tf.train.Features(
        feature={"205": _int64([7]), schema.CLICK: _int64([1])}))
    with self.assertRaises(tf.errors.InvalidArgumentError):
      tf.io.parse_example(tf.constant([example.SerializeToString()]),
                          schema.feature_spec())

  def test_missing_sample_id_defaults_to_empty(self):
    example = tf.train.Example(features=tf.train.Features(feature={
        schema.CLICK: _int64([0]), schema.CONVERSION: _int64([0])}))
    parsed = tf.io.parse_example(tf.constant([example.SerializeToString()]),
                                 schema.feature_spec(with_sample_id=True))
    self.assertAllEqual(parsed[schema.SAMPLE_ID], [b""])


if __name__ == "__main__":
  tf.test.main()
