"""Tests of the local runner: byte ranges, shards, and Beam's outputs."""

import escm2_tf  # noqa: F401  Selects tf-keras before TensorFlow loads.

import collections
import errno
import glob
import gzip
import json
import os
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import apache_beam as beam
from apache_beam.metrics import metric
from apache_beam.testing import test_pipeline
import tensorflow as tf

import testing
from escm2_tf import layout
from escm2_tf import simulator
from escm2_tf.formats import encode
from escm2_pipelines import config as config_lib
from escm2_pipelines import convert
from escm2_pipelines import dofns
from escm2_pipelines import local
from escm2_pipelines import ranges
from escm2_pipelines import resources
from escm2_pipelines import tfrecord
from escm2_pipelines import transforms

_DEMO = os.path.join(os.path.dirname(__file__), "testdata", "paddlerec_demo",
                     "train", "small.txt")
# Beam's own runner in this process: the reference the local runner matches.
_BEAM_IN_MEMORY = ["--runner=FnApiRunner", "--direct_running_mode=in_memory"]


def _records(output_dir):
  """The serialized records of every shard, as a multiset of bytes."""
  files = glob.glob(layout.examples_glob(output_dir))
  return collections.Counter(
      tf.data.TFRecordDataset(files, compression_type="GZIP")
      .as_numpy_iterator())


def _stats(output_dir):
  with open(layout.stats_file(output_dir)) as f:
    stats = json.load(f)
  del stats["settings"]  # Names the output directory.
  return stats


def _text_files(pattern):
  contents = {}
  for path in glob.glob(pattern):
    with open(path, "rb") as f:
      contents[os.path.basename(path)] = f.read()
  return contents


def _rejected_lines(output_dir):
  lines = collections.Counter()
  for content in _text_files(os.path.join(output_dir, "rejected",
                                          "*")).values():
    lines.update(content.splitlines())
  return lines


class RangesTest(parameterized.TestCase):

  def _write(self, name, content):
    path = os.path.join(self._dir, name)
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "wb") as f:
      f.write(content)
    return path

  def setUp(self):
    super().setUp()
    self._dir = testing.new_dir()

  @parameterized.parameters(1, 2, 3, 5, 8, 40)
  def test_every_line_exactly_once_in_order(self, num_parts):
    # CRLF and LF endings, an empty line, a lone \r, no final newline.
    first = self._write("a.txt", b"alpha\r\nb\n\nlonger line here\n"
                        b"c\rd\nlast")
    second = self._write("b.txt", b"x\ny\n")
    empty = self._write("c.txt", b"")
    packed = self._write("d.txt.gz", b"g1\ng2\r\n")
    files = ranges.match(os.path.join(self._dir, "*"))
    self.assertEqual([p for p, _ in files], [first, second, empty, packed])
    parts = ranges.split(files, num_parts)
    self.assertLen(parts, num_parts)
    lines = [line for part in parts for line in ranges.read_lines(part)]
    self.assertEqual(lines, [
        (first, b"alpha"), (first, b"b"), (first, b""),
        (first, b"longer line here"), (first, b"c\rd"), (first, b"last"),
        (second, b"x"), (second, b"y"), (packed, b"g1"), (packed, b"g2")])

  def test_parts_hold_nearly_equal_bytes(self):
    path = self._write("a.txt", b"".join(b"%05d\n" % k for k in range(1000)))
    parts = ranges.split(ranges.match(path), 4)
    self.assertEqual([r.end - r.start for [r] in parts], [1500] * 4)
    self.assertEqual(
        [len(list(ranges.read_lines(part))) for part in parts], [250] * 4)


