"""Tests of escm2-study: the statistics, the verdict, bad grids, a tiny run."""

import dataclasses
import json
import math
import os

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import testing
import tf_keras as keras

from escm2_tf import layout
from escm2_tf import options
from escm2_tf import run_dir
from escm2_tf import simulator
from escm2_tf.cli import study as study_cli
from escm2_tf.options import ConfigError
from escm2_tf.study import datasets
from escm2_tf.study import designs
from escm2_tf.study import floor
from escm2_tf.study import grid
from escm2_tf.study import regime as regime_lib
from escm2_tf.study import report
from escm2_tf.study import runner
from escm2_tf.study import stats
from escm2_tf.study import summary


class StatsTest(parameterized.TestCase):

  def test_interval_is_the_student_t_interval(self):
    values = [0.1, 0.4, 0.3]
    got = stats.interval(values)
    half = 4.303 * np.std(values, ddof=1) / math.sqrt(3)
    self.assertAlmostEqual(got["mean"], np.mean(values))
    self.assertAlmostEqual(got["low"], np.mean(values) - half)
    self.assertAlmostEqual(got["high"], np.mean(values) + half)
    self.assertEqual(got["n"], 3)

  def test_interval_drops_undefined_values(self):
    got = stats.interval([1.0, math.nan, None, 3.0])
    self.assertEqual(got["n"], 2)
    self.assertAlmostEqual(got["mean"], 2.0)
    self.assertTrue(math.isnan(stats.interval([5.0])["low"]))

  def test_t_quantile_approaches_the_normal(self):
    self.assertAlmostEqual(stats.t_quantile(30), 2.042)
    self.assertAlmostEqual(stats.t_quantile(40), 2.021, places=3)
    self.assertAlmostEqual(stats.t_quantile(1000), 1.962, places=3)

  def test_paired_differences_cancel_the_shared_spread(self):
    # The seeds differ a lot, but a is 0.01 below b in every one of them.
    b = {0: 0.10, 1: 0.50, 2: -0.30}
    a = {seed: value - 0.01 for seed, value in b.items()}
    got = stats.paired(a, b)
    self.assertAlmostEqual(got["mean"], -0.01)
    self.assertAlmostEqual(got["low"], -0.01)
    self.assertTrue(stats.excludes_zero({"low": -0.02, "high": -0.001}))
    self.assertFalse(stats.excludes_zero(stats.interval(
        [a[s] - 0.2 * s for s in a])))
    absolute = stats.paired({0: -0.02, 1: 0.01}, {0: 0.03, 1: -0.05}, abs)
    self.assertAlmostEqual(absolute["mean"], ((0.02 - 0.03) + (0.01 - 0.05))
                           / 2)


def _runs(biases):
  """Runs of one regime: estimator -> bias per seed."""
  return [{"regime": "r", "seed": seed, "estimator": estimator, "epochs": 1,
           "metrics": {"cvr_bias": value}}
          for estimator, values in biases.items()
          for seed, value in enumerate(values)]


