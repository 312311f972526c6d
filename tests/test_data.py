"""Tests of escm2_tf.data.make_dataset over small GZIP TFRecord files."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import os
import shutil
import tempfile

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from escm2_tf import data
from escm2_tf import schema

NUM_EXAMPLES = 60


def _example(index: int) -> tuple[tf.train.Example, dict]:
  """Example ``index``: every third one lacks the multi-valued fields."""
  rng = np.random.default_rng(index)
  row = {schema.SAMPLE_ID: f"s{index}", schema.CLICK: index % 2,
         schema.CONVERSION: int(index % 4 == 1)}
  for position, field in enumerate(schema.FIELD_NAMES):
    if field in schema.MULTI_VALUED_FIELDS:
      count = 0 if index % 3 == 0 else 1 + index % 4
    else:
      count = 1
    row[field] = [1000 * position + index + k for k in range(count)]
    if field in schema.WEIGHTED_FIELDS and count:
      row[schema.weight_name(field)] = rng.random(count).round(3).tolist()
  feature = {schema.SAMPLE_ID: tf.train.Feature(
      bytes_list=tf.train.BytesList(value=[row[schema.SAMPLE_ID].encode()]))}
  for name in schema.LABELS:
    feature[name] = tf.train.Feature(
        int64_list=tf.train.Int64List(value=[row[name]]))
  for name in schema.FIELD_NAMES:
    if row[name]:
      feature[name] = tf.train.Feature(
          int64_list=tf.train.Int64List(value=row[name]))
  for name in schema.WEIGHT_NAMES:
    if name in row:
      feature[name] = tf.train.Feature(
          float_list=tf.train.FloatList(value=row[name]))
  return tf.train.Example(features=tf.train.Features(feature=feature)), row


def write(directory: str, num_files: int) -> dict[str, dict]:
  """Writes the examples round-robin into files; returns rows by sample id."""
  rows = {}
  writers = [tf.io.TFRecordWriter(
      os.path.join(directory, f"part-{i:05d}.tfrecord.gz"), options="GZIP")
             for i in range(num_files)]
  for index in range(NUM_EXAMPLES):
    example, row = _example(index)
    writers[index % num_files].write(example.SerializeToString())
    rows[row[schema.SAMPLE_ID]] = row
  for writer in writers:
    writer.close()
  return rows


def sample_ids(dataset: tf.data.Dataset) -> list[str]:
  """The ``sample_id`` of every record of a dataset, in its order."""
  return [s.decode() for features, _ in dataset
          for s in features[schema.SAMPLE_ID].numpy()]


class MakeDatasetTest(tf.test.TestCase, parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.dir)
    self.pattern = os.path.join(self.dir, "*.tfrecord.gz")

  def test_features_and_labels_match_the_records(self):
    rows = write(self.dir, num_files=3)
    dataset = data.make_dataset(self.pattern, 16, training=False,
                                with_sample_id=True)
    seen = 0
    for features, labels in dataset:
      self.assertEqual(set(labels), set(schema.LABELS))
      for name in schema.LABELS:
        self.assertEqual(labels[name].dtype, tf.float32)
      for name in schema.FIELD_NAMES:
        self.assertIsInstance(features[name], tf.RaggedTensor)
        self.assertEqual(features[name].dtype, tf.int64)
      for name in schema.WEIGHT_NAMES:
        self.assertEqual(features[name].dtype, tf.float32)
      for i, sample_id in enumerate(features[schema.SAMPLE_ID].numpy()):
        row = rows[sample_id.decode()]
        seen += 1
        self.assertEqual(labels[schema.CLICK][i], row[schema.CLICK])
        self.assertEqual(labels[schema.CONVERSION][i], row[schema.CONVERSION])
        for name in schema.FIELD_NAMES:
          self.assertAllEqual(features[name][i], row[name])
        for name in schema.WEIGHT_NAMES:
          self.assertAllClose(features[name][i], row.get(name, []))
    self.assertEqual(seen, NUM_EXAMPLES)

  def test_absent_fields_are_empty_rows(self):
    write(self.dir, num_files=1)
    features, _ = next(iter(data.make_dataset(self.pattern, 3,
                                              training=False)))
    # Record 0 has no multi-valued ids, records 1 and 2 have some.
    self.assertAllEqual(features["109_14"].row_lengths(), [0, 2, 3])
    self.assertAllEqual(features["109_14_w"].row_lengths(), [0, 2, 3])
    self.assertNotIn(schema.SAMPLE_ID, features)

  def test_without_weights_parses_the_same_ids_and_no_weights(self):
    write(self.dir, num_files=2)
    with_weights = data.make_dataset(self.pattern, 16, training=False)
    without = data.make_dataset(self.pattern, 16, training=False,
                                with_weights=False)
    for (full, full_labels), (lean, lean_labels) in zip(with_weights,
                                                        without):
      self.assertEqual(set(lean), set(schema.FIELD_NAMES))
      self.assertEqual(set(full) - set(lean), set(schema.WEIGHT_NAMES))
      for name in schema.FIELD_NAMES:
        self.assertAllEqual(lean[name], full[name])
      for name in schema.LABELS:
        self.assertAllEqual(lean_labels[name], full_labels[name])

  @parameterized.parameters(tf.data.AUTOTUNE, 1, 2)
  def test_evaluation_order_is_deterministic_and_complete(self, read_ahead):
    write(self.dir, num_files=4)
    first = sample_ids(data.make_dataset(self.pattern, 7, training=False,
                                         with_sample_id=True))
    second = sample_ids(data.make_dataset(self.pattern, 7, training=False,
                                          with_sample_id=True,
                                          read_ahead=read_ahead))
    self.assertEqual(first, second)
    self.assertCountEqual(first, [f"s{i}" for i in range(NUM_EXAMPLES)])

  def test_training_shuffles_by_seed_over_epochs(self):
    write(self.dir, num_files=2)

    def ids(seed):
      return sample_ids(data.make_dataset(
          self.pattern, 8, training=True, num_epochs=2, seed=seed,
          with_sample_id=True))

    first = ids(seed=3)
    self.assertEqual(first, ids(seed=3))
    self.assertNotEqual(first, ids(seed=4))
    self.assertLen(first, 2 * NUM_EXAMPLES)
    epoch_one, epoch_two = first[:NUM_EXAMPLES], first[NUM_EXAMPLES:]
    self.assertCountEqual(epoch_one, epoch_two)
    self.assertNotEqual(epoch_one, epoch_two)
    self.assertNotEqual(epoch_one, sample_ids(data.make_dataset(
        self.pattern, 8, training=False, with_sample_id=True)))

  @parameterized.named_parameters(("by_file", 4, 2), ("by_record", 1, 3))
  def test_input_context_shards_are_disjoint_and_cover(self, num_files,
                                                       num_pipelines):
    write(self.dir, num_files=num_files)
    shards = []
    for pipeline in range(num_pipelines):
      context = tf.distribute.InputContext(
          num_input_pipelines=num_pipelines, input_pipeline_id=pipeline,
          num_replicas_in_sync=num_pipelines)
      dataset = data.make_dataset(self.pattern, 6 * num_pipelines,
                                  training=True, seed=None,
                                  input_context=context, with_sample_id=True)
      batch_sizes = [int(labels[schema.CLICK].shape[0])
                     for _, labels in dataset]
      self.assertEqual(max(batch_sizes), 6)
      shards.append(sample_ids(dataset))
    all_ids = [i for shard in shards for i in shard]
    self.assertLen(all_ids, NUM_EXAMPLES)
    self.assertCountEqual(all_ids, [f"s{i}" for i in range(NUM_EXAMPLES)])

  def test_drop_remainder_gives_full_batches(self):
    write(self.dir, num_files=1)
    dataset = data.make_dataset(self.pattern, 25, training=False,
                                drop_remainder=True)
    self.assertEqual([int(labels[schema.CLICK].shape[0])
                      for _, labels in dataset], [25, 25])

  def test_no_matching_files_names_the_pattern(self):
    with self.assertRaisesRegex(FileNotFoundError, "nothing-here"):
      data.make_dataset(os.path.join(self.dir, "nothing-here*"), 4,
                        training=True)

  @parameterized.parameters((0, 1), (4, 0))
  def test_invalid_sizes(self, batch_size, num_epochs):
    write(self.dir, num_files=1)
    with self.assertRaises(ValueError):
      data.make_dataset(self.pattern, batch_size, training=True,
                        num_epochs=num_epochs)

  def test_record_without_label_fails_naming_it(self):
    example, _ = _example(0)
    del example.features.feature[schema.CONVERSION]
    path = os.path.join(self.dir, "bad.tfrecord.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
      writer.write(example.SerializeToString())
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                schema.CONVERSION):
      list(data.make_dataset(path, 4, training=False))


class HashSplitTest(tf.test.TestCase, parameterized.TestCase):
  """The validation slice: disjoint, complete, the same everywhere."""

  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.dir)
    self.pattern = os.path.join(self.dir, "*.tfrecord.gz")

  def ids(self, validation: bool, fraction: float = 0.3, **kwargs):
    kwargs = {"training": False, **kwargs}
    return sample_ids(data.make_dataset(
        self.pattern, 12, with_sample_id=True,
        split=data.HashSplit(fraction, validation), **kwargs))

  def test_sides_are_disjoint_and_cover(self):
    write(self.dir, num_files=3)
    held_out, rest = self.ids(True), self.ids(False)
    self.assertNotEmpty(held_out)
    self.assertNotEmpty(rest)
    self.assertEmpty(set(held_out) & set(rest))
    self.assertCountEqual(held_out + rest,
                          [f"s{i}" for i in range(NUM_EXAMPLES)])

  def test_same_slice_whatever_the_order(self):
    write(self.dir, num_files=3)
    expected = set(self.ids(True))
    for seed in (1, 2):
      for validation in (True, False):
        ids = self.ids(validation, training=True, seed=seed, num_epochs=2)
        self.assertLen(ids, 2 * len(self.ids(validation)))
        self.assertEqual(set(ids) & expected,
                         expected if validation else set())

  @parameterized.named_parameters(("by_file", 4, 2), ("by_record", 1, 3))
  def test_same_slice_on_every_worker(self, num_files, num_pipelines):
    write(self.dir, num_files=num_files)
    for validation in (True, False):
      per_worker = []
      for pipeline in range(num_pipelines):
        context = tf.distribute.InputContext(
            num_input_pipelines=num_pipelines, input_pipeline_id=pipeline,
            num_replicas_in_sync=num_pipelines)
        per_worker += self.ids(validation, training=True, seed=None,
                               input_context=context)
      # Each worker keeps the slice's records of its own shard: together
      # exactly the single process's slice, once each.
      self.assertCountEqual(per_worker, self.ids(validation))

  def test_fraction_is_honoured(self):
    num = 20_000
    ids = tf.constant([f"impression-{i}" for i in range(num)])
    for fraction in (0.05, 0.1, 0.5):
      held_out = int(tf.reduce_sum(tf.cast(
          data.HashSplit(fraction, True).selects(ids), tf.int32)))
      margin = 4 * np.sqrt(num * fraction * (1 - fraction))
      self.assertBetween(held_out, num * fraction - margin,
                         num * fraction + margin)
      self.assertEqual(held_out + int(tf.reduce_sum(tf.cast(
          data.HashSplit(fraction, False).selects(ids), tf.int32))), num)

  def test_slice_is_stable_across_versions(self):
    # FarmHash fingerprints do not change between runs, machines or
    # TensorFlow versions; a change here would move records between the
    # slices of a resumed run.
    ids = tf.constant([f"s{i}" for i in range(40)])
    held_out = np.flatnonzero(data.HashSplit(0.1, True).selects(ids))
    self.assertAllEqual(held_out, [25, 37])

  @parameterized.parameters(0.0, 1.0, -0.5)
  def test_fraction_out_of_range(self, fraction):
    with self.assertRaisesRegex(ValueError, "HashSplit.fraction"):
      data.HashSplit(fraction, True)


class LabelTableTest(tf.test.TestCase):
  """A label by sample id, added to every batch of the input."""

  def test_adds_each_records_value_and_nan_without_a_row(self):
    directory = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, directory)
    write(directory, 3)
    known = [f"s{index}" for index in range(NUM_EXAMPLES) if index != 7]
    table = data.LabelTable("p_click", np.array(known),
                            np.array([int(s[1:]) / 100 for s in known]))
    dataset = data.make_dataset(os.path.join(directory, "*.tfrecord.gz"), 8,
                                training=False, label_table=table,
                                with_sample_id=True)
    got = {s.decode(): value for features, labels in dataset
           for s, value in zip(features[schema.SAMPLE_ID].numpy(),
                               labels["p_click"].numpy())}
    self.assertLen(got, NUM_EXAMPLES)
    self.assertTrue(np.isnan(got.pop("s7")))
    self.assertEqual(got, {s: np.float32(int(s[1:]) / 100) for s in known})

  def test_without_with_sample_id_the_id_is_dropped(self):
    directory = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, directory)
    write(directory, 1)
    table = data.LabelTable("p_click", np.array(["s1"]), np.array([0.5]))
    features, labels = next(iter(data.make_dataset(
        os.path.join(directory, "*.tfrecord.gz"), 4, training=False,
        label_table=table)))
    self.assertNotIn(schema.SAMPLE_ID, features)
    self.assertAllEqual(np.isnan(labels["p_click"]),
                        [True, False, True, True])

  def test_refuses_a_repeated_id_and_an_empty_table(self):
    with self.assertRaisesRegex(ValueError, "sample_id 's2' has two rows"):
      data.LabelTable("p_click", np.array(["s1", "s2", "s2"]),
                      np.array([0.1, 0.2, 0.3]))
    with self.assertRaisesRegex(ValueError, "at least one id"):
      data.LabelTable("p_click", np.array([]), np.array([]))
    with self.assertRaisesRegex(ValueError, "one value per id"):
      data.LabelTable("p_click", np.array(["s1"]), np.array([0.1, 0.2]))


if __name__ == "__main__":
  tf.test.main()
