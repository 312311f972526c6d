"""Tests of the Beam converter: transforms, outputs, statistics, rejections."""

import escm2_tf  # noqa: F401  Selects tf-keras before TensorFlow loads.

import collections
import glob
import json
import os
import shutil
import tempfile

from absl.testing import parameterized
import apache_beam as beam
from apache_beam.metrics import metric
from apache_beam.testing import test_pipeline
from apache_beam.testing import util as beam_util
import numpy as np
import tensorflow as tf

from escm2_tf.formats import aliccp
from escm2_tf import layout
from escm2_tf import schema
from escm2_tf import simulator
from escm2_pipelines import config as config_lib
from escm2_pipelines import convert
from escm2_pipelines import dofns
from escm2_pipelines import sinks
from escm2_pipelines import transforms

_K = 2  # max_values_per_field in these tests: small, so truncation happens.
_DEMO = os.path.join(os.path.dirname(__file__), "testdata", "paddlerec_demo",
                     "train", "small.txt")

_COMMONS = {
    "u1": [("101", 1, 1.0), ("121", 2, 1.0), ("109_14", 10, 0.5),
           ("109_14", 11, 2.0), ("109_14", 12, 1.0), ("150_14", 20, 1.0)],
    "u2": [("101", 3, 1.0), ("110_14", 30, 1.0), ("110_14", 31, 1.0),
           ("110_14", 32, 3.0), ("127_14", 40, 0.25)],
    "u3": [("101", 5, 1.0), ("122", 6, 1.0)],
    "unused": [("101", 7, 1.0)],
}
_GOOD = [  # (sample_id, click, conversion, index, sample items)
    ("s1", 1, 1, "u1", [("205", 100, 1.0), ("210", 101, 1.0),
                        ("210", 102, 1.0), ("210", 103, 1.0),
                        ("301", 1, 1.0)]),
    ("s2", 0, 0, "u1", [("205", 104, 1.0), ("206", 105, 1.0)]),
    ("s3", 1, 0, "u2", [("205", 100, 1.0), ("853", 106, 1.0)]),
    ("s5", 0, 0, "u3", [("205", 107, 2.0)]),  # A value the Example drops.
    ("s12", 0, 0, "u3", [("205", 100, 1.0), ("999", 5, 1.0)]),
]
_UNCLICKED_CONVERSION = ("s4", 0, 1, "u2", [("205", 108, 1.0)])
_BAD_SKELETON = {  # line -> reason
    aliccp.format_skeleton_line("s6", 0, 0, "bad", [("205", 1, 1.0)]):
        "missing_common_features",
    aliccp.format_skeleton_line("s7", 1, 0, "nowhere", [("205", 1, 1.0)]):
        "missing_common_features",
    aliccp.format_skeleton_line("s8", 0, 0, "dup", [("205", 1, 1.0)]):
        "duplicate_common_features",
    "s9,0,0,u1": "column_count",
    aliccp.format_skeleton_line("s10", 5, 0, "u1", [("205", 1, 1.0)]):
        "bad_label",
    aliccp.format_skeleton_line("s11", 0, 0, "u1", [("101", 1, 1.0)]):
        "wrong_source_field",
}
_NOT_UTF8 = b"s13,0,0,u1,1,205\x02\xff\x031"
_NOT_UTF8_TEXT = _NOT_UTF8.decode(errors="backslashreplace")
_BAD_SKELETON[_NOT_UTF8_TEXT] = "not_utf8"
_BAD_COMMON = {"bad,2,101\x021\x031": "feature_num_mismatch"}
_DUPLICATE_COMMONS = ["dup,1,101\x029\x031", "dup,1,101\x0210\x031"]


def _truncated(items):
  """The K heaviest of one field's (id, value) pairs, in file order."""
  order = sorted(range(len(items)), key=lambda k: (-items[k][1], k))[:_K]
  return [items[k] for k in sorted(order)]


def _expected_features(items):
  by_field = collections.defaultdict(list)
  for field, feature_id, value in items:
    if field in schema.FIELD_NAMES:
      by_field[field].append((feature_id, value))
  features = {}
  for field, pairs in by_field.items():
    pairs = _truncated(pairs)
    features[field] = [i for i, _ in pairs]
    weights = [float(np.float32(v)) for _, v in pairs]
    # Weights that are all 1.0 are left out: they read as 1.0 when absent.
    if field in schema.WEIGHTED_FIELDS and weights.count(1.0) < len(weights):
      features[schema.weight_name(field)] = weights
  return features


