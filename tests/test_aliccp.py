"""Tests of the raw Tianchi (Ali-CCP) text parsers and writers."""

from absl.testing import absltest
from absl.testing import parameterized

from escm2_tf.formats import aliccp

_I, _F, _V = aliccp.ITEM_SEP, aliccp.FIELD_SEP, aliccp.VALUE_SEP


def _items(*triples):
  return _I.join(f"{f}{_F}{i}{_V}{v}" for f, i, v in triples)


class ParseFeatureListTest(parameterized.TestCase):

  def test_groups_by_field_in_file_order(self):
    text = _items(("205", 7, 1), ("109_14", 3, 0.5), ("205", 9, 1),
                  ("109_14", 4, 2.25))
    features, ignored = aliccp.parse_feature_list(text, 4)
    self.assertEqual(features, {"205": ([7, 9], [1.0, 1.0]),
                                "109_14": ([3, 4], [0.5, 2.25])})
    self.assertEqual(ignored, 0)

  def test_counts_items_of_fields_outside_the_schema(self):
    text = _items(("205", 7, 1), ("999", 1, 1), ("999", 2, 1))
    features, ignored = aliccp.parse_feature_list(text, 3)
    self.assertEqual(features, {"205": ([7], [1.0])})
    self.assertEqual(ignored, 2)

  def test_empty_list(self):
    self.assertEqual(aliccp.parse_feature_list("", 0), ({}, 0))

  def test_non_ascii_text_with_good_separators_reaches_the_number_check(self):
    with self.assertRaises(aliccp.BadRowError) as e:
      aliccp.parse_feature_list(f"205{_F}\u00e9{_V}1", 1)
    self.assertEqual(e.exception.reason, "non_numeric")

  @parameterized.named_parameters(
      ("count_too_high", _items(("205", 1, 1)), 2, "feature_num_mismatch"),
      ("count_too_low", _items(("205", 1, 1), ("206", 2, 1)), 1,
       "feature_num_mismatch"),
      ("nothing_declared", _items(("205", 1, 1)), 0, "feature_num_mismatch"),
      ("swapped_separators", f"205{_V}1{_F}1", 1, "broken_separator"),
      ("missing_value_separator", f"205{_F}11", 1, "broken_separator"),
      ("separators_across_items", f"205{_F}1{_I}1{_V}206{_F}2{_V}1", 2,
       "broken_separator"),
      ("non_ascii_and_broken", f"205{_V}\u00e9{_F}1", 1, "broken_separator"),
      ("empty_field", f"{_F}1{_V}1", 1, "broken_separator"),
      ("id_not_a_number", _items(("205", "x1", 1)), 1, "non_numeric"),
      ("empty_id", _items(("205", "", 1)), 1, "non_numeric"),
      ("value_not_a_number", _items(("205", 1, "one")), 1, "non_numeric"),
      ("id_zero", _items(("205", 0, 1)), 1, "bad_id"),
      ("negative_id", _items(("205", -3, 1)), 1, "bad_id"),
      ("id_beyond_int64", _items(("205", 1 << 63, 1)), 1, "bad_id"),
      ("nan_value", _items(("205", 1, "nan")), 1, "bad_value"),
      ("infinite_value", _items(("205", 1, "inf")), 1, "bad_value"),
  )
  def test_rejects(self, text, feature_num, reason):
    with self.assertRaises(aliccp.BadRowError) as e:
      aliccp.parse_feature_list(text, feature_num)
    self.assertEqual(e.exception.reason, reason)


class SkeletonAndCommonTest(parameterized.TestCase):

  def test_skeleton_round_trip(self):
    items = [("205", 11, 1.0), ("210", 5, 1.0), ("210", 6, 1.0),
             ("301", 2, 1.0)]
    line = aliccp.format_skeleton_line("42", 1, 0, "abc123", items)
    row = aliccp.parse_skeleton_line(line + "\r\n")
    self.assertEqual((row.sample_id, row.click, row.conversion,
                      row.common_feature_index), ("42", 1, 0, "abc123"))
    self.assertEqual(row.features, {"205": ([11], [1.0]),
                                    "210": ([5, 6], [1.0, 1.0]),
                                    "301": ([2], [1.0])})
    self.assertEqual(aliccp.skeleton_index(line), "abc123")

  def test_common_round_trip_keeps_weights(self):
    items = [("101", 8, 1.0), ("109_14", 100, 0.693), ("109_14", 101, 2.5)]
    row = aliccp.parse_common_line(aliccp.format_common_line("abc", items))
    self.assertEqual(row.common_feature_index, "abc")
    self.assertEqual(row.features, {"101": ([8], [1.0]),
                                    "109_14": ([100, 101], [0.693, 2.5])})

  @parameterized.named_parameters(
      ("five_columns", "1,0,0,abc,1", "column_count"),
      ("empty_index", f"1,0,0,,1,{_items(('205', 1, 1))}", "empty_column"),
      ("empty_sample_id", f",0,0,abc,1,{_items(('205', 1, 1))}",
       "empty_column"),
      ("click_two", f"1,2,0,abc,1,{_items(('205', 1, 1))}", "bad_label"),
      ("conversion_text", f"1,0,y,abc,1,{_items(('205', 1, 1))}",
       "bad_label"),
      ("feature_num_text", f"1,0,0,abc,x,{_items(('205', 1, 1))}",
       "non_numeric"),
      ("comma_in_feature_list", f"1,0,0,abc,1,205{_F}1{_V}1,2",
       "non_numeric"),
      ("count_mismatch", f"1,0,0,abc,3,{_items(('205', 1, 1))}",
       "feature_num_mismatch"),
  )
  def test_rejects_skeleton(self, line, reason):
    with self.assertRaises(aliccp.BadRowError) as e:
      aliccp.parse_skeleton_line(line)
    self.assertEqual(e.exception.reason, reason)

  @parameterized.named_parameters(
      ("too_few_columns", "1,0,0", "column_count"),
      ("empty_index", "1,0,0,,3,x", "empty_column"),
  )
  def test_rejects_skeleton_index(self, line, reason):
    with self.assertRaises(aliccp.BadRowError) as e:
      aliccp.skeleton_index(line)
    self.assertEqual(e.exception.reason, reason)

  @parameterized.named_parameters(
      ("two_columns", "abc,1", "column_count"),
      ("empty_index", f",1,{_items(('101', 1, 1))}", "empty_column"),
      ("count_text", f"abc,one,{_items(('101', 1, 1))}", "non_numeric"),
      ("count_mismatch", f"abc,2,{_items(('101', 1, 1))}",
       "feature_num_mismatch"),
      ("broken_item", f"abc,1,101{_F}1", "broken_separator"),
  )
  def test_rejects_common(self, line, reason):
    with self.assertRaises(aliccp.BadRowError) as e:
      aliccp.parse_common_line(line)
    self.assertEqual(e.exception.reason, reason)


if __name__ == "__main__":
  absltest.main()
