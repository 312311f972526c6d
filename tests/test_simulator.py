"""Tests of the ground-truth Ali-CCP simulator (escm2_tf.simulator)."""

import csv
import dataclasses
import filecmp
import hashlib
import os
import re
import shutil
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from escm2_tf.formats import aliccp
from escm2_tf.formats import paddlerec
from escm2_tf import layout
from escm2_tf import schema
from escm2_tf import simulator
from escm2_tf.simulator import io as simulator_io

# A small world keeps file round trips fast; the rates need a large sample.
_SMALL = simulator.SimulatorConfig(
    num_train=2000, num_test=700, seed=3, num_users=300, num_items=800,
    num_categories=30, num_shops=120, num_brands=90, num_intentions=200,
    behaviour_length=60, impressions_per_request=12)
_ALWAYS_IN_SAMPLE = ("205", "206", "207", "210", "216", "301")


def _lines(path):
  with open(path, encoding="utf-8") as f:
    return f.read().splitlines()


def _ground_truth(path):
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.reader(f)
    header = next(reader)
    rows = list(reader)
  return header, rows


def _tempdir(test):
  return test.enterContext(tempfile.TemporaryDirectory())


def _ids(features, field):
  """A field's ids in a parsed row (features map a field to (ids, values))."""
  return list(features.get(field, ([], []))[0])


class ConfigTest(parameterized.TestCase):

  @parameterized.parameters(
      ("num_train", 0), ("num_test", -5), ("num_users", 0), ("num_items", 0),
      ("seed", -1), ("num_train", 2.5), ("num_train", True), ("ctr", 0.0),
      ("ctr", 1.0), ("cvr", 0.0), ("cvr", 1.5), ("ctr", float("nan")),
      ("unclicked_conversion_rate", -0.1), ("unclicked_conversion_rate", 1.0),
      ("impressions_per_request", 0), ("behaviour_length", 0),
      ("num_positions", 0), ("num_shops", 10), ("num_items", 20),
      ("format", "csv"), ("click_conversion_correlation", -0.1),
      ("click_conversion_correlation", 1.0),
      ("click_conversion_correlation", "0.5"))
  def test_impossible_setting_names_itself(self, setting, value):
    with self.assertRaisesRegex(ValueError, rf"^{setting}: ") as caught:
      dataclasses.replace(_SMALL, **{setting: value})
    self.assertEqual(caught.exception.field, setting)

  def test_defaults_are_valid(self):
    config = simulator.SimulatorConfig()
    self.assertEqual(config.ctr, 0.04)
    self.assertBetween(config.cvr, 0.02, 0.06)
    self.assertEqual(config.format, "aliccp")


class OutputDirTest(absltest.TestCase):

  def test_unwritable_output_dir_raises_and_writes_nothing(self):
    blocker = os.path.join(_tempdir(self), "not_a_dir")
    with open(blocker, "w", encoding="utf-8"):
      pass
    target = os.path.join(blocker, "out")
    with self.assertRaisesRegex(ValueError, "output_dir") as caught:
      simulator.simulate(_SMALL, target)
    self.assertEqual(caught.exception.field, "output_dir")
    self.assertFalse(os.path.exists(target))

  def test_failure_while_writing_leaves_no_files(self):
    out = _tempdir(self)
    with mock.patch.object(simulator_io, "write_ground_truth",
                           side_effect=OSError("disk full")):
      with self.assertRaisesRegex(OSError, "disk full"):
        simulator.simulate(_SMALL, out)
    self.assertEmpty(os.listdir(out))


class AliccpFilesTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.out = tempfile.mkdtemp()
    cls.summary = simulator.simulate(_SMALL, cls.out)
    cls.world = simulator.build_world(_SMALL)
    cls.bases = simulator_io.id_bases(cls.world)
    cls.sizes = simulator_io.field_sizes(cls.world)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.out)
    super().tearDownClass()

  def _split(self, split):
    skeleton = [aliccp.parse_skeleton_line(line) for line in
                _lines(f"{self.out}/sample_skeleton_{split}.csv")]
    common = [aliccp.parse_common_line(line) for line in
              _lines(f"{self.out}/common_features_{split}.csv")]
    imp, truth = simulator.sample_split(_SMALL, self.world, split)
    return skeleton, common, imp, truth

  def _local(self, field, feature_id):
    local = feature_id - self.bases[field]
    self.assertBetween(local, 0, self.sizes[field] - 1, msg=field)
    return local

  def test_files_and_summary(self):
    names = sorted(os.listdir(self.out))
    self.assertEqual(names, sorted(
        f"{kind}_{split}.csv" for split in layout.SPLITS
        for kind in ("sample_skeleton", "common_features", "ground_truth")))
    self.assertEqual(self.summary["files"],
                     [os.path.join(self.out, name) for name in names])
    for split, num in (("train", _SMALL.num_train), ("test", _SMALL.num_test)):
      skeleton, _, _, _ = self._split(split)
      self.assertLen(skeleton, num)
      self.assertEqual(self.summary[split]["rows"], num)
      self.assertEqual(self.summary[split]["clicks"],
                       sum(row.click for row in skeleton))
      self.assertEqual(self.summary[split]["conversions"],
                       sum(row.conversion for row in skeleton))

  def test_field_id_ranges_are_disjoint_and_start_at_one(self):
    ranges = sorted((self.bases[f], self.bases[f] + self.sizes[f])
                    for f in schema.FIELD_NAMES)
    self.assertEqual(ranges[0][0], 1)
    for (_, end), (start, _) in zip(ranges, ranges[1:]):
      self.assertEqual(end, start)

  @parameterized.parameters("train", "test")
  def test_skeleton_rows_match_the_simulated_impressions(self, split):
    skeleton, _, imp, truth = self._split(split)
    items = self.world.item_fields
    for k, row in enumerate(skeleton):
      self.assertEqual(row.sample_id, f"{split}-{_SMALL.seed}-{k + 1}")
      self.assertEqual((row.click, row.conversion),
                       (truth["click"][k], truth["conversion"][k]))
      self.assertContainsSubset(set(_ALWAYS_IN_SAMPLE), set(row.features))
      self.assertContainsSubset(set(row.features), set(schema.SAMPLE_FIELDS))
      self.assertEqual(row.ignored_items, 0)
      for field, (ids, values) in row.features.items():
        self.assertEqual(values, [1.0] * len(ids), field)
        for feature_id in ids:
          self._local(field, feature_id)
      item = self._local("205", _ids(row.features, "205")[0])
      self.assertEqual(item, imp.item[k])
      self.assertEqual(self._local("301", _ids(row.features, "301")[0]),
                       imp.position[k])
      for field in ("206", "207", "216"):
        self.assertEqual([self._local(field, i) for i in
                          _ids(row.features, field)], [items[field][item]])
      intentions = self.world.item_intentions[item]
      self.assertCountEqual(
          [self._local("210", i) for i in _ids(row.features, "210")],
          intentions[intentions >= 0])
      self.assertEqual("508" in row.features, imp.overlap["109_14"][k] > 0)
      self.assertLen(_ids(row.features, "853"),
                     np.count_nonzero(imp.overlap["150_14"][k]))

  @parameterized.parameters("train", "test")
  def test_common_rows_cover_every_request(self, split):
    skeleton, common, imp, _ = self._split(split)
    indexes = [row.common_feature_index for row in common]
    self.assertLen(set(indexes), len(common))
    self.assertLen(common, len(imp.request_size))
    for index in indexes:
      self.assertRegex(index, r"^[0-9a-f]{32}$")
    # Skeleton rows come in one contiguous run per request, in common order.
    runs = [skeleton[0].common_feature_index]
    for row in skeleton[1:]:
      if row.common_feature_index != runs[-1]:
        runs.append(row.common_feature_index)
    self.assertEqual(runs, indexes)
    sizes = np.unique([row.common_feature_index for row in skeleton],
                      return_counts=True)
    self.assertEqual(sorted(sizes[1]), sorted(imp.request_size))

  @parameterized.parameters("train", "test")
  def test_common_rows_hold_the_user_features(self, split):
    _, common, imp, _ = self._split(split)
    for row, user in zip(common, imp.request_user):
      self.assertEqual(set(row.features), set(schema.COMMON_FIELDS))
      self.assertEqual(self._local("101", _ids(row.features, "101")[0]), user)
      self.assertEqual(row.ignored_items, 0)
      for field, (ids, values) in row.features.items():
        if field in schema.WEIGHTED_FIELDS:
          counts = self.world.behaviour[field].user_counts(user)
          self.assertEqual(values, np.round(np.log1p(counts), 5).tolist())
          self.assertLen(set(ids), len(ids))
        else:
          self.assertEqual(values, [1.0])
        for feature_id in ids:
          self._local(field, feature_id)

  def test_train_and_test_share_the_item_universe(self):
    item_rows = {}
    users = {}
    for split in layout.SPLITS:
      skeleton, common, _, _ = self._split(split)
      users[split] = {_ids(row.features, "101")[0] for row in common}
      for row in skeleton:
        key = _ids(row.features, "205")[0]
        value = tuple(sorted((f, tuple(_ids(row.features, f)))
                             for f in ("206", "207", "210", "216")))
        self.assertEqual(item_rows.setdefault(key, value), value)
    self.assertNotEmpty(users["train"] & users["test"])

  @parameterized.parameters("train", "test")
  def test_ground_truth_aligns_with_the_skeleton(self, split):
    skeleton, _, _, truth = self._split(split)
    header, rows = _ground_truth(f"{self.out}/ground_truth_{split}.csv")
    self.assertEqual(tuple(header), layout.GROUND_TRUTH_HEADER)
    self.assertEqual([r[0] for r in rows], [s.sample_id for s in skeleton])
    p_click = np.array([float(r[1]) for r in rows])
    p_conversion = np.array([float(r[2]) for r in rows])
    counterfactual = np.array([int(r[3]) for r in rows])
    self.assertTrue(np.all((p_click > 0) & (p_click < 1)))
    self.assertTrue(np.all((p_conversion > 0) & (p_conversion < 1)))
    np.testing.assert_allclose(p_click, truth["p_click"], rtol=1e-7)
    np.testing.assert_allclose(p_conversion, truth["p_conversion"], rtol=1e-7)
    clicked = np.array([s.click for s in skeleton]) == 1
    conversion = np.array([s.conversion for s in skeleton])
    self.assertTrue(clicked.any())
    np.testing.assert_array_equal(counterfactual[clicked], conversion[clicked])
    self.assertGreater(counterfactual[~clicked].sum(), 0)
    self.assertEqual([(int(r[4]), int(r[5])) for r in rows],
                     [(s.click, s.conversion) for s in skeleton])


