"""Tests of escm2-export: a training run's model_dir to a SavedModel version."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import dataclasses
import json
import os
import shutil

from absl.testing import parameterized
import numpy as np
import tensorflow as tf
import tf_keras as keras

import testing
from escm2_tf import config as config_lib
from escm2_tf import layout
from escm2_tf import model as model_lib
from escm2_tf import schema
from escm2_tf import serving
from escm2_tf import serving_assets
from escm2_tf import vocab
from escm2_tf.cli import export as export_cli
from escm2_tf import run_dir

_TOLERANCE = 1e-6
_MODEL_CONFIG = testing.tiny_model_config(use_weights=True)
_SEED = 9
_LOSS_CONFIG = config_lib.LossConfig(loss="dr")
_METRICS = {"auc_ctr": 0.75, "count": 12}



def _write_vocabularies(vocab_dir: str) -> None:
  os.makedirs(vocab_dir)
  for index, field in enumerate(schema.FIELD_NAMES):
    with open(layout.vocabulary_file(vocab_dir, field), "w") as f:
      f.writelines(f"{i}\t{100 - i}\n" for i in range(1, 16 + index))


def _write_model_dir(model_dir: str, vocab_dir: str,
                     model_config: config_lib.ModelConfig) -> keras.Model:
  """A model_dir as escm2-train leaves it, with weights moved off their init."""
  config = config_lib.ExperimentConfig.create(
      train_data="unused", eval_data="unused", vocab_dir=vocab_dir,
      model_dir=model_dir, min_count=1, seed=_SEED)
  config = dataclasses.replace(config, model=model_config, loss=_LOSS_CONFIG)
  os.makedirs(model_dir)
  with open(os.path.join(model_dir, run_dir.CONFIG_FILE), "w") as f:
    json.dump(config.to_dict(), f)
  with open(os.path.join(model_dir, run_dir.METRICS_FILE), "w") as f:
    json.dump(_METRICS, f)
  model = model_lib.build_model(model_config, _LOSS_CONFIG,
                                vocab.load_vocabularies(vocab_dir), seed=_SEED)
  model.compile(optimizer=keras.optimizers.Adam())
  model.optimizer.build(model.trainable_variables)
  rng = np.random.default_rng(0)
  for variable in model.trainable_variables:
    variable.assign_add(rng.normal(0.0, 0.3, variable.shape).astype(
        variable.dtype.as_numpy_dtype))
  model.save_weights(os.path.join(model_dir, run_dir.CHECKPOINT_DIR,
                                  run_dir.FINAL_CHECKPOINT))
  return model


def _rows() -> list[dict[str, list]]:
  rng = np.random.default_rng(4)
  return [{field: rng.integers(1, 25, size=2).tolist()
           for field in schema.FIELD_NAMES} for _ in range(6)]


def _outputs(function, rows) -> dict[str, np.ndarray]:
  inputs = serving.signature_request(serving.EXAMPLES_SIGNATURE, rows)
  if isinstance(function, keras.Model):
    outputs = function(tf.io.parse_example(
        inputs[serving.EXAMPLES_INPUT], schema.serving_feature_spec()))
  else:
    outputs = function(**{k: tf.constant(v) for k, v in inputs.items()})
  return {name: outputs[name].numpy() for name in schema.OUTPUT_NAMES}


class ExportCliTest(tf.test.TestCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    root = testing.new_dir()
    cls.vocab_dir = layout.vocab_dir(root)
    cls.model_dir = os.path.join(root, "model")
    _write_vocabularies(cls.vocab_dir)
    cls.model = _write_model_dir(cls.model_dir, cls.vocab_dir, _MODEL_CONFIG)

  def _main(self, **flag_values) -> tuple[int, str]:
    values = {"model_dir": self.model_dir, "version": None,
              "overwrite": False, **flag_values}
    code, _, stderr = testing.run_main(export_cli.TOOL, **values)
    return code, stderr

  def test_console_script_restores_and_exports(self):
    export_dir = os.path.join(self.get_temp_dir(), "serving")
    process = testing.run_subprocess(
        [testing.console_script("escm2-export"),
         f"--model_dir={self.model_dir}", f"--export_dir={export_dir}"])
    self.assertEqual(process.returncode, 0, process.stderr[-3000:])
    path = os.path.join(export_dir, "1")
    self.assertIn(f"Exported {path}", process.stdout)
    extra = os.path.join(path, serving_assets.ASSETS_EXTRA)
    with open(os.path.join(extra, "config.json")) as f, open(
        os.path.join(self.model_dir, run_dir.CONFIG_FILE)) as g:
      self.assertEqual(json.load(f), json.load(g))
    with open(os.path.join(extra, "metrics.json")) as f:
      self.assertEqual(json.load(f), _METRICS)
    served = _outputs(tf.saved_model.load(path).signatures[
        serving.EXAMPLES_SIGNATURE], _rows())
    trained = _outputs(self.model, _rows())
    initial = _outputs(model_lib.build_model(
        _MODEL_CONFIG, _LOSS_CONFIG, vocab.load_vocabularies(self.vocab_dir),
        seed=_SEED),
                       _rows())
    for name in schema.OUTPUT_NAMES:
      self.assertAllClose(served[name], trained[name], atol=_TOLERANCE,
                          rtol=0)
      # The checkpoint, not the seeded initialisation, was restored.
      self.assertNotAllClose(served[name], initial[name], atol=1e-3)

  def test_existing_version_refused_unless_overwrite(self):
    export_dir = os.path.join(self.get_temp_dir(), "serving")
    os.makedirs(os.path.join(export_dir, "4"))
    marker = os.path.join(export_dir, "4", "marker")
    open(marker, "w").close()
    code, stderr = self._main(export_dir=export_dir, version=4)
    self.assertEqual(code, 1)
    self.assertEqual(stderr, f"escm2-export: error: --export_dir: "
                     f"{os.path.join(export_dir, '4')} exists; pass "
                     "--overwrite to replace it\n")
    self.assertEqual(sorted(os.listdir(export_dir)), ["4"])
    self.assertTrue(os.path.exists(marker))
    code, stderr = self._main(export_dir=export_dir, version=4,
                              overwrite=True)
    self.assertEqual(code, 0, stderr)
    self.assertEqual(sorted(os.listdir(export_dir)), ["4"])
    self.assertFalse(os.path.exists(marker))
    self.assertTrue(tf.saved_model.contains_saved_model(
        os.path.join(export_dir, "4")))

  def _broken_model_dir(self, name: str) -> str:
    model_dir = os.path.join(self.get_temp_dir(), name)
    shutil.copytree(self.model_dir, model_dir)
    return model_dir

  def test_missing_config(self):
    model_dir = self._broken_model_dir("no_config")
    os.remove(os.path.join(model_dir, run_dir.CONFIG_FILE))
    code, stderr = self._main(model_dir=model_dir, export_dir="unused")
    self.assertEqual(code, 2)
    self.assertEqual(stderr, "escm2-export: error: --model_dir: "
                     f"{model_dir}/config.json not found\n")

  def test_missing_checkpoint(self):
    model_dir = self._broken_model_dir("no_checkpoint")
    shutil.rmtree(os.path.join(model_dir, run_dir.CHECKPOINT_DIR))
    code, stderr = self._main(model_dir=model_dir, export_dir="unused")
    self.assertEqual(code, 2)
    self.assertEqual(stderr, "escm2-export: error: --model_dir: "
                     f"{model_dir}/checkpoints holds no checkpoint\n")

  def test_config_of_an_older_trainer_is_one_line(self):
    model_dir = self._broken_model_dir("old_config")
    path = os.path.join(model_dir, run_dir.CONFIG_FILE)
    with open(path) as f:
      content = json.load(f)
    content["train"] = {**content.pop("data"), **content.pop("trainer")}
    with open(path, "w") as f:
      json.dump(content, f)
    code, stderr = self._main(model_dir=model_dir, export_dir="unused")
    self.assertEqual(code, 2)
    self.assertEqual(stderr, f"escm2-export: error: --model_dir: {path}: not "
                     "an escm2-train config (unknown ExperimentConfig "
                     "field(s): train)\n")

  def test_checkpoint_of_another_network(self):
    model_dir = self._broken_model_dir("other_network")
    path = os.path.join(model_dir, run_dir.CONFIG_FILE)
    with open(path) as f:
      content = json.load(f)
    content["model"]["tower_units"] = [4, 4]
    with open(path, "w") as f:
      json.dump(content, f)
    export_dir = os.path.join(self.get_temp_dir(), "serving")
    code, stderr = self._main(model_dir=model_dir, export_dir=export_dir)
    self.assertEqual(code, 2)
    self.assertStartsWith(stderr, "escm2-export: error: --model_dir: ")
    self.assertIn("does not fit the network of", stderr)
    self.assertEqual(stderr.count("\n"), 1, stderr)
    self.assertFalse(os.path.exists(export_dir))

  def test_missing_vocabulary(self):
    model_dir = self._broken_model_dir("no_vocab")
    path = os.path.join(model_dir, run_dir.CONFIG_FILE)
    with open(path) as f:
      content = json.load(f)
    content["data"]["vocab_dir"] = os.path.join(model_dir, "missing")
    with open(path, "w") as f:
      json.dump(content, f)
    code, stderr = self._main(model_dir=model_dir, export_dir="unused")
    self.assertEqual(code, 2)
    self.assertStartsWith(stderr, "escm2-export: error: --model_dir: "
                          f"{model_dir}/missing/101.tsv: vocabulary file "
                          "not found")

  @parameterized.named_parameters(
      ("no_model_dir", {"model_dir": "", "export_dir": "x"},
       "--model_dir: is required"),
      ("no_export_dir", {"export_dir": ""}, "--export_dir: is required"))
  def test_required_flags(self, flag_values, message):
    code, stderr = self._main(**flag_values)
    self.assertEqual(code, 2)
    self.assertEqual(stderr, f"escm2-export: error: {message}\n")

  def test_unexpected_arguments(self):
    code, _, stderr = testing.run_main(export_cli.TOOL, argv=["extra"],
        model_dir=self.model_dir, export_dir="x")
    self.assertEqual(code, 2)
    self.assertIn("unexpected arguments 'extra'", stderr)


if __name__ == "__main__":
  tf.test.main()
