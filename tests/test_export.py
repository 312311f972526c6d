"""Tests of escm2_tf.export: SavedModel, loaders, versions, atomicity."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import json
import os
import textwrap
from unittest import mock

from absl.testing import parameterized
import numpy as np
import tensorflow as tf
import tf_keras as keras

import testing
from escm2_tf import config as config_lib
from escm2_tf import export
from escm2_tf import model as model_lib
from escm2_tf import schema
from escm2_tf import serving
from escm2_tf import serving_assets

_TOLERANCE = 1e-6
_SAVED_MODEL_CLI = testing.console_script("saved_model_cli")
# Runs in a fresh interpreter that never imports escm2_tf or Keras, as a
# serving process would: the SavedModel must stand on its own.
_LOAD_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    model_dir, inputs_path, outputs_path = sys.argv[1:]
    loaded = tf.saved_model.load(model_dir)
    inputs = np.load(inputs_path, allow_pickle=True)
    results = {}
    for name, function in loaded.signatures.items():
      prefix = name + "/"
      arguments = {key[len(prefix):]: tf.constant(inputs[key])
                   for key in inputs.files if key.startswith(prefix)}
      for output, value in function(**arguments).items():
        results[prefix + output] = value.numpy()
    np.savez(outputs_path, **results)
""")


def _vocabularies() -> dict[str, np.ndarray]:
  return {field: np.arange(1, 21, dtype=np.int64) * (index + 1)
          for index, field in enumerate(schema.FIELD_NAMES)}


def _build_model(loss: str = "dr", use_weights: bool = True,
                 backbone: str = "mmoe") -> keras.Model:
  model_config = config_lib.ModelConfig(
      embedding_dim=4, backbone=backbone, num_experts=2, expert_units=(8,),
      bottom_units=(8,), tower_units=(4,), use_weights=use_weights,
      oov_buckets=2)
  return model_lib.build_model(model_config, config_lib.LossConfig(loss=loss),
                               _vocabularies(), seed=7)


def _rows(count: int, seed: int) -> list[dict[str, list]]:
  """Requests mixing known ids, unknown ids, absent fields and weights."""
  rng = np.random.default_rng(seed)
  vocabularies = _vocabularies()
  rows = [{}]  # An impression with no feature at all.
  for _ in range(count - 1):
    row = {}
    for field in schema.FIELDS:
      size = int(rng.integers(0, 4 if field.multi_valued else 2))
      known = rng.choice(vocabularies[field.name], size=size)
      unknown = rng.integers(10**9, 10**12, size=size)
      row[field.name] = np.where(rng.random(size) < 0.3, unknown,
                                 known).tolist()
      if field.weighted and rng.random() < 0.7:
        row[schema.weight_name(field.name)] = np.round(
            rng.uniform(0.5, 3.0, size=size), 3).tolist()
    rows.append(row)
  return rows


def _ragged_features(rows, weights: bool = True) -> dict[str, tf.Tensor]:
  """The model's input, built directly from the rows (not via serving)."""
  features = {field: tf.ragged.constant(
      [row.get(field, []) for row in rows], dtype=tf.int64, ragged_rank=1,
      row_splits_dtype=tf.int64) for field in schema.FIELD_NAMES}
  for field in schema.WEIGHTED_FIELDS:
    name = schema.weight_name(field)
    features[name] = tf.ragged.constant(
        [row.get(name, []) if weights else [] for row in rows],
        dtype=tf.float32, ragged_rank=1, row_splits_dtype=tf.int64)
  return features


def _expected(model, rows, weights: bool = True) -> dict[str, np.ndarray]:
  outputs = model(_ragged_features(rows, weights), training=False)
  return {name: outputs[name].numpy() for name in schema.OUTPUT_NAMES}


def _touch(path: str) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write("old")
  return path


