"""Tests of the per-row encoding: PaddleRec's cached user side is exact."""

import itertools
import os

from absl.testing import absltest
from absl.testing import parameterized

import testing
from escm2_tf import simulator
from escm2_tf.formats import aliccp
from escm2_tf.formats import encode
from escm2_tf.formats import examples

_DEMO = os.path.join(os.path.dirname(__file__), "testdata", "paddlerec_demo",
                     "train", "small.txt")

# (line, why it is here); 101, 121, 150_14 are user-side fields, 205, 210,
# 301 the impression's.
_EDGE_LINES = [
    ("1,0,0,205:3,210:4,210:5,121:7,150_14:8,150_14:9,150_14:10", "plain"),
    ("2,1,0,205:3,210:4,210:5,121:7,150_14:8,150_14:9,150_14:10", "same user"),
    ("3,0,0,121:7,150_14:8", "user side only"),
    ("4,0,0,205:3,301:1", "impression only"),
    ("5,0,0,205:3,121:7,205:4,150_14:8", "a field on both sides"),
    ("6,0,0,205:0,121:0,150_14:8,150_14:0", "padding on both sides"),
    ("7,0,0,205:3,777:1,121:7,888:2", "fields outside the schema"),
    ("8,0,0,205:3,1211:7,121:8", "a field name that extends a user field"),
    ("9,0,0,205:x,121:7:1", "non-numeric here, broken there"),
    ("10,0,0,205:-1,121:x", "bad id here, non-numeric there"),
    ("11,0,0,205:x,121:-1", "non-numeric here, bad id there"),
    ("12,0,0,205:-1,121:7", "bad id here"),
    ("13,0,0,205:3,121:-1", "bad id there"),
    ("14,0,0,205:3,,121:7", "empty token before the user side"),
    ("15,0,0,205:3,121:7,", "trailing comma"),
    ("16,0,0,205:3,:5,121:7", "empty field"),
    ("17,0,0,205:1:2,121:x", "broken here, non-numeric there"),
]


def _reference(line, max_values):
  """What the converter wrote before the cache: parse all, then encode."""
  row = aliccp.parse_paddlerec_line(line)
  kept, truncated = examples.limit_values(row.features, max_values)
  labels = examples.label_entries(row.sample_id, row.click, row.conversion)
  return (labels + examples.field_entries(kept),
          [(f, ids) for f, (ids, _) in kept.items()], truncated,
          row.ignored_items, row.padding_ids)


def _outcome(function, *args):
  try:
    return function(*args)
  except aliccp.BadRowError as e:
    return e.reason


def _cached(line, max_values):
  row, encoded = encode.encode_paddlerec(line, max_values)
  aliccp_row = aliccp.parse_paddlerec_line(line)
  assert (row.sample_id, row.click, row.conversion) == (
      aliccp_row.sample_id, aliccp_row.click, aliccp_row.conversion)
  assert encoded.unstored_values == 0
  return (encoded.entries, list(encoded.ids), encoded.truncated,
          encoded.ignored, encoded.padding_ids)


class EncodePaddleRecTest(parameterized.TestCase):

  def _assert_same(self, lines, max_values):
    # Twice: the second pass reads the user sides from the cache.
    for line in itertools.chain(lines, lines):
      self.assertEqual(_outcome(_cached, line, max_values),
                       _outcome(_reference, line, max_values), msg=line)

  @parameterized.parameters(0, 1, 2, 20)
  def test_edge_cases(self, max_values):
    self._assert_same([line for line, _ in _EDGE_LINES], max_values)

  def test_edge_cases_reject_as_before(self):
    reasons = {why: _outcome(_reference, line, 20)
               for line, why in _EDGE_LINES}
    self.assertEqual(reasons["non-numeric here, broken there"],
                     "broken_separator")
    self.assertEqual(reasons["bad id here, non-numeric there"],
                     "non_numeric")
    self.assertEqual(reasons["non-numeric here, bad id there"],
                     "non_numeric")
    self.assertEqual(reasons["bad id there"], "bad_id")

  @parameterized.parameters(3, 20)
  def test_demo_and_simulated_lines(self, max_values):
    raw_dir = testing.new_dir()
    simulator.simulate(simulator.SimulatorConfig(
        num_train=300, num_test=1, num_users=30, num_items=400, seed=2,
        behaviour_length=30, format="paddlerec"), raw_dir)
    with open(os.path.join(raw_dir, "paddlerec_train.txt")) as f:
      lines = f.read().splitlines()
    with open(_DEMO) as f:
      lines += f.read().splitlines()
    self._assert_same(lines, max_values)


if __name__ == "__main__":
  absltest.main()
