"""EncodePaddleRecFn against the whole-line parse it replaces.

The DoFn encodes a line's impression tokens through ``formats.tokens``' cache
and counts a user's part once per user; these tests run it over PaddleRec's
demo rows, simulated lines and bad lines, and compare its records, counts,
vocabulary and rejected lines with a reference that parses every line whole
(``paddlerec.parse_paddlerec_line``) and counts every row alone.
"""

import escm2_tf  # noqa: F401  Selects tf-keras before TensorFlow loads.

import collections
import os
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
from apache_beam import pvalue
import tensorflow as tf

import testing
from escm2_tf import schema
from escm2_tf import simulator
from escm2_tf.formats import aliccp
from escm2_tf.formats import examples
from escm2_tf.formats import paddlerec
from escm2_pipelines import dofns
from escm2_pipelines import tally as tally_lib

_DEMO = os.path.join(os.path.dirname(__file__), "testdata", "paddlerec_demo",
                     "train", "small.txt")
_BAD_AND_ODD = [
    "b1,0,0,205:x,121:7", "b2,0,0,205:3,121:-1", "b3,2,0,205:3,121:7",
    "b4,0,1,205:3,121:7,150_14:5", "b5,0,0,205:3,121:7,205:4",
    "b6,1,0,205:0,121:7,150_14:0", "b7,0,0,121:7,150_14:8", "b8,0,0,205:3",
]


def _lines():
  raw_dir = testing.new_dir()
  simulator.simulate(simulator.SimulatorConfig(
      num_train=400, num_test=1, num_users=20, num_items=300, seed=3,
      behaviour_length=25, format="paddlerec"), raw_dir)
  with open(os.path.join(raw_dir, "paddlerec_train.txt"), "rb") as f:
    lines = f.read().splitlines()
  with open(_DEMO, "rb") as f:
    lines += f.read().splitlines()
  lines += [line.encode() for line in _BAD_AND_ODD] + [b"b9,0,0,\xff:1"]
  return [("src", line) for line in lines]


def _run_dofn(lines, max_values):
  """(records, counts, vocab, rejected lines) of one bundle."""
  fn = dofns.EncodePaddleRecFn(max_values, keep_unclicked_conversions=False)
  fn.start_bundle()
  outputs = []
  for start in range(0, len(lines), 37):
    outputs += fn.process(lines[start:start + 37])
  outputs += fn.finish_bundle()
  records, rejected, vocab = [], [], collections.defaultdict(dict)
  counts = collections.Counter()
  for output in outputs:
    if not isinstance(output, pvalue.TaggedOutput):
      records += output
      continue
    value = getattr(output.value, "value", output.value)
    if output.tag == dofns.TALLY:
      counts.update(value)
    elif output.tag == dofns.VOCAB:
      vocab[value[0]].update(value[1])
    elif output.tag == dofns.REJECTED:
      rejected.append(value)
  return records, counts, dict(vocab), rejected


def _reference(lines, max_values):
  """The same four, every line parsed whole and counted alone."""
  tally = tally_lib.Tally()
  records, rejected = [], []
  for source, raw in lines:
    tally.counts[tally_lib.ROWS_READ] += 1
    try:
      row = paddlerec.parse_paddlerec_line(raw.decode())
    except (aliccp.BadRowError, UnicodeDecodeError) as e:
      reason = e.reason if isinstance(e, aliccp.BadRowError) else "not_utf8"
      tally.reject(reason)
      text = raw.decode(errors="backslashreplace")
      rejected.append(f"{reason}\t{source}\t{text}")
      continue
    kept, truncated = examples.limit_values(row.features, max_values)
    tally.parsed(truncated, row.ignored_items, 0, row.padding_ids)
    if row.click == 0 and row.conversion == 1:
      tally.counts[tally_lib.ROWS_DROPPED] += 1
      continue
    tally.written(row.click, row.conversion)
    tally.ids([(field, ids) for field, (ids, _) in kept.items()])
    records.append(examples.serialize_example(row.sample_id, row.click,
                                              row.conversion, kept))
  counts = tally.finish()
  vocab = {field: dict(ids) for field, ids in tally.vocab.items()}
  return records, counts, vocab, rejected


class EncodePaddleRecFnTest(parameterized.TestCase):

  @parameterized.parameters(0, 3, 20)
  def test_same_records_counts_and_vocabulary(self, max_values):
    lines = _lines()
    records, counts, vocab, rejected = _run_dofn(lines, max_values)
    expected = _reference(lines, max_values)
    self.assertEqual(records, expected[0])
    self.assertEqual(counts, expected[1])
    self.assertEqual(vocab, expected[2])
    self.assertEqual(rejected, expected[3])
    self.assertTrue(counts[tally_lib.PADDING_IDS])
    self.assertTrue(counts[tally_lib.ROWS_REJECTED])

  def test_counts_users_waiting_past_the_limit(self):
    lines = _lines()
    with mock.patch.object(dofns, "_MAX_SHARED", 2):
      got = _run_dofn(lines, 3)
    self.assertEqual(got, _reference(lines, 3))

  def test_demo_records_parse_to_the_lines_ids(self):
    with open(_DEMO, "rb") as f:
      lines = [("demo", line) for line in f.read().splitlines()]
    records, _, _, _ = _run_dofn(lines, 0)
    spec = schema.feature_spec(with_sample_id=True)
    self.assertLen(records, len(lines))
    for (_, raw), record in zip(lines, records):
      row = paddlerec.parse_paddlerec_line(raw.decode())
      parsed = tf.io.parse_single_example(record, spec)
      self.assertEqual(parsed[schema.SAMPLE_ID].numpy().decode(),
                       row.sample_id)
      self.assertEqual((int(parsed[schema.CLICK]),
                        int(parsed[schema.CONVERSION])),
                       (row.click, row.conversion))
      for field in schema.FIELD_NAMES:
        ids = row.features.get(field, ([], []))[0]
        self.assertEqual(parsed[field].numpy().tolist(), ids, msg=field)


if __name__ == "__main__":
  absltest.main()