class ExportedModelTest(tf.test.TestCase):
  """One export of a DR model with weights, checked through every loader."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.export_dir = testing.new_dir()
    cls.model = _build_model()
    cls.rows = _rows(12, seed=1)
    cls.config = {"model": {"embedding_dim": 4}, "note": "from the test"}
    cls.path = export.export_saved_model(
        cls.model, cls.export_dir, extra_assets={"config": cls.config})
    cls.loaded = tf.saved_model.load(cls.path)

  def _check_outputs(self, outputs, expected):
    for name in schema.OUTPUT_NAMES:
      self.assertEqual(outputs[name].dtype, np.float32)
      self.assertAllClose(outputs[name], expected[name], atol=_TOLERANCE,
                          rtol=0)
      self.assertAllInRange(outputs[name], 0.0, 1.0)
    self.assertAllClose(outputs["ctcvr"], outputs["ctr"] * outputs["cvr"],
                        atol=1e-7, rtol=0)

  def test_layout_and_assets(self):
    self.assertEqual(self.path, os.path.join(self.export_dir, "1"))
    self.assertEqual(os.listdir(self.export_dir), ["1"])
    extra = os.path.join(self.path, serving_assets.ASSETS_EXTRA)
    self.assertCountEqual(os.listdir(extra), [
        serving_assets.WARMUP_FILE, "schema.json", "config.json"])
    with open(os.path.join(extra, "config.json")) as f:
      self.assertEqual(json.load(f), self.config)
    with open(os.path.join(extra, "schema.json")) as f:
      written = json.load(f)
    self.assertEqual([field["name"] for field in written["fields"]],
                     list(schema.FIELD_NAMES))
    self.assertEqual(written["pad_id"], schema.PAD_ID)
    self.assertCountEqual(written["signatures"], serving.SIGNATURE_NAMES)

  def test_signatures_match_in_memory_model(self):
    expected = _expected(self.model, self.rows)
    for signature in (serving.EXAMPLES_SIGNATURE,
                      serving.DENSE_WEIGHTED_SIGNATURE):
      inputs = serving.signature_request(signature, self.rows)
      outputs = self.loaded.signatures[signature](
          **{k: tf.constant(v) for k, v in inputs.items()})
      self._check_outputs({k: v.numpy() for k, v in outputs.items()},
                          expected)
    # The dense signature without weights weighs every id 1.0.
    inputs = serving.signature_request(serving.DENSE_SIGNATURE, self.rows)
    outputs = self.loaded.signatures[serving.DENSE_SIGNATURE](
        **{k: tf.constant(v) for k, v in inputs.items()})
    self._check_outputs({k: v.numpy() for k, v in outputs.items()},
                        _expected(self.model, self.rows, weights=False))

  def test_absent_weights_mean_one(self):
    rows = [row for row in self.rows if row.get("109_14_w")][:3]
    self.assertLen(rows, 3)
    unweighted = [{k: v for k, v in row.items()
                   if k not in schema.WEIGHT_NAMES} for row in rows]
    ones = [{**row, **{schema.weight_name(f): [1.0] * len(row.get(f, []))
                       for f in schema.WEIGHTED_FIELDS}} for row in unweighted]
    signature = self.loaded.signatures[serving.EXAMPLES_SIGNATURE]
    outputs = [signature(examples=tf.constant(serving.signature_request(
        serving.EXAMPLES_SIGNATURE, r)[serving.EXAMPLES_INPUT]))
               for r in (unweighted, ones, rows)]
    self.assertAllClose(outputs[0]["cvr"], outputs[1]["cvr"], atol=0, rtol=0)
    self.assertNotAllClose(outputs[0]["cvr"], outputs[2]["cvr"])

  def test_fresh_process_tf_saved_model_load(self):
    inputs = {f"{signature}/{key}": value
              for signature in serving.SIGNATURE_NAMES
              for key, value in serving.signature_request(
                  signature, self.rows).items()}
    inputs_path = os.path.join(testing.new_dir(), "inputs.npz")
    outputs_path = os.path.join(testing.new_dir(), "outputs.npz")
    np.savez(inputs_path, **inputs)
    process = testing.run_subprocess(testing.python_command(
        _LOAD_SCRIPT, self.path, inputs_path, outputs_path))
    self.assertEqual(process.returncode, 0, process.stderr[-2000:])
    results = np.load(outputs_path)
    for signature in serving.SIGNATURE_NAMES:
      expected = _expected(self.model, self.rows,
                           weights=signature != serving.DENSE_SIGNATURE)
      self._check_outputs({name: results[f"{signature}/{name}"]
                           for name in schema.OUTPUT_NAMES}, expected)

  def _saved_model_cli(self, signature: str, *arguments: str):
    outdir = testing.new_dir()
    process = testing.run_subprocess(
        [_SAVED_MODEL_CLI, "run", "--dir", self.path, "--tag_set", "serve",
         "--signature_def", signature, "--outdir", outdir, "--overwrite",
         *arguments])
    self.assertEqual(process.returncode, 0, process.stderr[-2000:])
    return {name: np.load(os.path.join(outdir, f"{name}.npy"))
            for name in schema.OUTPUT_NAMES}

  def test_saved_model_cli_session_loader_examples(self):
    # saved_model_cli builds the tf.Examples itself from feature lists.
    rows = [{k: v for k, v in row.items() if v} for row in self.rows[1:]]
    outputs = self._saved_model_cli(
        serving.EXAMPLES_SIGNATURE, "--input_examples",
        f"{serving.EXAMPLES_INPUT}={json.dumps(rows)}")
    self._check_outputs(outputs, _expected(self.model, rows))

  def test_empty_batch_gives_empty_outputs(self):
    for signature in serving.SIGNATURE_NAMES:
      inputs = serving.signature_request(signature, [])
      outputs = self.loaded.signatures[signature](
          **{k: tf.constant(v) for k, v in inputs.items()})
      for name in schema.OUTPUT_NAMES:
        self.assertEqual(outputs[name].shape, (0,), signature)

  def test_bad_requests_raise_and_the_model_keeps_serving(self):
    examples = self.loaded.signatures[serving.EXAMPLES_SIGNATURE]
    dense = self.loaded.signatures[serving.DENSE_SIGNATURE]
    weighted = self.loaded.signatures[serving.DENSE_WEIGHTED_SIGNATURE]
    ids = serving.signature_request(serving.DENSE_SIGNATURE, self.rows)
    invalid = tf.errors.InvalidArgumentError
    with self.assertRaisesRegex(invalid, "expected to be a string tensor"):
      examples(examples=tf.constant([1, 2], tf.int64))
    with self.assertRaisesRegex(invalid, "not compatible with expected shape"):
      examples(examples=tf.constant([[b"x"]]))
    with self.assertRaisesRegex(invalid, "expected to be a int64 tensor"):
      dense(**{k: tf.constant(v, tf.float32) for k, v in ids.items()})
    with self.assertRaisesRegex(invalid, "not compatible with expected shape"):
      dense(**{k: tf.constant(v[0]) for k, v in ids.items()})
    with self.assertRaisesRegex(TypeError, "missing a required argument"):
      dense(**{k: tf.constant(v) for k, v in ids.items() if k != "101"})
    with self.assertRaisesRegex(invalid, "109_14_w"):
      bad = serving.make_example({"109_14": [1, 2], "109_14_w": [1.0]})
      examples(examples=tf.constant([bad.SerializeToString()]))
    with self.assertRaisesRegex(invalid, "150_14_w must have the shape"):
      inputs = serving.signature_request(serving.DENSE_WEIGHTED_SIGNATURE,
                                         self.rows)
      inputs["150_14_w"] = inputs["150_14_w"][:, :1]
      weighted(**{k: tf.constant(v) for k, v in inputs.items()})
    with self.assertRaisesRegex(invalid, "Could not parse example"):
      examples(examples=tf.constant([b"not a tf.Example"]))
    outputs = examples(examples=tf.constant(serving.signature_request(
        serving.EXAMPLES_SIGNATURE, self.rows)[serving.EXAMPLES_INPUT]))
    self._check_outputs({k: v.numpy() for k, v in outputs.items()},
                        _expected(self.model, self.rows))


class ExportOptionsTest(tf.test.TestCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = _build_model()

  def test_esmm_without_weights_exports(self):
    model = _build_model(loss="esmm", use_weights=False,
                         backbone="shared_bottom")
    export_dir = testing.new_dir()
    os.makedirs(os.path.join(export_dir, "4"))
    path = export.export_saved_model(model, export_dir)
    self.assertEqual(path, os.path.join(export_dir, "5"))
    rows = _rows(6, seed=2)
    inputs = serving.signature_request(serving.EXAMPLES_SIGNATURE, rows)
    outputs = tf.saved_model.load(path).signatures[
        serving.EXAMPLES_SIGNATURE](**{k: tf.constant(v)
                                       for k, v in inputs.items()})
    expected = _expected(model, rows)
    self.assertNotIn("imputation", outputs)
    for name in schema.OUTPUT_NAMES:
      self.assertAllClose(outputs[name], expected[name], atol=_TOLERANCE,
                          rtol=0)

  def test_next_version_ignores_non_versions(self):
    export_dir = testing.new_dir()
    self.assertEqual(export.next_version(export_dir), 1)
    for name in ("2", "10", "tmp", "11a", ".tmp-export-x", "٣"):
      os.mkdir(os.path.join(export_dir, name))
    self.assertEqual(export.next_version(export_dir), 11)
    self.assertEqual(export.next_version(os.path.join(export_dir, "no")), 1)

  def test_existing_version_is_refused(self):
    export_dir = testing.new_dir()
    marker = _touch(os.path.join(export_dir, "3", "marker"))
    with self.assertRaisesRegex(FileExistsError, "version 3 exists"):
      export.export_saved_model(self.model, export_dir, version=3)
    self.assertEqual(os.listdir(export_dir), ["3"])
    self.assertTrue(os.path.exists(marker))

  def test_overwrite_replaces_the_version(self):
    export_dir = testing.new_dir()
    marker = _touch(os.path.join(export_dir, "3", "marker"))
    path = export.export_saved_model(self.model, export_dir, version=3,
                                     overwrite=True)
    self.assertEqual(os.listdir(export_dir), ["3"])
    self.assertFalse(os.path.exists(marker))
    self.assertTrue(tf.saved_model.contains_saved_model(path))

  def test_overwrite_without_atomic_exchange(self):
    # Where the file system cannot swap, the old version is moved aside.
    export_dir = testing.new_dir()
    marker = _touch(os.path.join(export_dir, "3", "marker"))
    with mock.patch.object(export, "_exchange", return_value=False), \
        mock.patch.object(tf.saved_model, "save",
                          side_effect=lambda _, path, **__: _touch(
                              os.path.join(path, "saved_model.pb"))):
      path = export.export_saved_model(self.model, export_dir, version=3,
                                       overwrite=True)
    self.assertEqual(os.listdir(export_dir), ["3"])
    self.assertFalse(os.path.exists(marker))
    self.assertTrue(os.path.exists(os.path.join(path, "saved_model.pb")))

  def test_failed_replacement_keeps_the_old_version(self):
    export_dir = testing.new_dir()
    marker = _touch(os.path.join(export_dir, "3", "marker"))
    target = os.path.join(export_dir, "3")
    rename = os.rename

    def failing_rename(source, destination):
      if destination == target and os.path.basename(source).startswith("."):
        raise OSError("rename failed")
      rename(source, destination)

    with mock.patch.object(export, "_exchange", return_value=False), \
        mock.patch.object(tf.saved_model, "save",
                          side_effect=lambda _, path, **__: _touch(
                              os.path.join(path, "saved_model.pb"))), \
        mock.patch.object(os, "rename", side_effect=failing_rename):
      with self.assertRaisesRegex(OSError, "rename failed"):
        export.export_saved_model(self.model, export_dir, version=3,
                                  overwrite=True)
    self.assertEqual(os.listdir(export_dir), ["3"])
    self.assertTrue(os.path.exists(marker))

  def test_exchange_swaps_directories(self):
    first, second = testing.new_dir(), testing.new_dir()
    _touch(os.path.join(first, "a"))
    _touch(os.path.join(second, "b"))
    if not export._exchange(first, second):
      self.skipTest("this file system cannot exchange paths")
    self.assertEqual(os.listdir(first), ["b"])
    self.assertEqual(os.listdir(second), ["a"])

  def test_failing_export_leaves_nothing(self):
    inputs = {name: keras.Input(shape=(None,), ragged=True, name=name,
                                dtype=tf.float32 if name in schema.WEIGHT_NAMES
                                else tf.int64)
              for name in schema.FIELD_NAMES + schema.WEIGHT_NAMES}
    pooled = keras.layers.Lambda(lambda x: tf.cast(
        tf.reduce_sum(x, axis=1), tf.float32))(inputs["101"])
    no_cvr = keras.Model(inputs, {"ctr": pooled, "ctcvr": pooled})
    export_dir = testing.new_dir()
    with self.assertRaises(KeyError):
      export.export_saved_model(no_cvr, export_dir)
    self.assertEqual(os.listdir(export_dir), [])

  def test_failure_after_a_partial_write_leaves_nothing(self):
    export_dir = testing.new_dir()
    _touch(os.path.join(export_dir, "1", "saved_model.pb"))

    def partial_save(_, path, **__):
      _touch(os.path.join(path, "variables", "variables.index"))
      raise OSError("disk full")

    with mock.patch.object(tf.saved_model, "save", side_effect=partial_save):
      with self.assertRaisesRegex(OSError, "disk full"):
        export.export_saved_model(self.model, export_dir)
    self.assertEqual(os.listdir(export_dir), ["1"])

  @parameterized.parameters(0, -1, True, "2")
  def test_bad_version(self, version):
    with self.assertRaisesRegex(ValueError, "positive integer"):
      export.export_saved_model(self.model, testing.new_dir(),
                                version=version)

  @parameterized.parameters("schema", "", "../config", ".hidden")
  def test_bad_asset_name(self, name):
    with self.assertRaisesRegex(ValueError, "extra_assets name"):
      export.export_saved_model(self.model, testing.new_dir(),
                                extra_assets={name: {}})

  def test_resolve_saved_model(self):
    base = testing.new_dir()
    with self.assertRaises(FileNotFoundError):
      export.resolve_saved_model(base)
    _touch(os.path.join(base, "2", "saved_model.pb"))
    os.makedirs(os.path.join(base, "7"))  # Incomplete: skipped.
    _touch(os.path.join(base, "99x", "saved_model.pb"))  # Not a version.
    self.assertEqual(export.resolve_saved_model(base),
                     os.path.join(base, "2"))
    self.assertEqual(export.resolve_saved_model(os.path.join(base, "2")),
                     os.path.join(base, "2"))


if __name__ == "__main__":
  tf.test.main()
