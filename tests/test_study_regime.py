"""Tests of escm2_tf.study.regime: regime specs, checks, the default regimes."""

import dataclasses

from absl.testing import absltest
from absl.testing import parameterized
import testing

from escm2_tf import options
from escm2_tf import simulator
from escm2_tf.options import ConfigError
from escm2_tf.study import grid
from escm2_tf.study import regime as regime_lib


class RegimeTest(parameterized.TestCase):

  def test_parses_a_regime(self):
    regime = regime_lib.parse_regime(testing.TINY_REGIME_RATES)
    self.assertEqual(regime,
                     regime_lib.Regime("tiny", 0.25, 0.3, 0.9, 2000, 1000))
    defaults = simulator.SimulatorConfig()
    self.assertEqual((regime.num_users, regime.num_items),
                     (defaults.num_users, defaults.num_items))
    dense = regime_lib.parse_regime(
        testing.TINY_REGIME_RATES + ",users=50,items=400")
    self.assertEqual((dense.num_users, dense.num_items), (50, 400))
    config = dense.simulator_config(seed=3)
    self.assertEqual((config.num_users, config.num_items, config.seed,
                      config.click_conversion_correlation), (50, 400, 3, 0.9))
    self.assertEqual(config.hidden_intent, 0.0)
    hidden = regime_lib.parse_regime(
        testing.TINY_REGIME_RATES + ",intent=0.5,user_intent=0.7")
    config = hidden.simulator_config(seed=0)
    self.assertEqual((config.hidden_intent, config.user_intent), (0.5, 0.7))
    self.assertIn("hidden intent 0.5, user intent 0.7", hidden.describe())

  def test_settings_stored_before_a_field_existed_still_match(self):
    regime = regime_lib.parse_regime(testing.TINY_REGIME)
    stored = dataclasses.asdict(regime)
    del stored["intent"]
    self.assertTrue(options.same_settings(stored, regime))
    self.assertFalse(options.same_settings(
        stored, dataclasses.replace(regime, intent=0.5)))
    self.assertFalse(options.same_settings(
        {**stored, "intent": 0.5}, regime))
    self.assertFalse(options.same_settings({**stored, "ctr": 0.3}, regime))
    self.assertFalse(options.same_settings(None, regime))

  @parameterized.parameters(
      ("tiny:ctr=0.2,cvr=0.2,corr=0.9,train=3000", "missing test"),
      ("tiny:ctr=0.2,cvr=0.2,corr=0.9,train=3000,test=10,x=1", "unknown key"),
      ("tiny:ctr=high,cvr=0.2,corr=0.9,train=3000,test=10", "not a float"),
      ("ti ny:ctr=0.2,cvr=0.2,corr=0.9,train=3000,test=10", "the name"))
  def test_bad_regime_spec(self, spec, message):
    with self.assertRaisesRegex(ConfigError, f"^regime: .*{message}"):
      regime_lib.parse_regime(spec)

  def test_default_design_covers_every_level(self):
    regimes = regime_lib.DEFAULT_REGIMES
    self.assertEqual({r.cvr for r in regimes}, {0.01, 0.04, 0.15})
    self.assertEqual({r.ctr for r in regimes}, {0.02, 0.08})
    self.assertEqual({r.correlation for r in regimes},
                     {regime_lib.WEAK_CORRELATION,
                      regime_lib.STRONG_CORRELATION})
    self.assertGreaterEqual(len(grid.DEFAULT_SEEDS), 3)

  def test_default_design_has_the_release_density_and_a_dense_world(self):
    regimes = {r.name: r for r in regime_lib.DEFAULT_REGIMES}
    release = regimes["release"]
    self.assertAlmostEqual(release.num_train / release.num_users, 60)
    self.assertAlmostEqual(release.num_train / release.num_items, 90)
    dense = regimes["dense"]
    self.assertGreater(dense.num_train / dense.num_users,
                       release.num_train / release.num_users)
    self.assertGreaterEqual(max(r.num_train for r in regimes.values()),
                            1_000_000)
    self.assertEqual([r.name for r in regimes.values() if r.intent > 0],
                     ["intent"])
    self.assertEqual([r.name for r in regimes.values() if r.user_intent > 0],
                     ["user_intent"])


if __name__ == "__main__":
  absltest.main()