class DefaultShardsTest(parameterized.TestCase):

  @parameterized.parameters(
      (0, 2, 1),  # An empty input still gets its one (empty) shard.
      (10 << 20, 2, 2),  # Few bytes: none below 4 MiB of input.
      (10 << 30, 2, 16),  # Many: 8 per worker.
      (10 << 30, 1, 8),
      (10 << 30, 64, 512),
  )
  def test_count(self, input_bytes, workers, expected):
    self.assertEqual(local.default_num_shards(input_bytes, workers), expected)

  def test_converter_writes_the_default_count(self):
    output_dir = os.path.join(testing.new_dir(), "out")
    size = os.path.getsize(_DEMO)
    with mock.patch.object(local, "MIN_SHARD_INPUT_BYTES", size // 5):
      convert.convert(output_dir, input_format="paddlerec", input=_DEMO,
                      num_workers=2)
    names = sorted(os.path.basename(p) for p in
                   glob.glob(layout.examples_glob(output_dir)))
    self.assertEqual(names, [f"part-{k:05d}-of-00005.tfrecord.gz"
                             for k in range(5)])
    self.assertEqual(sum(_records(output_dir).values()),
                     _stats(output_dir)["rows_written"])
    self.assertEqual(os.listdir(output_dir).count(layout.STATS_FILE), 1)
    self.assertEmpty([n for n in os.listdir(output_dir)
                      if n.startswith(".")])


class SameAsBeamTest(parameterized.TestCase):
  """The local runner writes what Beam's runner writes, byte for byte."""

  def _convert_both(self, num_shards, **kwargs):
    outputs = []
    for pipeline_args in ([], _BEAM_IN_MEMORY):
      output_dir = os.path.join(testing.new_dir(), "out")
      convert.convert(output_dir, max_bad_fraction=1.0, num_workers=2,
                      num_shards=num_shards, pipeline_args=pipeline_args,
                      **kwargs)
      outputs.append(output_dir)
    return outputs

  def _assert_same(self, local_dir, beam_dir):
    records = _records(local_dir)
    self.assertGreater(sum(records.values()), 10)
    self.assertEqual(records, _records(beam_dir))
    vocab = _text_files(os.path.join(layout.vocab_dir(local_dir), "*"))
    self.assertNotEmpty(vocab)
    self.assertEqual(vocab, _text_files(os.path.join(layout.vocab_dir(beam_dir),
                                                     "*")))
    self.assertEqual(_stats(local_dir), _stats(beam_dir))
    self.assertEqual(_rejected_lines(local_dir), _rejected_lines(beam_dir))

  @parameterized.parameters(1, 3)
  def test_simulated_aliccp(self, num_shards):
    raw_dir = testing.new_dir()
    simulator.simulate(simulator.SimulatorConfig(
        num_train=3000, num_test=1, num_users=200, num_items=400, seed=5),
        raw_dir)
    skeleton = os.path.join(raw_dir, "sample_skeleton_train.csv")
    with open(skeleton, "a") as f:
      f.write("bad,0,0,nowhere,1,205\x021\x031\nshort,0\n")
    common = os.path.join(raw_dir, "common_features_train.csv")
    with open(common) as f:
      first_common = f.readline()
    # A user's row twice (its impressions are rejected) and a bad row.
    with open(common, "a") as f:
      f.write(first_common + "no-features,1\n")
    local_dir, beam_dir = self._convert_both(
        num_shards, input_format="aliccp", skeleton=skeleton,
        common_features=common)
    self.assertLen(glob.glob(layout.examples_glob(local_dir)),
                   num_shards)
    stats = _stats(local_dir)
    self.assertEqual((stats["common_rows_duplicate"],
                      stats["common_rows_rejected"]), (2, 1))
    self.assertEqual(stats["rejected_by_reason"]["missing_common_features"],
                     1)
    self.assertGreater(
        stats["rejected_by_reason"]["duplicate_common_features"], 0)
    self._assert_same(local_dir, beam_dir)
    self.assertEmpty(glob.glob(os.path.join(local_dir, "*sqlite*")))

  def test_paddlerec_with_padding_and_bad_rows(self):
    path = os.path.join(testing.new_dir(), "rows.txt")
    with open(_DEMO) as f:
      lines = f.read().splitlines()
    lines += ["99,0,0,205:0,101:3", "100,7,0,205:1"]
    with open(path, "w") as f:
      f.write("\n".join(lines) + "\n")
    local_dir, beam_dir = self._convert_both(4, input_format="paddlerec",
                                             input=path)
    stats = _stats(local_dir)
    self.assertEqual((stats["rows_read"], stats["rows_rejected"],
                      stats["padding_ids_skipped"]), (len(lines), 1, 1))
    self._assert_same(local_dir, beam_dir)


class PaddingTest(absltest.TestCase):

  def test_beam_counts_padding_ids(self):
    p = test_pipeline.TestPipeline(
        options=beam.options.pipeline_options.PipelineOptions(
            [f"--runner={convert.DEFAULT_RUNNER}"]))
    lines = [b"1,0,0,205:0,101:3,216:0", b"2,1,0,205:4", b"3,0,0,301:0"]
    outputs = (p | beam.Create([("f", line) for line in lines])
               | transforms.ConvertPaddleRec(20, False))
    _ = outputs["examples"]
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(
        metric.MetricsFilter().with_namespace(dofns.METRICS_NAMESPACE))
    counted = {c.key.metric.name: c.committed for c in counters["counters"]}
    self.assertEqual(counted, {dofns.PADDING_IDS: 3})


def _simulated_aliccp(num_train=600):
  raw_dir = testing.new_dir()
  simulator.simulate(simulator.SimulatorConfig(
      num_train=num_train, num_test=1, num_users=50, num_items=400, seed=7),
      raw_dir)
  return dict(input_format="aliccp",
              skeleton=os.path.join(raw_dir, "sample_skeleton_train.csv"),
              common_features=os.path.join(raw_dir,
                                           "common_features_train.csv"))


class OutOfSpaceTest(parameterized.TestCase):
  """A full disk: a clear error, and nothing under a final name."""

  def _assert_nothing_final(self, output_dir):
    left = []
    for root, _, names in os.walk(output_dir):
      left += [os.path.relpath(os.path.join(root, n), output_dir)
               for n in names]
    self.assertEqual(left, [])

  @parameterized.parameters(1, 2)
  def test_full_disk_while_writing_shards(self, num_workers):
    inputs = _simulated_aliccp()
    output_dir = os.path.join(testing.new_dir(), "out")
    writes = []

    def write(writer, data):
      del writer, data
      writes.append(1)
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with mock.patch.object(tfrecord.GzipWriter, "write", write):
      with self.assertRaisesRegex(convert.OutOfSpaceError,
                                  "no space left on the device of "
                                  "--output_dir=.*No space left on device"):
        convert.convert(output_dir, num_workers=num_workers, num_shards=3,
                        **inputs)
    if num_workers == 1:
      self.assertNotEmpty(writes)
    self._assert_nothing_final(output_dir)

  def test_full_disk_while_writing_stats(self):
    output_dir = os.path.join(testing.new_dir(), "out")
    real_create = beam.io.filesystems.FileSystems.create

    def create(path, *args, **kwargs):
      if os.path.basename(path).startswith(f".{layout.STATS_FILE}."):
        handle = real_create(path, *args, **kwargs)
        handle.write(b"{")
        handle.close()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
      return real_create(path, *args, **kwargs)

    with mock.patch.object(beam.io.filesystems.FileSystems, "create",
                           staticmethod(create)):
      with self.assertRaises(convert.OutOfSpaceError):
        convert.convert(output_dir, input_format="paddlerec", input=_DEMO,
                        num_workers=1)
    names = os.listdir(output_dir)
    self.assertNotIn(layout.STATS_FILE, names)
    self.assertEmpty([n for n in names if n.startswith(".")])


class MemoryCheckTest(absltest.TestCase):

  def test_too_large_common_features_fail_before_any_work(self):
    inputs = _simulated_aliccp()
    output_dir = os.path.join(testing.new_dir(), "out")
    with mock.patch.object(resources, "available_memory_bytes",
                           return_value=20_000):
      with self.assertRaisesRegex(
          config_lib.ConfigError,
          "common_features: .* more than the 0 MB available.* Use "
          "--join=cogroup on a cluster runner"):
        convert.convert(output_dir, num_workers=2,
                        pipeline_args=_BEAM_IN_MEMORY, **inputs)
    self.assertFalse(os.path.exists(output_dir))

  def test_the_local_runner_keeps_the_users_on_disk(self):
    # 20 kB of memory would not hold the users' rows; the disk table does.
    inputs = _simulated_aliccp()
    output_dir = os.path.join(testing.new_dir(), "out")
    with mock.patch.object(resources, "available_memory_bytes",
                           return_value=20_000):
      stats = convert.convert(output_dir, num_workers=2, **inputs)
    self.assertEqual(stats["rows_rejected"], 0)
    self.assertEqual(sum(_records(output_dir).values()),
                     stats["rows_written"])

  def test_estimate_bounds_the_encoded_side_input(self):
    inputs = _simulated_aliccp()
    config = config_lib.ConvertConfig(output_dir="o", **inputs)
    text, estimate = resources.side_input_bytes(config)
    self.assertEqual(text, os.path.getsize(inputs["common_features"]))
    with open(inputs["common_features"]) as f:
      encoded = sum(len(encode.encode_common(line.rstrip("\n"), 20)[1].entries)
                    for line in f)
    self.assertBetween(estimate, encoded, 3 * encoded)

  def test_suggests_fewer_workers_when_they_would_fit(self):
    inputs = _simulated_aliccp()
    config = config_lib.ConvertConfig(output_dir="o", **inputs)
    _, one_copy = resources.side_input_bytes(config)
    with self.assertRaisesRegex(config_lib.ConfigError, "--num_workers=2 "):
      resources.check_side_input_fits(config, workers=8,
                                      available=3 * one_copy)
    resources.check_side_input_fits(config, workers=2,
                                    available=3 * one_copy)

  def test_available_memory_is_known_here(self):
    available = resources.available_memory_bytes()
    self.assertIsNotNone(available)
    self.assertBetween(available, 1 << 20, os.sysconf("SC_PAGE_SIZE")
                       * os.sysconf("SC_PHYS_PAGES"))

  def test_cluster_runners_are_not_checked(self):
    inputs = _simulated_aliccp()
    output_dir = os.path.join(testing.new_dir(), "out")
    with mock.patch.object(resources, "check_side_input_fits") as check:
      convert.convert(output_dir, join="cogroup", **inputs)
    check.assert_not_called()


if __name__ == "__main__":
  tf.test.main()
