"""Tests of escm2_tf.layout (names, atomic writes) and escm2_tf.prepare."""

import json
import os
import subprocess
import sys

from absl.testing import absltest

import testing
from escm2_tf import layout
from escm2_tf import prepare
from escm2_tf import simulator

# A tiny world: the simulator builds it in well under a second.
_TINY_WORLD = dict(num_users=50, num_items=80, num_categories=10,
                   num_shops=20, num_brands=20, num_intentions=20,
                   behaviour_length=10, impressions_per_request=5)

class NamesTest(absltest.TestCase):
  """The names are public: users, docs and older data directories use them."""

  def test_raw_file_names(self):
    self.assertEqual(layout.raw_file_names("aliccp", "train"), {
        "ground_truth": "ground_truth_train.csv",
        "skeleton": "sample_skeleton_train.csv",
        "common": "common_features_train.csv"})
    self.assertEqual(layout.raw_file_names("paddlerec", "test"), {
        "ground_truth": "ground_truth_test.csv",
        "paddlerec": "paddlerec_test.txt"})
    with self.assertRaisesRegex(ValueError, "'csv' is not one of"):
      layout.raw_file_names("csv", "train")

  def test_data_directory(self):
    self.assertEqual(layout.SPLITS, ("train", "test"))
    self.assertEqual(layout.examples("d", "train"), "d/train/*.tfrecord.gz")
    self.assertEqual(layout.training_vocab_dir("d"), "d/train/vocab")
    self.assertEqual(layout.vocabulary_file("d/train/vocab", "101"),
                     "d/train/vocab/101.tsv")
    self.assertEqual(layout.stats_file("d/test"), "d/test/stats.json")
    self.assertEqual(layout.ground_truth("d", "test"),
                     "d/raw/ground_truth_test.csv")

  def test_stats_beside_vocab(self):
    self.assertEqual(layout.stats_beside("/data/train/vocab/"),
                     "/data/train/stats.json")
    self.assertEqual(layout.stats_beside("data/vocab"), "data/stats.json")

  def test_ground_truth_header(self):
    self.assertEqual(",".join(layout.GROUND_TRUTH_HEADER),
                     "sample_id,p_click,p_conversion,conversion_counterfactual,"
                     "click,conversion")

  def test_imports_neither_tensorflow_nor_beam(self):
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys; import escm2_tf.layout; "
         "print(sorted(m for m in sys.modules if m.split('.')[0] in "
         "('tensorflow', 'tf_keras', 'apache_beam', 'escm2_pipelines')))"],
        check=True, capture_output=True, text=True).stdout
    self.assertEqual(loaded.strip(), "[]")


class AtomicWriteTest(absltest.TestCase):

  def test_writes_and_replaces(self):
    directory = testing.new_dir()
    path = os.path.join(directory, "out.json")
    layout.atomic_write(path, "first\n")
    layout.atomic_write(path, "second\n")
    with open(path, encoding="utf-8", newline="") as f:
      self.assertEqual(f.read(), "second\n")
    self.assertEqual(os.listdir(directory), ["out.json"])

  def test_a_failed_write_leaves_nothing_under_the_final_name(self):
    directory = testing.new_dir()
    path = os.path.join(directory, "out.csv")
    with self.assertRaisesRegex(RuntimeError, "disk full"):
      with layout.atomic_open(path) as f:
        f.write("half a file")
        raise RuntimeError("disk full")
    self.assertEqual(os.listdir(directory), [])

  def test_a_failed_write_keeps_the_previous_file(self):
    directory = testing.new_dir()
    path = os.path.join(directory, "out.csv")
    layout.atomic_write(path, "previous\n")
    with self.assertRaises(KeyboardInterrupt):
      with layout.atomic_open(path) as f:
        f.write("new")
        raise KeyboardInterrupt
    with open(path, encoding="utf-8") as f:
      self.assertEqual(f.read(), "previous\n")
    self.assertEqual(os.listdir(directory), ["out.csv"])

  def test_temporary_names_are_hidden_and_unique(self):
    names = {layout.temporary_name("/d/stats.json") for _ in range(20)}
    self.assertLen(names, 20)
    for name in names:
      self.assertEqual(os.path.dirname(name), "/d")
      self.assertStartsWith(os.path.basename(name), ".stats.json.")

  def test_a_failing_file_system_rename_removes_the_temporary(self):

    class FailingRename(layout.LocalFileSystem):

      def replace(self, source, target):
        raise OSError("rename failed")

    directory = testing.new_dir()
    with self.assertRaisesRegex(OSError, "rename failed"):
      layout.atomic_write(os.path.join(directory, "x"), "text",
                          FailingRename())
    self.assertEqual(os.listdir(directory), [])


class PrepareDatasetTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir = testing.new_dir()
    cls.config = simulator.SimulatorConfig(num_train=300, num_test=200,
                                           **_TINY_WORLD)
    cls.summary = prepare.prepare_dataset(
        cls.dir, cls.config, {"train": 2, "test": 1}, keep_raw_logs=False)

  def test_files(self):
    self.assertCountEqual(os.listdir(layout.raw_dir(self.dir)),
                          ["ground_truth_train.csv", "ground_truth_test.csv"])
    for split, shards in (("train", 2), ("test", 1)):
      names = os.listdir(layout.split_dir(self.dir, split))
      self.assertLen([n for n in names if n.endswith(".tfrecord.gz")],
                     shards)
      self.assertIn("stats.json", names)
      self.assertIn("vocab", names)
      self.assertEmpty([n for n in names if n.startswith(".")])

  def test_summary_counts_agree_with_the_converter(self):
    self.assertNotIn("files", self.summary)
    for split, rows in (("train", 300), ("test", 200)):
      with open(layout.stats_file(layout.split_dir(self.dir, split))) as f:
        stats = json.load(f)
      self.assertEqual(self.summary[split]["rows"], rows)
      self.assertEqual(stats["rows_read"], rows)
      self.assertEqual(self.summary[split]["rows_written"],
                       stats["rows_written"])
      # The converter drops the conversions logged without a click.
      self.assertEqual(stats["rows_written"],
                       rows - self.summary[split]["unclicked_conversions"])

  def test_paddlerec_keeps_its_raw_logs(self):
    directory = testing.new_dir()
    prepare.prepare_dataset(directory, simulator.SimulatorConfig(
        num_train=100, num_test=50, format="paddlerec", **_TINY_WORLD))
    self.assertCountEqual(os.listdir(layout.raw_dir(directory)), [
        "paddlerec_train.txt", "paddlerec_test.txt", "ground_truth_train.csv",
        "ground_truth_test.csv"])
    for split in layout.SPLITS:
      self.assertTrue(os.path.exists(
          layout.stats_file(layout.split_dir(directory, split))))


if __name__ == "__main__":
  absltest.main()
