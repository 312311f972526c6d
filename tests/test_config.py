"""Tests of escm2_tf.config: the sections and the ExperimentConfig."""

import dataclasses
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

  def test_lists_become_tuples_and_config_is_hashable(self):
    config = config_lib.ModelConfig(expert_units=[16, 8], tower_units=[4])
    self.assertEqual(config.expert_units, (16, 8))
    self.assertEqual(hash(config), hash(config_lib.ModelConfig(
        expert_units=(16, 8), tower_units=(4,))))

  @parameterized.parameters(
      ("embedding_dim", 0), ("embedding_dim", 2.5), ("embedding_dim", True),
      ("backbone", "transformer"), ("num_experts", -1),
      ("expert_units", ()), ("expert_units", (16, 0)), ("expert_units", "16"),
      ("bottom_units", ()), ("tower_units", (4, -2)), ("num_cross_layers", 0),
      ("cross_projection_dim", 0), ("pooling", "max"), ("use_weights", 1),
      ("oov_buckets", 0), ("embedding_initializer", "zeros"),
      ("embedding_init_scale", 0.0), ("embedding_l2", -1e-3),
      ("embedding_dropout", 1.0), ("dropout", -0.1), ("activation", "elu"))
  def test_invalid_value_names_the_field(self, field, value):
    with self.assertRaises(config_lib.ConfigError) as caught:
      config_lib.ModelConfig(**{field: value})
    self.assertEqual(caught.exception.field, field)
    self.assertStartsWith(str(caught.exception), f"{field}: ")


_PATHS = dict(train_data="a", eval_data="b", vocab_dir="v", model_dir="m")


class ExperimentConfigTest(parameterized.TestCase):

  def test_json_round_trip(self):
    config = config_lib.ExperimentConfig.create(
        **_PATHS, seed=7, distribution_strategy="mirrored", ground_truth="g",
        min_count=3, embedding_dim=4, backbone="dcn", expert_units=(8, 4),
        bottom_units=(6,), tower_units=(), pooling="mean", use_weights=True,
        cross_projection_dim=2, loss="dr", max_ips_weight=20.0,
        propensity="label", export_dir="e", early_stopping_patience=2)
    restored = config_lib.ExperimentConfig.from_dict(
        json.loads(json.dumps(config.to_dict())))
    self.assertEqual(restored, config)
    self.assertIsInstance(restored.model.expert_units, tuple)
    self.assertEqual(list(config.to_dict()),
                     ["runtime", "data", "model", "loss", "trainer"])

  @parameterized.parameters(
      ({"train": {}},), ({"model": {"embeding_dim": 4}},),
      ({"trainer": {"epoch": 3}},))
  def test_from_dict_refuses_unknown_keys(self, extra):
    values = config_lib.ExperimentConfig.create(**_PATHS).to_dict()
    for key, value in extra.items():
      if key in values:
        values[key].update(value)
      else:
        values[key] = value
    unknown = [*extra.values()][0]
    name = next(iter(unknown)) if unknown else next(iter(extra))
    with self.assertRaisesRegex(ValueError, f"unknown .* field.*{name}"):
      config_lib.ExperimentConfig.from_dict(values)

  def test_from_dict_checks_the_values(self):
    values = config_lib.ExperimentConfig.create(**_PATHS).to_dict()
    values["loss"]["lambda_c"] = -1
    with self.assertRaises(config_lib.ConfigError) as caught:
      config_lib.ExperimentConfig.from_dict(values)
    self.assertEqual(caught.exception.field, "lambda_c")

  def test_is_frozen_and_replace_routes_fields_to_sections(self):
    config = config_lib.ExperimentConfig.create(**_PATHS)
    with self.assertRaises(dataclasses.FrozenInstanceError):
      config.model = config_lib.ModelConfig()  # pytype: disable=attribute-error
    changed = config.replace(seed=1, loss="dr", epochs=2, embedding_dim=3)
    self.assertEqual((changed.runtime.seed, changed.loss.loss,
                      changed.trainer.epochs, changed.model.embedding_dim),
                     (1, "dr", 2, 3))
    self.assertEqual(changed.data, config.data)
    with self.assertRaises(config_lib.ConfigError) as caught:
      config.replace(epoch=2)
    self.assertEqual(caught.exception.field, "epoch")

  def test_sections_are_the_fields_and_their_names_unique(self):
    self.assertEqual(
        {field.name: field.type
         for field in dataclasses.fields(config_lib.ExperimentConfig)},
        config_lib.SECTIONS)
    names = [field.name for section in config_lib.SECTIONS.values()
             for field in dataclasses.fields(section)]
    self.assertLen(set(names), len(names))
    self.assertEqual(set(names), set(config_lib.SECTION_OF))

  def test_multi_worker_mirrored_refuses_grouped_steps(self):
    with self.assertRaisesRegex(config_lib.ConfigError,
                                "^steps_per_execution: must be 1 with "
                                "multi_worker_mirrored"):
      config_lib.ExperimentConfig.create(
          **_PATHS, distribution_strategy="multi_worker_mirrored",
          steps_per_execution=32)
    config_lib.ExperimentConfig.create(
        **_PATHS, distribution_strategy="multi_worker_mirrored",
        steps_per_execution=1)

  @parameterized.parameters("train_data", "eval_data", "vocab_dir",
                            "model_dir")
  def test_required_paths(self, name):
    with self.assertRaisesRegex(config_lib.ConfigError,
                                f"^{name}: is required$"):
      config_lib.ExperimentConfig.create(**{**_PATHS, name: ""})


if __name__ == "__main__":
  absltest.main()
