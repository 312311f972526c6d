"""Tests of escm2_tf.data_size: records counted in the files."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import os
import shutil
import tempfile

import tensorflow as tf

import test_data
from escm2_tf import data
from escm2_tf import data_size


class CountRecordsTest(tf.test.TestCase):
  """Counts that match the records a split's dataset yields."""

  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.dir)
    self.pattern = os.path.join(self.dir, "*.tfrecord.gz")
    test_data.write(self.dir, num_files=3)

  def ids(self, validation: bool) -> list[str]:
    return test_data.sample_ids(data.make_dataset(
        self.pattern, 12, training=False, with_sample_id=True,
        split=data.HashSplit(0.3, validation)))

  def test_counts_every_record_or_one_side(self):
    self.assertEqual(data_size.count_records(self.pattern, data.HashSplit(
        0.3, True)), len(self.ids(True)))
    self.assertEqual(data_size.count_records(self.pattern),
                     test_data.NUM_EXAMPLES)

  def test_one_read_counts_both_sides(self):
    self.assertEqual(
        data_size.count_split_records(self.pattern, 0.3),
        (len(self.ids(False)), len(self.ids(True))))


if __name__ == "__main__":
  tf.test.main()
