"""Tests of escm2_tf.vocab."""

import os
import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from escm2_tf import schema
from escm2_tf import vocab


def _write_vocabularies(directory: str, lines: dict[str, str]) -> None:
  for field in schema.FIELD_NAMES:
    with open(os.path.join(directory, f"{field}.tsv"), "w") as f:
      f.write(lines.get(field, "7\t1\n"))


class LoadVocabulariesTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    # tempfile, not create_tempdir: that needs absl flags, which pytest
    # leaves unparsed.
    self.dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.dir)

  def test_loads_every_field_in_file_order(self):
    _write_vocabularies(self.dir, {"101": "30\t9\n10\t5\n20\t5\n",
                                   "205": ""})
    vocabularies = vocab.load_vocabularies(self.dir, min_count=1)
    self.assertEqual(tuple(vocabularies), schema.FIELD_NAMES)
    np.testing.assert_array_equal(vocabularies["101"], [30, 10, 20])
    self.assertEqual(vocabularies["101"].dtype, np.int64)
    self.assertEqual(vocabularies["205"].size, 0)
    np.testing.assert_array_equal(vocabularies["206"], [7])

  def test_min_count_drops_rare_ids(self):
    _write_vocabularies(self.dir, {"101": "30\t9\n10\t5\n20\t2\n40\t1\n"})
    vocabularies = vocab.load_vocabularies(self.dir, min_count=5)
    np.testing.assert_array_equal(vocabularies["101"], [30, 10])
    self.assertEqual(vocabularies["206"].size, 0)

  def test_missing_file_is_named(self):
    _write_vocabularies(self.dir, {})
    os.remove(os.path.join(self.dir, "853.tsv"))
    with self.assertRaisesRegex(vocab.VocabularyError, r"853\.tsv.*not found"):
      vocab.load_vocabularies(self.dir, min_count=1)

  @parameterized.named_parameters(
      ("one_column", "5\n"), ("three_columns", "5\t1\t2\n"),
      ("not_a_number", "five\t1\n"), ("negative_count", "5\t-1\n"),
      ("negative_id", "-5\t1\n"), ("huge_id", f"{1 << 60}\t1\n"),
      ("repeated_id", "5\t2\n5\t1\n"), ("empty_line", "5\t2\n\n"))
  def test_malformed_line_names_file_and_line(self, content):
    _write_vocabularies(self.dir, {"127_14": "3\t9\n" + content})
    with self.assertRaisesRegex(vocab.VocabularyError, r"127_14\.tsv:[23]: "):
      vocab.load_vocabularies(self.dir, min_count=1)

  @parameterized.parameters(0, -2, 1.5, True)
  def test_min_count_must_be_a_positive_integer(self, min_count):
    _write_vocabularies(self.dir, {})
    with self.assertRaisesRegex(ValueError, "min_count"):
      vocab.load_vocabularies(self.dir, min_count=min_count)


if __name__ == "__main__":
  absltest.main()