class DeterminismTest(absltest.TestCase):

  def test_same_seed_same_bytes_other_seed_other_bytes(self):
    first, second, other = (_tempdir(self) for _ in range(3))
    simulator.simulate(_SMALL, first)
    simulator.simulate(_SMALL, second)
    simulator.simulate(dataclasses.replace(_SMALL, seed=_SMALL.seed + 1),
                       other)
    names = sorted(os.listdir(first))
    match, mismatch, errors = filecmp.cmpfiles(first, second, names,
                                               shallow=False)
    self.assertEqual((match, mismatch, errors), (names, [], []))
    match, mismatch, errors = filecmp.cmpfiles(first, other, names,
                                               shallow=False)
    self.assertEqual((match, errors), ([], []))
    ids = [set(row[0] for row in _ground_truth(
        os.path.join(directory, layout.ground_truth_file(split)))[1])
           for directory in (first, other) for split in layout.SPLITS]
    self.assertLen(set().union(*ids), sum(len(part) for part in ids))

  def test_world_does_not_depend_on_split_sizes(self):
    bigger = dataclasses.replace(_SMALL, num_train=3 * _SMALL.num_train)
    small_world = simulator.build_world(_SMALL)
    big_world = simulator.build_world(bigger)
    self.assertEqual(small_world.click_intercept, big_world.click_intercept)
    self.assertEqual(small_world.conversion_intercept,
                     big_world.conversion_intercept)
    _, small_truth = simulator.sample_split(_SMALL, small_world, "test")
    _, big_truth = simulator.sample_split(bigger, big_world, "test")
    np.testing.assert_array_equal(small_truth["p_click"], big_truth["p_click"])