def _expected_examples(good=_GOOD):
  """sample_id -> {feature name: list} of the rows that must be written."""
  expected = {}
  for sample_id, click, conversion, index, items in good:
    example = _expected_features(_COMMONS[index] + items)
    example.update({schema.CLICK: [click], schema.CONVERSION: [conversion]})
    expected[sample_id] = example
  return expected


def _skeleton_lines():
  """The skeleton file's lines, as bytes (one is not UTF-8)."""
  rows = _GOOD + [_UNCLICKED_CONVERSION]
  lines = [aliccp.format_skeleton_line(s, c, v, i, items)
           for s, c, v, i, items in rows]
  return [_NOT_UTF8 if line == _NOT_UTF8_TEXT else line.encode()
          for line in lines + list(_BAD_SKELETON)]


def _common_lines():
  lines = ([aliccp.format_common_line(i, items)
            for i, items in _COMMONS.items()]
           + list(_BAD_COMMON) + _DUPLICATE_COMMONS)
  return [line.encode() for line in lines]


def _write_aliccp(directory):
  for name, lines in (("skeleton.csv", _skeleton_lines()),
                      ("common.csv", _common_lines())):
    with open(os.path.join(directory, name), "wb") as f:
      f.write(b"\n".join(lines) + b"\n")
  return (os.path.join(directory, "skeleton.csv"),
          os.path.join(directory, "common.csv"))


def _tempdir(test_case):
  directory = tempfile.mkdtemp()
  test_case.addCleanup(shutil.rmtree, directory, ignore_errors=True)
  return directory


def _decode(serialized):
  """One serialized Example as {feature name: list}, like the oracle."""
  feature = tf.train.Example.FromString(serialized).features.feature
  decoded = {}
  for name in feature:
    kind = feature[name].WhichOneof("kind")
    decoded[name] = list(getattr(feature[name], kind).value)
  sample_id = decoded.pop(schema.SAMPLE_ID)[0].decode()
  return sample_id, decoded


def _read_output(output_dir):
  """Parses every written record with the schema's spec."""
  files = sorted(glob.glob(layout.examples_glob(output_dir)))
  records = list(tf.data.TFRecordDataset(files, compression_type="GZIP")
                 .as_numpy_iterator())
  parsed = tf.io.parse_example(records,
                               schema.feature_spec(with_sample_id=True))
  columns = {name: (value.to_list() if isinstance(value, tf.RaggedTensor)
                    else [[v] for v in value.numpy().tolist()])
             for name, value in parsed.items() if name != schema.SAMPLE_ID}
  by_id = {}
  for k, sample_id in enumerate(parsed[schema.SAMPLE_ID].numpy()):
    by_id[sample_id.decode()] = {name: column[k]
                                 for name, column in columns.items()
                                 if column[k]}
  return by_id, records


class ConvertAliCcpTransformTest(parameterized.TestCase):

  @parameterized.parameters(*config_lib.JOINS)
  def test_whole_transform(self, join):
    p = test_pipeline.TestPipeline(
        options=beam.options.pipeline_options.PipelineOptions(
            [f"--runner={convert.DEFAULT_RUNNER}"]))
    inputs = {
        "skeleton": p | "Skeleton" >> beam.Create(
            [("skeleton.csv", line) for line in _skeleton_lines()]),
        "common": p | "Common" >> beam.Create(
            [("common.csv", line) for line in _common_lines()]),
    }
    outputs = inputs | transforms.ConvertAliCcp(_K, False, join)
    decoded = (outputs["examples"] | beam.FlatMap(lambda batch: batch)
               | beam.Map(_decode))
    beam_util.assert_that(
        decoded, beam_util.equal_to(list(_expected_examples().items())),
        label="Examples")
    rejected = outputs["rejected"] | beam.Map(
        lambda text: tuple(text.split("\t", 2)))
    expected_rejected = (
        [(r, "skeleton.csv", line) for line, r in _BAD_SKELETON.items()]
        + [(r, "common.csv", line) for line, r in _BAD_COMMON.items()])
    beam_util.assert_that(rejected, beam_util.equal_to(expected_rejected),
                          label="Rejected")
    totals = outputs["tallies"] | transforms.SumTallies() | beam.Map(
        lambda c: (c["rows_read"], c["rows_written"], c["rows_rejected"],
                   c["rows_dropped"], c["common_rows_used"],
                   c["common_rows_duplicate"]))
    beam_util.assert_that(totals, beam_util.equal_to([(13, 5, 7, 1, 3, 2)]),
                          label="Totals")
    result = p.run()
    result.wait_until_finish()

    counters = result.metrics().query(
        metric.MetricsFilter().with_namespace(dofns.METRICS_NAMESPACE))
    counted = collections.Counter()
    for counter in counters["counters"]:
      counted[counter.key.metric.name] += counter.committed
    expected = collections.Counter(
        {f"rejected_{r}": n
         for r, n in collections.Counter(_BAD_SKELETON.values()).items()})
    expected["common_rejected_feature_num_mismatch"] = 1
    self.assertEqual(counted, expected)


