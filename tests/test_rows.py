"""Per-row encoding tests: PaddleRec's token and user caches are exact."""

import itertools
import os

from absl.testing import absltest
from absl.testing import parameterized

import testing
from escm2_tf import simulator
from escm2_tf.formats import aliccp
from escm2_tf.formats import encode
from escm2_tf.formats import examples
from escm2_tf.formats import paddlerec
from escm2_tf.formats import tokens

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
    ("18,0,0,210:1,205:2,210:3,121:7", "a field in two runs"),
    ("19,0,0,205:+3,206: 4,207:1_0,121:7", "ids int() reads"),
    ("20,0,0,205:9223372036854775807,121:7", "the largest id"),
    ("21,0,0,205:9223372036854775808,121:7", "an id past int64"),
    ("22,0,0,210:0,210:0,777:0,121:7", "padding only, also outside"),
    ("23,0,0,205:3,121:7,150_14:1,150_14:2,150_14:3", "weights, truncated"),
    ("24,0,0,205:3,121:7,150_14:0,150_14:x", "bad after padding there"),
    ("25,0,0,205:é,121:7", "non-ASCII id"),
    ("26,0,0,2é5:3,121:7", "non-ASCII field"),
]


def _reference(line, max_values):
  """What the converter wrote before the cache: parse all, then encode."""
  row = paddlerec.parse_paddlerec_line(line)
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
  paddlerec_row = paddlerec.parse_paddlerec_line(line)
  assert (row.sample_id, row.click, row.conversion) == (
      paddlerec_row.sample_id, paddlerec_row.click, paddlerec_row.conversion)
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
    self._assert_same(_demo_and_simulated_lines(), max_values)

  @parameterized.parameters(0, 2, 20)
  def test_parts_join_to_the_whole(self, max_values):
    for line in itertools.chain(*[[line for line, _ in _EDGE_LINES]] * 2,
                                _demo_and_simulated_lines()):
      outcome = _outcome(encode.encode_paddlerec_parts, line, max_values)
      if isinstance(outcome, str):
        self.assertEqual(outcome, _outcome(_reference, line, max_values))
        continue
      row, own, shared = outcome
      self.assertEqual(
          _outcome(_cached, line, max_values),
          _outcome(_reference, line, max_values), msg=line)
      entries = own.entries + (shared.entries if shared else b"")
      self.assertEqual(entries, _reference(line, max_values)[0], msg=line)
      self.assertEqual(row.sample_id, line.split(",")[0])

  def test_a_users_lines_share_one_part(self):
    lines = _demo_and_simulated_lines()[:300]
    parts = [encode.encode_paddlerec_parts(line, 20)[2] for line in lines]
    users = [line.split(",121:", 1)[1] for line in lines]
    for k in range(1, len(lines)):
      self.assertEqual(parts[k] is parts[k - 1], users[k] == users[k - 1])


class EncodeTokensTest(parameterized.TestCase):

  @parameterized.parameters(
      "205:x", "205", "205:1:2", ":5", "", "205:-1", "205:9223372036854775808",
      "205:3,,206:4", "205:1.0")
  def test_a_bad_token_is_left_to_the_staged_parse(self, text):
    self.assertIsNone(tokens.encode_tokens(text, 20))
    with self.assertRaises(aliccp.BadRowError):
      paddlerec.parse_paddlerec_tokens(text)

  @parameterized.parameters(0, 1, 2, 20)
  def test_same_as_the_staged_parse(self, max_values):
    for text in ["205:3", "210:1,205:2,210:3,210:4", "210:0,777:5,205:0",
                 "150_14:4,150_14:5,150_14:6,205:7", "205:3,205:3"] * 2:
      features, ignored, padding = paddlerec.parse_paddlerec_tokens(text)
      kept, truncated = examples.limit_values(features, max_values)
      encoded = tokens.encode_tokens(text, max_values)
      self.assertEqual(encoded.entries, examples.field_entries(kept))
      self.assertEqual(encoded.ids, [(f, ids) for f, (ids, _) in kept.items()])
      self.assertEqual(set(encoded.fields), set(kept))
      self.assertEqual((encoded.truncated, encoded.ignored, encoded.padding),
                       (truncated, ignored, padding))


def _demo_and_simulated_lines():
  raw_dir = testing.new_dir()
  simulator.simulate(simulator.SimulatorConfig(
      num_train=300, num_test=1, num_users=30, num_items=400, seed=2,
      behaviour_length=30, format="paddlerec"), raw_dir)
  with open(os.path.join(raw_dir, "paddlerec_train.txt")) as f:
    lines = f.read().splitlines()
  with open(_DEMO) as f:
    return lines + f.read().splitlines()


if __name__ == "__main__":
  absltest.main()