class GoldenFilesTest(absltest.TestCase):
  """The knobs added later leave the files of existing seeds unchanged.

  So do the sample ids, once unique across splits and seeds, but for the
  ids themselves: without their ``{split}-{seed}-`` prefix the files are
  those of before.
  """

  # sha256 of the files of _SMALL as written before the correlation knob
  # existed, sample ids numbered from 1 in each split. Only integer-valued
  # files: the ground truth's printed floats may differ in the last digit
  # between CPUs' vectorised math.
  _DIGESTS = {
      "common_features_test.csv":
          "e44839c8eed23ee95a498fe302df61215687a3826c4fe203736cc6dcb068b1dd",
      "common_features_train.csv":
          "344178b0105d4f2d18dc2e5e319aedecf2809eaf5e4ba7d0ae0d7a1476cf32e7",
      "sample_skeleton_test.csv":
          "7c472fd7b7609ae9222665dfcb90a54c420b585f977ac6107b558b66840ab1e1",
      "sample_skeleton_train.csv":
          "5780439238887b21ddfadd101c287e5c34ab93ae182b8a0009690d4e678a11f7",
  }

  def test_default_knobs_write_the_files_of_before(self):
    out = _tempdir(self)
    simulator.simulate(_SMALL, out)
    for name, digest in self._DIGESTS.items():
      with open(os.path.join(out, name), "rb") as f:
        content = f.read()
      if name.startswith("sample_skeleton_"):
        split = name.removeprefix("sample_skeleton_").removesuffix(".csv")
        prefix = f"{split}-{_SMALL.seed}-".encode()
        lines = content.splitlines(keepends=True)
        self.assertTrue(all(line.startswith(prefix) for line in lines), name)
        content = b"".join(line[len(prefix):] for line in lines)
      self.assertEqual(hashlib.sha256(content).hexdigest(), digest, name)


class UnclickedConversionTest(parameterized.TestCase):

  @parameterized.parameters(0.0, 0.002, 0.05)
  def test_rate_of_conversions_without_click(self, rate):
    config = dataclasses.replace(_SMALL, num_train=20_000,
                                 unclicked_conversion_rate=rate)
    _, truth = simulator.sample_split(config, simulator.build_world(config),
                                      "train")
    unclicked = truth["click"] == 0
    stray = truth["conversion"][unclicked]
    expected = rate * unclicked.sum()
    sigma = np.sqrt(unclicked.sum() * rate * (1 - rate))
    self.assertBetween(stray.sum(), expected - 5 * sigma, expected + 5 * sigma)
    if rate == 0.0:
      self.assertEqual(stray.sum(), 0)


class RatesTest(parameterized.TestCase):
  """Statistical properties on 100k impressions of the default-size world."""

  @parameterized.parameters((0.04, 0.04, 0), (0.04, 0.04, 1),
                            (0.1, 0.02, 2), (0.02, 0.1, 3))
  def test_empirical_rates_match_the_configuration(self, ctr, cvr, seed):
    config = simulator.SimulatorConfig(num_train=100_000, seed=seed, ctr=ctr,
                                       cvr=cvr)
    _, truth = simulator.sample_split(config, simulator.build_world(config),
                                      "train")
    clicked = truth["click"] == 1
    num, clicks = len(clicked), clicked.sum()
    self.assertLess(abs(clicked.mean() - ctr),
                    5 * np.sqrt(ctr * (1 - ctr) / num))
    empirical_cvr = truth["conversion"][clicked].mean()
    self.assertLess(abs(empirical_cvr - cvr),
                    5 * np.sqrt(cvr * (1 - cvr) / clicks))

  def test_selection_bias_and_feature_dependence(self):
    config = simulator.SimulatorConfig(num_train=100_000)
    imp, truth = simulator.sample_split(config, simulator.build_world(config),
                                        "train")
    p_click, p_conversion = truth["p_click"], truth["p_conversion"]
    clicked = truth["click"] == 1
    # Clicked impressions convert far more often than the entire space would.
    self.assertGreater(p_conversion[clicked].mean(),
                       1.8 * p_conversion.mean())
    # Both rates rise with the overlap of behaviour and item category.
    overlap = imp.overlap["109_14"] > 0
    self.assertGreater(p_click[overlap].mean(), 2 * p_click[~overlap].mean())
    self.assertGreater(p_conversion[overlap].mean(),
                       2 * p_conversion[~overlap].mean())
    # Clicks fall with the position; conversions do not depend on it.
    top, last = imp.position == 0, imp.position == config.num_positions - 1
    self.assertGreater(p_click[top].mean(), 1.5 * p_click[last].mean())
    # Different but correlated functions.
    logit = lambda p: np.log(p / (1 - p))
    correlation = np.corrcoef(logit(p_click), logit(p_conversion))[0, 1]
    self.assertBetween(correlation, 0.3, 0.9)