class ConvertTest(tf.test.TestCase, parameterized.TestCase):

  def _convert_aliccp(self, join="side_input", **kwargs):
    skeleton, common = _write_aliccp(_tempdir(self))
    output_dir = os.path.join(_tempdir(self), "out")
    kwargs.setdefault("max_bad_fraction", 1.0)
    stats = convert.convert(output_dir, input_format="aliccp",
                            skeleton=skeleton, common_features=common,
                            max_values_per_field=_K, join=join, **kwargs)
    return output_dir, stats

  @parameterized.parameters(*config_lib.JOINS)
  def test_records_read_back_exactly(self, join):
    output_dir, stats = self._convert_aliccp(join)
    by_id, records = _read_output(output_dir)
    self.assertEqual(by_id, _expected_examples())
    self.assertLen(records, stats["rows_written"])

    self.assertTrue(os.path.exists(layout.stats_file(output_dir)))
    with open(layout.stats_file(output_dir)) as f:
      self.assertEqual(json.load(f), stats)
    self.assertEqual(stats["rows_read"], stats["rows_written"]
                     + stats["rows_rejected"] + stats["rows_dropped"])
    self.assertEqual((stats["rows_read"], stats["rows_written"],
                      stats["rows_rejected"], stats["rows_dropped"]),
                     (13, 5, 7, 1))
    self.assertEqual(stats["rejected_by_reason"],
                     dict(collections.Counter(_BAD_SKELETON.values())))
    self.assertEqual((stats["clicks"], stats["conversions"]), (2, 1))
    self.assertEqual(
        {k: stats[k] for k in ("common_rows_read", "common_rows_rejected",
                               "common_rows_duplicate", "common_rows_used",
                               "common_rows_unused")},
        {"common_rows_read": 7, "common_rows_rejected": 1,
         "common_rows_duplicate": 2, "common_rows_used": 3,
         "common_rows_unused": 1})
    self.assertEqual(stats["common_rejected_by_reason"],
                     {"feature_num_mismatch": 1})
    expected = _expected_examples().values()
    for field in schema.FIELD_NAMES:
      having = [e[field] for e in expected if field in e]
      self.assertAlmostEqual(stats["fields"][field]["coverage"],
                             len(having) / len(expected), msg=field)
      self.assertAlmostEqual(stats["fields"][field]["mean_ids"],
                             sum(map(len, having)) / len(expected), msg=field)
    # u1's 109_14 and the 3-id 210 of s1 lose one id each; u2's 110_14 one.
    self.assertEqual(stats["fields"]["109_14"]["truncated_ids"], 1)
    self.assertEqual(stats["fields"]["210"]["truncated_ids"], 1)
    self.assertEqual(stats["fields"]["110_14"]["truncated_ids"], 1)
    self.assertEqual(stats["ids_outside_schema"], 1)
    self.assertEqual(stats["values_not_stored"], 1)

  def test_vocabularies_count_written_ids(self):
    output_dir, _ = self._convert_aliccp()
    expected = _expected_examples().values()
    for field in schema.FIELD_NAMES:
      counts = collections.Counter(i for e in expected
                                   for i in e.get(field, []))
      vocab_dir = layout.vocab_dir(output_dir)
      with open(layout.vocabulary_file(vocab_dir, field)) as f:
        lines = f.read().splitlines()
      rows = [tuple(map(int, line.split("\t"))) for line in lines]
      self.assertEqual(dict(rows), dict(counts), msg=field)
      self.assertEqual(rows, sorted(rows, key=lambda r: (-r[1], r[0])))
    self.assertEqual(sinks.format_vocabulary({5: 2, 3: 2, 9: 7}),
                     "9\t7\n3\t2\n5\t2\n")

  def test_rejected_rows_are_written_with_reasons(self):
    output_dir, _ = self._convert_aliccp()
    lines = []
    for path in glob.glob(os.path.join(output_dir, "rejected", "*.tsv")):
      with open(path) as f:
        lines += f.read().splitlines()
    rows = {tuple(line.split("\t", 2)) for line in lines}
    skeleton = {(r, os.path.basename(s), line) for r, s, line in rows
                if s.endswith("skeleton.csv")}
    self.assertEqual(skeleton, {(r, "skeleton.csv", line)
                                for line, r in _BAD_SKELETON.items()})
    self.assertEqual({(r, line) for r, s, line in rows
                      if s.endswith("common.csv")},
                     {(r, line) for line, r in _BAD_COMMON.items()})

  @parameterized.parameters(*config_lib.JOINS)
  def test_too_many_bad_rows_leaves_only_the_rejected_rows(self, join):
    with self.assertRaisesRegex(convert.TooManyBadRowsError,
                                r"7 of 13 rows rejected .*max_bad_fraction"
                                ) as e:
      self._convert_aliccp(join, max_bad_fraction=0.4)
    output_dir = e.exception.stats["settings"]["output_dir"]
    self.assertCountEqual(os.listdir(output_dir),
                          [layout.FAILED_FILE, layout.REJECTED_DIR])
    self.assertEmpty(glob.glob(layout.examples_glob(output_dir)))
    rejected = []
    for path in glob.glob(os.path.join(output_dir, layout.REJECTED_DIR, "*")):
      with open(path) as f:
        rejected += [line.split("\t")[2] for line in f.read().splitlines()
                     if line.split("\t")[1].endswith("skeleton.csv")]
    self.assertCountEqual(rejected, list(_BAD_SKELETON))
    with open(layout.failed_file(output_dir)) as f:
      failed = json.load(f)
    self.assertEqual(failed["error"], str(e.exception))
    self.assertEqual(failed["stats"], e.exception.stats)
    self.assertEqual(failed["stats"]["rows_rejected"], 7)

  def test_keep_unclicked_conversions(self):
    output_dir, stats = self._convert_aliccp(keep_unclicked_conversions=True,
                                             num_shards=3)
    by_id, _ = _read_output(output_dir)
    self.assertEqual(by_id, _expected_examples(_GOOD + [_UNCLICKED_CONVERSION]))
    self.assertEqual((stats["rows_dropped"], stats["conversions"]), (0, 2))
    self.assertEqual(
        sorted(os.path.basename(p) for p in
               glob.glob(layout.examples_glob(output_dir))),
        [f"part-0000{k}-of-00003.tfrecord.gz" for k in range(3)])

  def test_paddlerec_demo_keeps_every_id(self):
    output_dir = os.path.join(_tempdir(self), "out")
    stats = convert.convert(output_dir, input_format="paddlerec", input=_DEMO,
                            max_values_per_field=0)
    by_id, _ = _read_output(output_dir)
    with open(_DEMO) as f:
      lines = f.read().splitlines()
    self.assertEqual((stats["rows_read"], stats["rows_rejected"]),
                     (len(lines), 0))
    for line in lines:
      tokens = line.split(",")
      if tokens[1:3] == ["0", "1"]:
        continue
      expected = collections.defaultdict(list)
      for token in tokens[3:]:
        field, gid = token.split(":")
        expected[field].append(int(gid))
      got = by_id[tokens[0]]
      self.assertEqual({f: got[f] for f in schema.FIELD_NAMES if f in got},
                       dict(expected))
      self.assertEqual((got[schema.CLICK], got[schema.CONVERSION]),
                       ([int(tokens[1])], [int(tokens[2])]))

  def test_same_examples_from_either_join(self):
    records = []
    for join in config_lib.JOINS:
      output_dir, _ = self._convert_aliccp(join)
      records.append(sorted(_read_output(output_dir)[1]))
    self.assertEqual(records[0], records[1])

  def test_simulated_data_is_joined_exactly(self):
    raw_dir = _tempdir(self)
    simulator.simulate(simulator.SimulatorConfig(
        num_train=3000, num_test=1, num_users=200, num_items=400, seed=3),
        raw_dir)
    output_dir = os.path.join(_tempdir(self), "out")
    stats = convert.convert(
        output_dir, input_format="aliccp",
        skeleton=os.path.join(raw_dir, "sample_skeleton_train.csv"),
        common_features=os.path.join(raw_dir, "common_features_train.csv"),
        max_values_per_field=0, keep_unclicked_conversions=True)
    by_id, _ = _read_output(output_dir)
    users = {}
    with open(os.path.join(raw_dir, "common_features_train.csv")) as f:
      for line in f.read().splitlines():
        index, _, features = line.split(",", 2)
        users[index] = features
    with open(os.path.join(raw_dir, layout.ground_truth_file("train"))) as f:
      truth_ids = [line.split(",")[0] for line in f.read().splitlines()[1:]]
    with open(os.path.join(raw_dir, "sample_skeleton_train.csv")) as f:
      skeleton = f.read().splitlines()
    self.assertEqual(sorted(by_id), sorted(truth_ids))
    self.assertEqual(stats["rows_written"], 3000)
    for line in skeleton:
      sample_id, click, conversion, index, _, features = line.split(",")
      expected = collections.defaultdict(list)
      for item in f"{users[index]}\x01{features}".split("\x01"):
        field, rest = item.split("\x02")
        feature_id, value = rest.split("\x03")
        expected[field].append(int(feature_id))
        if field in schema.WEIGHTED_FIELDS:
          expected[schema.weight_name(field)].append(
              float(np.float32(value)))
      for field in schema.WEIGHTED_FIELDS:
        weights = expected.get(schema.weight_name(field), [])
        if weights and weights.count(1.0) == len(weights):
          del expected[schema.weight_name(field)]
      expected[schema.CLICK] = [int(click)]
      expected[schema.CONVERSION] = [int(conversion)]
      self.assertEqual(by_id[sample_id], dict(expected), msg=sample_id)