class VerdictTest(parameterized.TestCase):

  def _verdict(self, biases):
    config = grid.StudyConfig(
        regimes=(regime_lib.Regime("r", 0.1, 0.1, 0.5, 10_000, 100),),
        seeds=tuple(range(len(biases["esmm"]))))
    return summary.summarise(config, _runs(biases))["verdicts"]["r"]

  def test_gap_closed_is_the_share_of_esmm_bias_above_the_floor(self):
    config = grid.StudyConfig(
        regimes=(regime_lib.Regime("r", 0.1, 0.1, 0.5, 10_000, 100),),
        seeds=(0, 1), estimators=("esmm", "ipw"))
    runs = _runs({"esmm": [0.010, 0.012], "ipw": [0.004, 0.006]})
    # Results written before the floor existed keep their summary's keys.
    self.assertNotIn("floors", summary.summarise(config, runs))
    for run in runs:
      run["data"] = {"floor": {"floor": 0.002 + 0.001 * run["seed"],
                               "floor_without_ids": 0.008,
                               "floor_true_propensity": 0.0}}
    result = summary.summarise(config, runs)
    self.assertAlmostEqual(result["floors"]["r"]["floor"]["mean"], 0.0025)
    # (0.011 - 0.005) / (0.011 - 0.0025)
    self.assertAlmostEqual(result["gap_closed"]["r"]["ipw"], 0.006 / 0.0085)
    self.assertAlmostEqual(result["gap_closed"]["r"]["esmm"], 0.0)
    self.assertAlmostEqual(result["achievable_gap"]["r"]["mean"], 0.0085)

  @parameterized.named_parameters(
      # ESMM at the floor: 0.0005 above it in one seed, 0.0005 below in the
      # other, so the paired interval holds 0 and a ratio would be noise.
      ("at_the_floor", [0.0105, 0.0125], [0.010, 0.013]),
      # ESMM below the floor in every seed: nothing to close.
      ("below_the_floor", [0.001, 0.002], [0.004, 0.005]))
  def test_no_gap_to_close_unless_esmm_is_above_the_floor(self, esmm, floors):
    config = grid.StudyConfig(
        regimes=(regime_lib.Regime("r", 0.1, 0.1, 0.5, 10_000, 100),),
        seeds=(0, 1), estimators=("esmm", "ipw"))
    runs = _runs({"esmm": esmm, "ipw": [0.004, 0.006]})
    for run in runs:
      run["data"] = {"floor": {"floor": floors[run["seed"]]}}
    result = summary.summarise(config, runs)
    self.assertEqual(result["gap_closed"]["r"], {"esmm": None, "ipw": None})
    self.assertLessEqual(result["achievable_gap"]["r"]["low"], 0.0)
    self.assertIsNone(result["targets"]["r"]["met"]["gap_closed"])

  def test_met_when_both_are_clearly_less_biased(self):
    verdict = self._verdict({
        "naive": [0.030, 0.020, 0.025], "esmm": [0.010, 0.012, 0.008],
        "ipw": [0.002, -0.001, 0.003], "dr": [0.004, 0.005, 0.003]})
    self.assertTrue(verdict["met"])
    self.assertEqual(verdict["better"], "ipw")
    self.assertAlmostEqual(verdict["better_over_esmm"], 0.2)

  def test_not_met_when_a_difference_straddles_zero(self):
    verdict = self._verdict({
        "naive": [0.030, 0.020, 0.025], "esmm": [0.010, 0.012, 0.008],
        "ipw": [0.002, -0.001, 0.003], "dr": [0.004, 0.015, 0.003]})
    self.assertFalse(verdict["met"])
    self.assertFalse(verdict["dr"]["below_esmm"])
    self.assertTrue(verdict["ipw"]["below_esmm"])

  def test_not_met_when_the_better_is_above_half_of_esmm(self):
    verdict = self._verdict({
        "naive": [0.030, 0.020, 0.025], "esmm": [0.010, 0.012, 0.008],
        "ipw": [0.0070, 0.0090, 0.0050], "dr": [0.0071, 0.0091, 0.0051]})
    self.assertTrue(verdict["ipw"]["below_esmm"])
    self.assertAlmostEqual(verdict["better_over_esmm"], 0.7)
    self.assertFalse(verdict["met"])


