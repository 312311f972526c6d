"""Tests of the PaddleRec text parser and writer."""

import os

from absl.testing import absltest
from absl.testing import parameterized

from escm2_tf.formats import aliccp
from escm2_tf.formats import paddlerec
from escm2_tf import schema

_DEMO_DIR = os.path.join(os.path.dirname(__file__), "testdata",
                         "paddlerec_demo")


def _demo_lines():
  lines = []
  for split in ("train", "test"):
    with open(os.path.join(_DEMO_DIR, split, "small.txt")) as f:
      lines += f.read().splitlines()
  return lines


class PaddleRecTest(parameterized.TestCase):

  def test_demo_lines_keep_every_token(self):
    lines = _demo_lines()
    self.assertLen(lines, 20)
    for line in lines:
      tokens = line.split(",")
      row = paddlerec.parse_paddlerec_line(line)
      self.assertEqual(row.sample_id, tokens[0])
      self.assertEqual((row.click, row.conversion),
                       (int(tokens[1]), int(tokens[2])))
      expected = {}
      for token in tokens[3:]:
        field, gid = token.split(":")
        expected.setdefault(field, []).append(int(gid))
      self.assertEqual({f: ids for f, (ids, _) in row.features.items()},
                       expected)
      self.assertTrue(all(v == 1.0 for _, values in row.features.values()
                          for v in values))
      self.assertEqual(row.ignored_items, 0)

  def test_first_feature_token_is_kept(self):
    # PaddleRec's reader drops the 4th token; the demo's first row starts
    # with 210:1.
    row = paddlerec.parse_paddlerec_line(_demo_lines()[0])
    self.assertEqual(row.features["210"][0][0], 1)

  def test_round_trip(self):
    line = paddlerec.format_paddlerec_line("7", 1, 1, [("205", 3), ("101", 9)])
    row = paddlerec.parse_paddlerec_line(line)
    self.assertEqual(row.features, {"205": ([3], [1.0]), "101": ([9], [1.0])})

  def test_counts_fields_outside_the_schema(self):
    row = paddlerec.parse_paddlerec_line("1,0,0,205:3,777:4")
    self.assertEqual(row.ignored_items, 1)
    self.assertEqual(set(row.features), {"205"})

  @parameterized.named_parameters(
      ("no_features", "1,0,0", "column_count"),
      ("empty_sample_id", ",0,0,205:1", "empty_column"),
      ("click_text", "1,yes,0,205:1", "bad_label"),
      ("buy_two", "1,1,2,205:1", "bad_label"),
      ("no_colon", "1,0,0,2051", "broken_separator"),
      ("two_colons", "1,0,0,205:1:2", "broken_separator"),
      ("empty_field", "1,0,0,:5", "broken_separator"),
      ("trailing_comma", "1,0,0,205:1,", "broken_separator"),
      ("id_text", "1,0,0,205:abc", "non_numeric"),
      ("id_negative", "1,0,0,205:-3", "bad_id"),
      ("id_too_large", f"1,0,0,205:{1 << 63}", "bad_id"),
      ("non_ascii_two_colons", "1,0,0,205:1,2\u00e9:3:4", "broken_separator"),
  )
  def test_rejects(self, line, reason):
    with self.assertRaises(aliccp.BadRowError) as e:
      paddlerec.parse_paddlerec_line(line)
    self.assertEqual(e.exception.reason, reason)

  def test_padding_id_is_skipped_and_counted(self):
    # PaddleRec's reader writes [0] for a field without ids.
    row = paddlerec.parse_paddlerec_line("1,1,0,205:0,101:7,101:0,101:8,216:0")
    self.assertEqual(row.features, {"101": ([7, 8], [1.0, 1.0])})
    self.assertEqual((row.padding_ids, row.click), (3, 1))

  def test_only_padding_gives_a_row_without_features(self):
    row = paddlerec.parse_paddlerec_line("1,0,0,205:0")
    self.assertEqual((row.features, row.padding_ids), ({}, 1))

  def test_non_ascii_field_is_parsed_as_before(self):
    row = paddlerec.parse_paddlerec_line("1,0,0,205:1,\u00e9:2")
    self.assertEqual((row.features, row.ignored_items),
                     ({"205": ([1], [1.0])}, 1))

  def test_every_schema_field_parses(self):
    line = paddlerec.format_paddlerec_line(
        "1", 0, 0, [(f, k + 1) for k, f in enumerate(schema.FIELD_NAMES)])
    row = paddlerec.parse_paddlerec_line(line)
    self.assertEqual(list(row.features), list(schema.FIELD_NAMES))


if __name__ == "__main__":
  absltest.main()
