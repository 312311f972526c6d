"""Tests of escm2_tf.ground_truth: reading the CSV, joining it to the data."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import os

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

import testing
from escm2_tf import ground_truth
from escm2_tf import schema

HEADER = ("sample_id,p_click,p_conversion,conversion_counterfactual,click,"
          "conversion\n")


def write_file(content: str) -> str:
  path = os.path.join(testing.new_dir(),
                      "ground_truth.csv")
  with open(path, "w") as f:
    f.write(content)
  return path


def truth(ids, p_conversion=None, click=None) -> dict[str, np.ndarray]:
  count = len(ids)
  p_conversion = (np.linspace(0.1, 0.9, count) if p_conversion is None
                  else np.asarray(p_conversion, dtype=np.float64))
  click = np.zeros(count) if click is None else np.asarray(click, float)
  return {schema.SAMPLE_ID: np.asarray(ids, dtype=str),
          "p_click": np.full(count, 0.5), "p_conversion": p_conversion,
          "conversion_counterfactual": (p_conversion > 0.5).astype(float),
          schema.CLICK: click, schema.CONVERSION: np.zeros(count)}


def examples(ids, click=None) -> dict[str, np.ndarray]:
  """The ids and labels of scored examples (unclicked unless ``click``)."""
  count = len(ids)
  click = np.zeros(count) if click is None else np.asarray(click)
  return {schema.SAMPLE_ID: np.asarray(ids, dtype=str),
          schema.CLICK: click.astype(np.float32),
          schema.CONVERSION: np.zeros(count, np.float32)}


class GroundTruthTest(tf.test.TestCase, parameterized.TestCase):

  def test_reads_columns(self):
    path = write_file(HEADER + "7,0.25,0.5,1,1,0\nb,0.125,0.75,0,0,0\n")
    columns = ground_truth.read_ground_truth(path)
    self.assertEqual(list(columns[schema.SAMPLE_ID]), ["7", "b"])
    self.assertAllEqual(columns[schema.CLICK], [1.0, 0.0])
    self.assertAllEqual(columns["p_click"], [0.25, 0.125])
    self.assertAllEqual(columns["p_conversion"], [0.5, 0.75])
    self.assertAllEqual(columns["conversion_counterfactual"], [1.0, 0.0])

  @parameterized.named_parameters(
      ("wrong_header", "id,p_click,p_conversion,x\n1,0.1,0.2,0\n", ":1:"),
      ("header_without_labels",
       "sample_id,p_click,p_conversion,conversion_counterfactual\n", ":1:"),
      ("non_numeric", HEADER + "1,0.1,0.2,0,0,0\n2,0.1,high,0,0,0\n", ":3:"),
      ("short_row", HEADER + "1,0.1,0.2,0\n", ":2:"),
      ("empty_file", "", ":1:"))
  def test_malformed_file_names_file_and_line(self, content, where):
    path = write_file(content)
    with self.assertRaisesRegex(ground_truth.GroundTruthError,
                                f"^{path}{where}"):
      ground_truth.read_ground_truth(path)

  def test_missing_file(self):
    with self.assertRaisesRegex(ground_truth.GroundTruthError, "not found"):
      ground_truth.read_ground_truth("/nonexistent/ground_truth.csv")

  def test_align_follows_the_data_and_ignores_extra_rows(self):
    table = truth(["a", "b", "c", "d"], [0.1, 0.2, 0.3, 0.4])
    aligned = ground_truth.align_ground_truth(
        table, examples(["c", "a", "d"]), "gt.csv")
    self.assertAllEqual(aligned["p_conversion"], [0.3, 0.1, 0.4])
    self.assertNotIn(schema.SAMPLE_ID, aligned)

  def test_align_rejects_missing_ids(self):
    with self.assertRaisesRegex(ground_truth.GroundTruthError,
                                r"^gt\.csv is not the ground truth of "
                                r"t/\*\.gz: 2 of 3 .* 'x'"):
      ground_truth.align_ground_truth(truth(["a", "b"]),
                                      examples(["x", "a", "y"]), "gt.csv",
                                      "t/*.gz")

  def test_align_rejects_rows_with_other_labels(self):
    table = truth(["a", "b", "c"], click=[0, 1, 1])
    with self.assertRaisesRegex(
        ground_truth.GroundTruthError,
        r"^gt\.csv is not the ground truth of t/\*\.gz: 2 of 3 joined rows "
        r"log other labels \(first sample_id 'a': click/conversion 1/0 in the "
        r"data, 0/0 in the ground truth\)$"):
      ground_truth.align_ground_truth(table, examples(["a", "b", "c"],
                                                      click=[1, 1, 0]),
                                      "gt.csv", "t/*.gz")

  def test_align_rejects_repeated_ids(self):
    with self.assertRaisesRegex(ground_truth.GroundTruthError, "repeat"):
      ground_truth.align_ground_truth(truth(["a", "a", "b"]),
                                      examples(["a"]), "gt.csv")
    with self.assertRaisesRegex(ground_truth.GroundTruthError, "repeat"):
      ground_truth.align_ground_truth(truth(["a", "b"]),
                                      examples(["a", "a"]), "gt.csv")


if __name__ == "__main__":
  tf.test.main()