class ConvertErrorsTest(parameterized.TestCase):

  def test_non_empty_output_dir(self):
    output_dir = _tempdir(self)
    with open(os.path.join(output_dir, "old.tfrecord.gz"), "w"):
      pass
    with self.assertRaisesRegex(config_lib.ConfigError,
                                "output_dir: .* is not empty"):
      convert.convert(output_dir, input_format="paddlerec", input=_DEMO)

  def test_unknown_pipeline_option(self):
    with self.assertRaisesRegex(config_lib.ConfigError,
                                "max_value_per_field: unknown flag"):
      convert.convert(os.path.join(_tempdir(self), "o"),
                      input_format="paddlerec", input=_DEMO,
                      pipeline_args=["--max_value_per_field=3"])

  def test_glob_without_files(self):
    with self.assertRaisesRegex(config_lib.ConfigError,
                                "skeleton: no file matches"):
      convert.convert(os.path.join(_tempdir(self), "o"),
                      input_format="aliccp", skeleton="/nonexistent/*.csv",
                      common_features=_DEMO)

  @parameterized.named_parameters(
      ("format", dict(input_format="csv", input="x"), "input_format"),
      ("aliccp_without_common", dict(input_format="aliccp", skeleton="x"),
       "common_features: is required"),
      ("aliccp_with_input", dict(input_format="aliccp", skeleton="x",
                                 common_features="y", input="z"),
       "input: is not read"),
      ("paddlerec_without_input", dict(input_format="paddlerec"),
       "input: is required"),
      ("paddlerec_with_common", dict(input_format="paddlerec", input="x",
                                     common_features="y"),
       "common_features: is only read"),
      ("negative_max_values", dict(input_format="paddlerec", input="x",
                                   max_values_per_field=-1),
       "max_values_per_field"),
      ("fraction", dict(input_format="paddlerec", input="x",
                        max_bad_fraction=1.5), "max_bad_fraction"),
      ("shards", dict(input_format="paddlerec", input="x", num_shards=-2),
       "num_shards"),
      ("join", dict(input_format="paddlerec", input="x", join="hash"),
       "join"),
  )
  def test_invalid_settings(self, settings, message):
    with self.assertRaisesRegex(config_lib.ConfigError, message):
      config_lib.ConvertConfig(output_dir="out", **settings)


if __name__ == "__main__":
  tf.test.main()