class RegimeKnobsTest(parameterized.TestCase):
  """The study's regimes: rates and click/conversion correlation as asked."""

  def _truth(self, **knobs):
    config = simulator.SimulatorConfig(num_train=100_000, seed=4, **knobs)
    return simulator.sample_split(config, simulator.build_world(config),
                                  "train")[1]

  @parameterized.parameters((0.02, 0.01, 0.2), (0.08, 0.15, 0.9),
                            (0.02, 0.04, 0.9), (0.08, 0.01, 0.5))
  def test_rates_within_binomial_sigma(self, ctr, cvr, correlation):
    truth = self._truth(ctr=ctr, cvr=cvr,
                        click_conversion_correlation=correlation)
    clicked = truth["click"] == 1
    num, clicks = len(clicked), clicked.sum()
    self.assertLess(abs(clicked.mean() - ctr),
                    4 * np.sqrt(ctr * (1 - ctr) / num))
    empirical_cvr = truth["conversion"][clicked].mean()
    self.assertLess(abs(empirical_cvr - cvr),
                    4 * np.sqrt(cvr * (1 - cvr) / clicks))

  def test_correlation_orders_the_logits_and_the_selection_bias(self):
    correlations, selection = {}, {}
    for knob in (0.0, 0.2, None, 0.9):
      truth = self._truth(ctr=0.08, click_conversion_correlation=knob)
      correlations[knob] = simulator.logit_correlation(truth)
      clicked = truth["click"] == 1
      # How much more the clicked impressions convert than all of them.
      selection[knob] = (truth["p_conversion"][clicked].mean()
                         / truth["p_conversion"].mean())
      if knob is not None:
        self.assertAlmostEqual(correlations[knob], knob, delta=0.05)
    order = [0.0, 0.2, None, 0.9]
    self.assertEqual(sorted(order, key=correlations.get), order)
    self.assertEqual(sorted(order, key=selection.get), order)
    # Without shared propensity, clicks say nothing about conversion.
    self.assertAlmostEqual(selection[0.0], 1.0, delta=0.05)
    self.assertGreater(selection[0.9], 2.0)

  def test_knob_keeps_the_click_model(self):
    default = self._truth(ctr=0.08)
    mixed = self._truth(ctr=0.08, click_conversion_correlation=0.5)
    np.testing.assert_array_equal(default["p_click"], mixed["p_click"])
    np.testing.assert_array_equal(default["click"], mixed["click"])


class HiddenIntentTest(absltest.TestCase):
  """A request's hidden intent raises both logits and nothing else."""

  def _split(self, intent):
    config = simulator.SimulatorConfig(
        num_train=60_000, seed=5, ctr=0.08, click_conversion_correlation=0.9,
        hidden_intent=intent)
    world = simulator.build_world(config)
    imp, truth = simulator.sample_split(config, world, "train")
    return world, imp, truth

  def test_intent_shifts_both_logits_of_the_same_impressions(self):
    logit = lambda p: np.log(p) - np.log1p(-p)
    world0, imp0, truth0 = self._split(0.0)
    world1, imp1, truth1 = self._split(1.2)
    for name in ("user", "item", "position", "request_size"):
      np.testing.assert_array_equal(getattr(imp0, name), getattr(imp1, name))
    np.testing.assert_array_equal(imp0.intent, 0.0)
    requests = np.repeat(np.arange(len(imp1.request_size)), imp1.request_size)
    first = np.cumsum(imp1.request_size) - imp1.request_size
    np.testing.assert_array_equal(imp1.intent, imp1.intent[first][requests])
    self.assertAlmostEqual(float(np.std(imp1.intent[first])), 1.2, delta=0.1)
    for rate, intercept in (("p_click", "click_intercept"),
                            ("p_conversion", "conversion_intercept")):
      shift = ((logit(truth1[rate]) - getattr(world1, intercept))
               - (logit(truth0[rate]) - getattr(world0, intercept)))
      np.testing.assert_allclose(shift, imp1.intent, atol=1e-6)
    # The intercepts keep the configured rates.
    self.assertAlmostEqual(truth1["click"].mean(), 0.08, delta=0.005)

  def test_user_intent_shifts_both_logits_of_each_user_alike(self):
    logit = lambda p: np.log(p) - np.log1p(-p)
    config = simulator.SimulatorConfig(num_train=20_000, seed=5, ctr=0.08,
                                       click_conversion_correlation=0.9)
    with_intent = dataclasses.replace(config, user_intent=0.8)
    world0, world1 = (simulator.build_world(c) for c in (config, with_intent))
    self.assertIsNone(world0.user_intent)
    self.assertAlmostEqual(float(np.std(world1.user_intent)), 0.8, delta=0.05)
    np.testing.assert_array_equal(world0.item_click_quality,
                                  world1.item_click_quality)
    np.testing.assert_array_equal(world0.user_click_bias,
                                  world1.user_click_bias)
    imp0, truth0 = simulator.sample_split(config, world0, "train")
    imp1, truth1 = simulator.sample_split(with_intent, world1, "train")
    np.testing.assert_array_equal(imp0.item, imp1.item)
    for rate, intercept in (("p_click", "click_intercept"),
                            ("p_conversion", "conversion_intercept")):
      shift = ((logit(truth1[rate]) - getattr(world1, intercept))
               - (logit(truth0[rate]) - getattr(world0, intercept)))
      np.testing.assert_allclose(shift, world1.user_intent[imp1.user],
                                 atol=1e-6)

  def test_clicks_select_on_the_intent_beyond_the_features(self):
    _, imp, truth = self._split(1.2)
    clicked = truth["click"] == 1
    # Impressions alike in every feature: the same intent-free click logit,
    # binned finely. Within a bin the clicked ones convert more.
    logit = np.log(truth["p_click"]) - np.log1p(-truth["p_click"])
    features = np.digitize(logit - imp.intent, np.linspace(-8, 4, 121))
    lift = []
    for value in np.unique(features[clicked]):
      same = features == value
      if clicked[same].sum() >= 20 and (~clicked[same]).sum() >= 20:
        lift.append(truth["p_conversion"][same & clicked].mean()
                    / truth["p_conversion"][same & ~clicked].mean())
    self.assertGreater(len(lift), 10)
    self.assertGreater(np.median(lift), 1.5)


class PaddleRecTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.paddle_dir = os.path.join(cls.tmp, "paddle")
    cls.aliccp_dir = os.path.join(cls.tmp, "aliccp")
    cls.summary = simulator.simulate(
        dataclasses.replace(_SMALL, format="paddlerec"), cls.paddle_dir)
    simulator.simulate(_SMALL, cls.aliccp_dir)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp)
    super().tearDownClass()

  def test_files(self):
    self.assertCountEqual(os.listdir(self.paddle_dir), [
        "paddlerec_train.txt", "paddlerec_test.txt", "ground_truth_train.csv",
        "ground_truth_test.csv"])
    for split in layout.SPLITS:
      self.assertTrue(filecmp.cmp(f"{self.paddle_dir}/ground_truth_{split}.csv",
                                  f"{self.aliccp_dir}/ground_truth_{split}.csv",
                                  shallow=False))

  def test_one_global_first_appearance_vocabulary(self):
    next_gid, gid_to_raw = 1, {}
    for split in layout.SPLITS:
      lines = _lines(f"{self.paddle_dir}/paddlerec_{split}.txt")
      skeleton = [aliccp.parse_skeleton_line(line) for line in
                  _lines(f"{self.aliccp_dir}/sample_skeleton_{split}.csv")]
      common = {row.common_feature_index: row for row in (
          aliccp.parse_common_line(line) for line in
          _lines(f"{self.aliccp_dir}/common_features_{split}.csv"))}
      self.assertLen(lines, len(skeleton))
      for line, row in zip(lines, skeleton):
        for token in line.split(",")[3:]:
          gid = int(re.fullmatch(r"[0-9_]+:([0-9]+)", token).group(1))
          self.assertLessEqual(gid, next_gid, msg=token)
          next_gid += gid == next_gid
        parsed = paddlerec.parse_paddlerec_line(line)
        self.assertEqual(
            (parsed.sample_id, parsed.click, parsed.conversion),
            (row.sample_id, row.click, row.conversion))
        raw = dict(row.features)
        raw.update(common[row.common_feature_index].features)
        self.assertEqual(set(parsed.features), set(raw))
        self.assertContainsSubset(set(schema.COMMON_FIELDS),
                                  set(parsed.features))
        for field, (gids, _) in parsed.features.items():
          self.assertLen(gids, len(_ids(raw, field)))
          for gid, raw_id in zip(gids, _ids(raw, field)):
            self.assertEqual(gid_to_raw.setdefault(gid, raw_id), raw_id)
    self.assertLen(set(gid_to_raw.values()), len(gid_to_raw))
    self.assertEqual(sorted(gid_to_raw), list(range(1, next_gid)))


if __name__ == "__main__":
  absltest.main()
