"""Tests of escm2_tf.config.ModelConfig."""

import json

from absl.testing import absltest
from absl.testing import parameterized

from escm2_tf import config as config_lib


class ModelConfigTest(parameterized.TestCase):

  def test_defaults_follow_paddlerec(self):
    config = config_lib.ModelConfig()
    self.assertEqual(config.embedding_dim, 12)
    self.assertEqual(config.backbone, "mmoe")
    self.assertEqual((config.num_experts, config.expert_units), (8, (16,)))
    self.assertEqual(config.tower_units, (8,))

  def test_json_round_trip(self):
    config = config_lib.ModelConfig(
        embedding_dim=4, backbone="dcn", expert_units=(8, 4), bottom_units=(6,),
        tower_units=(), pooling="mean", use_weights=True, oov_buckets=3,
        embedding_l2=1e-5, dropout=0.1, cross_projection_dim=2, seed=7)
    restored = config_lib.ModelConfig.from_dict(
        json.loads(json.dumps(config.to_dict())))
    self.assertEqual(restored, config)
    self.assertIsInstance(restored.expert_units, tuple)

  def test_lists_become_tuples_and_config_is_hashable(self):
    config = config_lib.ModelConfig(expert_units=[16, 8], tower_units=[4])
    self.assertEqual(config.expert_units, (16, 8))
    self.assertEqual(hash(config), hash(config_lib.ModelConfig(
        expert_units=(16, 8), tower_units=(4,))))

  def test_from_dict_rejects_unknown_fields(self):
    with self.assertRaisesRegex(ValueError, "embeding_dim"):
      config_lib.ModelConfig.from_dict({"embeding_dim": 4})

  @parameterized.parameters(
      ("embedding_dim", 0), ("embedding_dim", 2.5), ("embedding_dim", True),
      ("backbone", "transformer"), ("num_experts", -1),
      ("expert_units", ()), ("expert_units", (16, 0)), ("expert_units", "16"),
      ("bottom_units", ()), ("tower_units", (4, -2)), ("num_cross_layers", 0),
      ("cross_projection_dim", 0), ("pooling", "max"), ("use_weights", 1),
      ("oov_buckets", 0), ("embedding_initializer", "zeros"),
      ("embedding_init_scale", 0.0), ("embedding_l2", -1e-3),
      ("embedding_dropout", 1.0), ("dropout", -0.1), ("activation", "elu"),
      ("seed", -1), ("seed", 1.5))
  def test_invalid_value_names_the_field(self, field, value):
    with self.assertRaises(config_lib.ConfigError) as caught:
      config_lib.ModelConfig(**{field: value})
    self.assertEqual(caught.exception.field, field)
    self.assertStartsWith(str(caught.exception), f"{field}: ")


class TrainConfigTest(absltest.TestCase):

  def test_multi_worker_mirrored_refuses_grouped_steps(self):
    paths = dict(train_data="a", eval_data="b", vocab_dir="v", model_dir="m")
    with self.assertRaisesRegex(config_lib.ConfigError,
                                "^steps_per_execution: must be 1 with "
                                "multi_worker_mirrored"):
      config_lib.TrainConfig(**paths,
                             distribution_strategy="multi_worker_mirrored",
                             steps_per_execution=32)
    config_lib.TrainConfig(**paths,
                           distribution_strategy="multi_worker_mirrored")


if __name__ == "__main__":
  absltest.main()