class TargetsTest(parameterized.TestCase):
  """Each regime's targets, from runs whose numbers are chosen by hand."""

  def _targets(self, biases, calibration_cvr=1.0):
    return self._summary(biases, calibration_cvr)["summary"]["targets"]["r"]

  def _summary(self, biases, calibration_cvr=1.0):
    """A results file's grid, runs and summary."""
    estimators = tuple(biases)
    config = grid.StudyConfig(
        regimes=(regime_lib.Regime("r", 0.1, 0.1, 0.5, 10_000, 100),),
        seeds=(0, 1, 2), estimators=estimators)
    runs = _runs(biases)
    for run in runs:
      run["metrics"].update(calibration_ctr=1.0, calibration_ctcvr=1.0,
                            calibration_cvr=calibration_cvr)
      run["data"] = {"floor": {"floor": 0.001, "floor_without_ids": 0.008,
                               "floor_true_propensity": 0.0}}
    return {"grid": config.to_dict(), "runs": runs,
            "summary": summary.summarise(config, runs)}

  def test_met(self):
    t = self._targets({
        "esmm": [0.010, 0.012, 0.008], "ipw": [0.002, 0.001, 0.003],
        "dr": [0.001, 0.002, 0.0015], "ipw_true": [0.001, -0.001, 0.0005]})
    self.assertEqual(t["best"], "dr")
    self.assertAlmostEqual(t["best_over_esmm"], 0.0015 / 0.010)
    # (0.010 - 0.002) / (0.010 - 0.001)
    self.assertAlmostEqual(t["gap_closed"]["ipw"], 0.008 / 0.009)
    self.assertEqual(t["met"], {"true_propensity": True,
                                "best_over_esmm": True, "gap_closed": True,
                                "joint_learning_below_ipw": None,
                                "calibration": True})

  def test_each_target_can_fail(self):
    t = self._targets({
        "esmm": [0.010, 0.012, 0.008], "ipw": [0.004, 0.005, 0.006],
        "dr": [0.0035, 0.0045, 0.004], "ipw_true": [0.002, 0.003, 0.0025]},
        calibration_cvr=0.6)
    self.assertEqual(t["met"], {"true_propensity": False,
                                "best_over_esmm": False, "gap_closed": False,
                                "joint_learning_below_ipw": None,
                                "calibration": False})
    self.assertEqual(t["out_of_range"]["ipw"], ["calibration_cvr"])

  def test_joint_learning_below_ipw_needs_a_paired_interval_below_zero(self):
    biases = {"esmm": [0.010, 0.012, 0.008], "ipw": [0.004, -0.003, 0.005],
              "dr_jl": [0.0045, -0.0028, 0.0052]}
    # MRDR: |bias| 0.001 below IPW's in every seed, so the interval is 0.001.
    steady = self._targets({**biases, "mrdr": [0.003, -0.002, 0.004]})
    self.assertTrue(steady["met"]["joint_learning_below_ipw"])
    self.assertAlmostEqual(steady["vs_ipw"]["mrdr"]["mean"], -0.001)
    self.assertAlmostEqual(steady["vs_ipw"]["mrdr"]["high"], -0.001)
    self.assertAlmostEqual(steady["vs_ipw"]["dr_jl"]["mean"],
                           np.mean([0.0005, -0.0002, 0.0002]))
    # The same mean difference, but one seed the other way: not shown.
    biases["mrdr"] = [0.001, -0.004, 0.004]
    results = self._summary(biases)
    noisy = results["summary"]["targets"]["r"]
    self.assertLess(noisy["vs_ipw"]["mrdr"]["mean"], 0)
    self.assertGreater(noisy["vs_ipw"]["mrdr"]["high"], 0)
    self.assertFalse(noisy["met"]["joint_learning_below_ipw"])
    markdown = report.markdown(results)
    cells = {e: stats.interval(np.abs(biases[e]) - np.abs(biases["ipw"]))
             for e in ("dr_jl", "mrdr")}
    # The Targets table's row: the paired |bias| table has one line per pair.
    row = [line for line in markdown.splitlines() if "; MRDR " in line]
    self.assertLen(row, 1)
    self.assertIn(
        "| DR-JL {:+.4f} [{:+.4f}, {:+.4f}]; MRDR {:+.4f} [{:+.4f}, {:+.4f}]: "
        "no |".format(*[cells[e][k] for e in ("dr_jl", "mrdr")
                        for k in ("mean", "low", "high")]), row[0])


class GridTest(parameterized.TestCase):

  def test_true_propensity_estimators(self):
    self.assertEqual(grid.estimator_loss("dr_jl_true"), ("dr_jl", "label"))
    self.assertEqual(grid.estimator_loss("mrdr"), ("mrdr", "model"))
    self.assertEqual(
        {grid.estimator_loss(e)[0] for e in grid.ESTIMATORS
         if grid.estimator_loss(e)[1] == "label"},
        {"ipw", "dr", "dr_jl", "mrdr"})

  @parameterized.parameters(
      (dict(seeds=(0,)), "seeds", "at least 2 seeds"),
      (dict(seeds=(0, 0)), "seeds", "repeated 0"),
      (dict(seeds=(0, -1)), "seeds", "integer >= 0"),
      (dict(estimators=("esmm", "mmoe")), "estimators", "unknown estimator"),
      (dict(regimes=()), "regime", "at least one"),
      (dict(regimes=(regime_lib.Regime("r", 0.01, 0.01, 0.5, 1000, 100),)),
       "regime", "training conversions"),
      (dict(regimes=(regime_lib.Regime("r", 0.1, 0.1, 1.5, 10_000, 100),)),
       "regime", "click_conversion_correlation"),
      (dict(regimes=(regime_lib.Regime("r", 0.1, 0.1, 0.5, 10_000, 100,
                                       num_users=20, num_items=500),)),
       "regime", "r: users x items = 10,000 .* pairs for 10,100 impressions"),
      (dict(regimes=(regime_lib.Regime("r", 0.1, 0.1, 0.5, 10_000, 100,
                                       intent=-1.0),)),
       "regime", "hidden_intent"),
      (dict(regimes=(regime_lib.Regime("r", 0.1, 0.1, 0.5, 10_000, 100,
                                       num_items=10),)),
       "regime", "num_items"))
  def test_grid_that_cannot_run(self, settings, flag, message):
    with self.assertRaisesRegex(ConfigError, message) as caught:
      grid.StudyConfig(**settings)
    self.assertEqual(caught.exception.field, flag)


def _small_world(num_train: int, **world):
  """A calibrated small world, its training clicks and its test truth."""
  config = simulator.SimulatorConfig(
      num_train=num_train, num_test=5_000, seed=0, ctr=0.2, cvr=0.2,
      click_conversion_correlation=0.9, num_categories=10, num_shops=40,
      num_brands=40, num_intentions=40, behaviour_length=40, **world)
  return config, simulator.build_world(config)


def _floor(config, world, clip=1e-6):
  train_imp, train_truth = simulator.sample_split(config, world, "train")
  test_imp, test_truth = simulator.sample_split(config, world, "test")
  return floor.identifiable_floor(world, (train_imp, train_truth["click"]),
                                  (test_imp, test_truth), clip,
                                  config.hidden_intent)


def _without_id_latents(world):
  """Click propensities from observed fields alone: the item's click
  quality gone, the user's click bias a function of a profile field."""
  return dataclasses.replace(
      world, item_click_quality=np.zeros(len(world.item_click_quality)),
      user_click_bias=0.5 * (world.user_profile["124"] == 1))


class FloorTest(absltest.TestCase):

  def test_no_latent_no_floor(self):
    config, world = _small_world(5_000, num_users=200, num_items=300)
    result = _floor(config, _without_id_latents(world))
    self.assertAlmostEqual(result["item_latent_std"], 0.0)
    self.assertAlmostEqual(result["user_latent_std"], 0.0, places=6)
    for kind in floor.BIASES:
      self.assertLess(abs(result[kind]), 1e-6, kind)
    self.assertAlmostEqual(result["bayes_cvr_on_clicks"], 1.0)

  def test_without_training_impressions_no_id_is_learnt(self):
    config, world = _small_world(1, num_users=200, num_items=300)
    result = _floor(config, world)
    self.assertGreater(result["floor_without_ids"], 0.005)
    self.assertAlmostEqual(result["floor"], result["floor_without_ids"],
                           delta=0.05 * result["floor_without_ids"])

  def test_many_impressions_per_id_reveal_the_latents(self):
    # 2,000 training impressions per item and 400 per user.
    config, world = _small_world(100_000, num_users=250, num_items=50)
    result = _floor(config, world)
    self.assertGreater(result["floor_without_ids"], 0.005)
    self.assertLess(abs(result["floor"]), 0.15 * result["floor_without_ids"])

  def test_posterior_matches_direct_integration(self):
    rng = np.random.default_rng(0)
    rest = rng.normal(-1.0, 1.0, 30)
    clicks = (rng.random(30) < 0.4).astype(np.int64)
    values, log_prior = floor._grid(0.7)  # pylint: disable=protected-access
    weights = floor.posterior(np.zeros(30, np.int64), 1, rest, clicks,
                              values, log_prior)
    fine = np.linspace(-4 * 0.7, 4 * 0.7, 4001)
    logits = rest[None, :] + fine[:, None]
    likelihood = np.prod(np.where(clicks == 1, 1 / (1 + np.exp(-logits)),
                                  1 / (1 + np.exp(logits))), axis=1)
    density = likelihood * np.exp(-0.5 * (fine / 0.7) ** 2)
    direct = np.sum(fine * density) / np.sum(density)
    self.assertAlmostEqual(float(weights[0] @ values), direct, places=3)

  def test_propensity_integrates_over_the_intent(self):
    observable = np.array([-3.0, -1.0, 0.5])
    at_zero = np.zeros((3, floor.GRID_POINTS))
    at_zero[:, floor.GRID_POINTS // 2] = 1.0
    values = floor._grid(1.0)[0]  # pylint: disable=protected-access
    q = floor.propensity(observable, at_zero, values, at_zero, values,
                         intent_std=1.3)
    fine = np.linspace(-8 * 1.3, 8 * 1.3, 20001)
    density = np.exp(-0.5 * (fine / 1.3) ** 2)
    direct = [np.sum(density / (1 + np.exp(-(a + fine)))) / np.sum(density)
              for a in observable]
    np.testing.assert_allclose(q, direct, rtol=1e-4)
    # Without an intent, the logistic of the observable part.
    np.testing.assert_allclose(
        floor.propensity(observable, at_zero, values, at_zero, values),
        1 / (1 + np.exp(-observable)))

  def test_a_hidden_intent_is_a_floor_no_id_lifts(self):
    # No latent an id could reveal: without the intent the floor is 0
    # (test_no_latent_no_floor); with it, the features miss the selection
    # on the intent, and the true p_click, which includes it, does not.
    config, world = _small_world(5_000, num_users=200, num_items=300,
                                 hidden_intent=1.0)
    result = _floor(config, _without_id_latents(world))
    self.assertLess(abs(result["floor_true_propensity"]), 1e-6)
    self.assertGreater(result["floor"], 0.1 * result["true_cvr"])
    self.assertAlmostEqual(result["floor"], result["floor_without_ids"],
                           delta=1e-6)
    # A model of the clicked CVR keeps a bias no data removes, and an
    # unbiased one predicts less than the clicks convert.
    self.assertGreater(result["esmm_limit"], 0.1 * result["true_cvr"])
    self.assertLess(result["bayes_cvr_on_clicks"], 0.9)

  def test_a_user_intent_is_a_latent_the_user_id_reveals(self):
    # The only latent is the users' intent: with 400 training impressions
    # per user their ids reveal most of it, without them nothing does.
    config, world = _small_world(100_000, num_users=250, num_items=300,
                                 user_intent=1.0)
    result = _floor(config, _without_id_latents(world))
    self.assertAlmostEqual(result["user_latent_std"], 1.0, delta=0.15)
    self.assertGreater(result["floor_without_ids"], 0.005)
    self.assertLess(abs(result["floor"]), 0.15 * result["floor_without_ids"])
    self.assertLess(abs(result["esmm_limit"]), 1e-9)
    self.assertAlmostEqual(result["bayes_cvr_on_clicks"], 1.0)

  def test_clicked_cvr_limit_matches_direct_integration(self):
    click, conversion = np.array([-2.5]), np.array([-1.0])
    fine = np.linspace(-8 * 0.9, 8 * 0.9, 20001)
    density = np.exp(-0.5 * (fine / 0.9) ** 2)
    p_click = density / (1 + np.exp(-(click + fine)))
    direct = np.sum(p_click / (1 + np.exp(-(conversion + fine))))
    self.assertAlmostEqual(
        floor.clicked_cvr_limit(click, conversion, 0.9),
        direct / np.sum(p_click), places=5)
    # Without an intent the click says nothing more about conversion.
    self.assertAlmostEqual(floor.clicked_cvr_limit(click, conversion, 0.0),
                           1 / (1 + np.exp(1.0)))


class DesignTest(parameterized.TestCase):

  @parameterized.parameters(*designs.DESIGNS)
  def test_every_design_is_a_grid_that_can_run(self, name):
    design = designs.DESIGNS[name]
    config = grid.StudyConfig(regimes=design.regimes,
                              estimators=design.estimators, arms=design.arms)
    for estimator in config.estimators:
      self.assertIn("loss", config.settings(estimator))

  def test_estimator_table_compares_paper_and_paddlerec_losses(self):
    design = designs.DESIGNS["estimator_table"]
    config = grid.StudyConfig(regimes=design.regimes,
                              estimators=design.estimators, arms=design.arms)
    self.assertEqual(config.settings("dr_paddlerec"),
                     {"loss": "dr", "compat": "paddlerec"})
    self.assertEqual(config.settings("dr"), {"loss": "dr"})

  def test_parses_an_arm(self):
    arm = designs.parse_arm("mc5:min_count=5,loss=ipw,self_normalized=true")
    self.assertEqual(arm, grid.Arm("mc5", (("min_count", 5), ("loss", "ipw"),
                                           ("self_normalized", True))))

  @parameterized.parameters(
      ("a:min_count", "not field=value"),
      ("a:min_count=0", "min_count: must be an integer >= 1"),
      ("a:seed=3", "seed is set by the study"),
      ("a:bogus=1", "bogus: is not a field"),
      ("a b:min_count=5", "arm name"))
  def test_bad_arm_spec(self, spec, message):
    with self.assertRaisesRegex(ConfigError, f"^arm: .*{message}"):
      designs.parse_arm(spec)


def _run_cli(**overrides):
  return testing.run_main(study_cli.TOOL, **overrides)


class StudyCliTest(parameterized.TestCase):

  @parameterized.parameters(
      (dict(seeds=["0"]), "--seeds: needs at least 2 seeds"),
      (dict(seeds=["0", "x"]),
       "--seeds: expected comma-separated integers, got '0,x'"),
      (dict(estimators=["esmm", "bogus"]),
       "--estimators: unknown estimator 'bogus'"),
      (dict(regime=["r:ctr=0.2,cvr=0.2"]),
       "--regime: 'r:ctr=0.2,cvr=0.2': missing corr"),
      (dict(arm=["mc:min_count=x"]), "--arm: 'mc:min_count=x': arm mc: "),
      (dict(design="nope"), "--design"))
  def test_bad_grid_is_one_line_and_writes_nothing(self, overrides, message):
    root = testing.new_dir()
    output_dir = os.path.join(root, "out")
    status, _, stderr = _run_cli(work_dir=os.path.join(root, "work"),
                                 output_dir=output_dir, **overrides)
    self.assertEqual(status, 2)
    self.assertLen(stderr.strip().splitlines(), 1)
    self.assertIn(message, stderr)
    self.assertFalse(os.path.exists(output_dir))
    self.assertFalse(os.path.exists(os.path.join(root, "work")))

  def test_regime_with_too_few_ids_is_one_line(self):
    root = testing.new_dir()
    status, _, stderr = _run_cli(
        work_dir=os.path.join(root, "work"),
        output_dir=os.path.join(root, "out"),
        regime=[testing.TINY_REGIME_RATES + ",users=5,items=300"])
    self.assertEqual(status, 2)
    self.assertLen(stderr.strip().splitlines(), 1)
    self.assertIn("--regime: tiny: users x items = 1,500", stderr)
    self.assertEqual(os.listdir(root), [])

  def test_tiny_study_writes_results_and_resumes(self):
    root = testing.new_dir()
    output_dir = os.path.join(root, "out")
    estimators = ["esmm", "ipw_true", "mrdr"]
    settings = dict(work_dir=os.path.join(root, "work"),
                    output_dir=output_dir, regime=[testing.TINY_REGIME],
                    seeds=["0", "1"], estimators=estimators)
    status, stdout, stderr = _run_cli(**settings)
    self.assertEqual(status, 0, stderr)
    self.assertRegex(stdout, r"\[6/6\] tiny seed 1 mrdr: .* ETA 0:00:00")
    with open(os.path.join(output_dir, "study.json")) as f:
      results = json.load(f)
    self.assertLen(results["runs"], 6)
    for run in results["runs"]:
      self.assertLen(run["reliability"]["ctr"]["predicted"],
                     len(run["reliability"]["ctr"]["true"]))
      self.assertIn("cvr_bias", run["metrics"])
    cell = results["summary"]["metrics"]["tiny"]["mrdr"]["cvr_bias"]
    biases = [run["metrics"]["cvr_bias"] for run in results["runs"]
              if run["estimator"] == "mrdr"]
    self.assertAlmostEqual(cell["mean"], np.mean(biases))
    self.assertEqual(cell["n"], 2)
    self.assertIn("vs_esmm", results["summary"]["paired"]["tiny"]["mrdr"])
    # Without naive and DR the target cannot be judged.
    self.assertIsNone(results["summary"]["verdicts"]["tiny"]["met"])
    self._check_floor(results)
    with open(os.path.join(output_dir, "study.md")) as f:
      markdown = f.read()
    self.assertIn("| tiny | ESCM2-IPW (true p_click) |", markdown)
    self.assertIn("| tiny | MRDR |", markdown)
    self.assertIn("## Identifiable floor and the achievable gap", markdown)
    self.assertIn("## Target: ESCM2 at most half of ESMM's bias", markdown)
    for name in ("bias.png", "reliability_tiny.png"):
      with open(os.path.join(output_dir, name), "rb") as f:
        self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
    # Without --keep_models no model directory is left.
    models = os.path.join(settings["work_dir"], "models")
    self.assertEqual([files for _, _, files in os.walk(models) if files], [])
    # A second run finds every run done and trains nothing.
    status, stdout, _ = _run_cli(**settings)
    self.assertEqual(status, 0)
    self.assertIn("6 already in", stdout)
    self.assertIn("0 to train", stdout)
    self.assertNotIn("computing the floor", stdout)
    # Runs written before a kind of floor existed gain it, untrained.
    for run in results["runs"]:
      del run["data"]["floor"]["esmm_limit"]
    with open(os.path.join(output_dir, "study.json"), "w") as f:
      json.dump(results, f)
    status, stdout, _ = _run_cli(**settings)
    self.assertEqual(status, 0)
    self.assertIn("0 to train", stdout)
    self.assertIn("computing the floor of tiny seed 1 for 3 run(s)", stdout)
    with open(os.path.join(output_dir, "study.json")) as f:
      resumed = json.load(f)
    self.assertEqual(
        {run["data"]["floor"]["esmm_limit"] for run in resumed["runs"]
         if run["seed"] == 1},
        {floor.regime_floor(regime_lib.parse_regime(
            testing.TINY_REGIME).simulator_config(1))["esmm_limit"]})
    self.assertIsNotNone(
        resumed["summary"]["floors"]["tiny"]["esmm_limit"]["mean"])
    # With a run to train, they take its dataset's floor.
    for run in resumed["runs"]:
      del run["data"]["floor"]["esmm_limit"]
    with open(os.path.join(output_dir, "study.json"), "w") as f:
      json.dump(resumed, f)
    status, stdout, _ = _run_cli(**{**settings,
                                    "estimators": estimators + ["naive"]})
    self.assertEqual(status, 0)
    self.assertIn("2 to train", stdout)
    self.assertNotIn("computing the floor", stdout)
    with open(os.path.join(output_dir, "study.json")) as f:
      extended = json.load(f)
    for seed in (0, 1):
      self.assertLen({json.dumps(run["data"]["floor"], sort_keys=True)
                      for run in extended["runs"] if run["seed"] == seed}, 1)
    self.assertEqual(
        {run["data"]["floor"]["esmm_limit"] for run in extended["runs"]
         if run["seed"] == 1},
        {floor.regime_floor(regime_lib.parse_regime(
            testing.TINY_REGIME).simulator_config(1))["esmm_limit"]})

  def _check_floor(self, results):
    """Each seed's floor is the simulator's world's, and the gap shares."""
    floors = {run["seed"]: run["data"]["floor"]["floor"]
              for run in results["runs"]}
    regime = regime_lib.parse_regime(testing.TINY_REGIME)
    self.assertAlmostEqual(
        floors[1], floor.regime_floor(regime.simulator_config(1))["floor"])
    summary_floor = results["summary"]["floors"]["tiny"]["floor"]
    self.assertAlmostEqual(summary_floor["mean"], np.mean(list(
        floors.values())))
    shares = results["summary"]["gap_closed"]["tiny"]
    means = {e: results["summary"]["metrics"]["tiny"][e]["cvr_bias"]["mean"]
             for e in ("esmm", "mrdr")}
    esmm = {run["seed"]: run["metrics"]["cvr_bias"]
            for run in results["runs"] if run["estimator"] == "esmm"}
    achievable = stats.paired(esmm, floors)
    self.assertAlmostEqual(
        results["summary"]["achievable_gap"]["tiny"]["mean"],
        achievable["mean"])
    if achievable["low"] > 0.0:
      self.assertAlmostEqual(shares["esmm"], 0.0)
      self.assertAlmostEqual(shares["mrdr"],
                             (means["esmm"] - means["mrdr"]) /
                             (means["esmm"] - summary_floor["mean"]))
    else:
      self.assertEqual(set(shares.values()), {None})

  def test_an_arm_trains_with_its_settings_and_resumes(self):
    root = testing.new_dir()
    output_dir = os.path.join(root, "out")
    settings = dict(work_dir=os.path.join(root, "work"),
                    output_dir=output_dir, regime=[testing.TINY_REGIME],
                    seeds=["0", "1"], estimators=["esmm"],
                    arm=["mc3:min_count=3,epochs=1"],
                    keep_models=True)
    status, stdout, stderr = _run_cli(**settings)
    self.assertEqual(status, 0, stderr)
    self.assertRegex(stdout, r"\[4/4\] tiny seed 1 mc3: ")
    kept = runner.run_model_dir(settings["work_dir"], "tiny", 1, "mc3")
    config = run_dir.load_config(kept)
    self.assertEqual((config.data.min_count, config.trainer.epochs), (3, 1))
    self.assertIsNotNone(run_dir.restore_model(kept))
    with open(os.path.join(output_dir, "study.json")) as f:
      results = json.load(f)
    self.assertEqual(results["grid"]["estimators"], ["esmm", "mc3"])
    by_estimator = {run["estimator"]: run["settings"]
                    for run in results["runs"]}
    self.assertEqual(by_estimator, {"esmm": {"loss": "esmm"},
                                    "mc3": {"loss": "esmm", "min_count": 3,
                                            "epochs": 1}})
    with open(os.path.join(output_dir, "study.md")) as f:
      self.assertIn("| tiny | mc3 |", f.read())
    status, stdout, _ = _run_cli(**settings)
    self.assertIn("4 already in", stdout)
    # Other settings under the same name are other runs.
    status, stdout, _ = _run_cli(
        **{**settings, "arm": ["mc3:min_count=4,epochs=1"]})
    self.assertEqual(status, 0)
    self.assertIn("2 already in", stdout)


class InterruptTest(absltest.TestCase):

  def test_callbacks_reach_fit_and_an_interrupt_ends_the_study(self):
    root = testing.new_dir()
    output_json = os.path.join(root, "out", "study.json")
    batches = []

    class InterruptAtSecondBatch(keras.callbacks.Callback):

      def on_train_batch_end(self, batch, logs=None):
        batches.append(batch)
        if len(batches) == 2:
          raise KeyboardInterrupt

    config = grid.StudyConfig(
        regimes=(regime_lib.parse_regime(testing.TINY_REGIME),),
        seeds=(0, 1), estimators=("esmm",))
    with self.assertRaises(KeyboardInterrupt):
      runner.run_study(config, os.path.join(root, "work"), output_json,
                       progress=lambda line: None,
                       callbacks=[InterruptAtSecondBatch()])
    self.assertLen(batches, 2)
    self.assertFalse(os.path.exists(output_json))


class DatasetsTest(absltest.TestCase):

  def test_reuses_rebuilds_and_refuses(self):
    regime = regime_lib.parse_regime(testing.TINY_REGIME)
    directory = os.path.join(testing.new_dir(), "data")
    dataset = datasets.prepare(regime, 0, directory)
    self.assertEqual(dataset.ground_truth,
                     layout.ground_truth(directory, layout.TEST))
    self.assertCountEqual(os.listdir(layout.raw_dir(directory)),
                          ["ground_truth_train.csv", "ground_truth_test.csv"])
    # The converter drops the conversions logged without a click.
    train = dataset.summary["train"]
    self.assertEqual(train["rows"], 2000)
    self.assertEqual(train["rows_written"],
                     train["rows"] - train["unclicked_conversions"])
    # Reused as it is.
    written = os.stat(dataset.ground_truth).st_mtime_ns
    reused = datasets.prepare(regime, 0, directory)
    self.assertEqual(reused.ground_truth, dataset.ground_truth)
    self.assertEqual(os.stat(dataset.ground_truth).st_mtime_ns, written)
    # So it is when written before a simulator setting existed.
    marker = os.path.join(directory, "dataset.json")
    with open(marker) as f:
      stored = json.load(f)
    del stored["settings"]["simulator"]["hidden_intent"]
    del stored["summary"]["floor"]["esmm_limit"]
    with open(marker, "w") as f:
      json.dump(stored, f)
    self.assertIn("esmm_limit",
                  datasets.prepare(regime, 0, directory).summary["floor"])
    self.assertEqual(os.stat(dataset.ground_truth).st_mtime_ns, written)
    # Without its ground truth it is made again.
    os.remove(dataset.ground_truth)
    rebuilt = datasets.prepare(regime, 0, directory)
    self.assertEqual(rebuilt.eval_data, dataset.eval_data)
    self.assertTrue(os.path.exists(dataset.ground_truth))
    # So it is when its ground truth has the columns of an earlier simulator.
    with open(dataset.ground_truth) as f:
      lines = f.read().splitlines()
    with open(dataset.ground_truth, "w") as f:
      f.write("\n".join(",".join(line.split(",")[:4]) for line in lines))
    datasets.prepare(regime, 0, directory)
    with open(dataset.ground_truth) as f:
      self.assertEqual(f.readline().rstrip("\n"),
                       ",".join(layout.GROUND_TRUTH_HEADER))
    with self.assertRaisesRegex(ConfigError, "^work_dir: .*other settings"):
      datasets.prepare(regime, 1, directory)


if __name__ == "__main__":
  absltest.main()
