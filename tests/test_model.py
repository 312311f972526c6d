"""Tests of escm2_tf.model: outputs, training, gradients, saving."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import json
import math
import os
import shutil
import tempfile

from absl.testing import parameterized
import numpy as np
import tensorflow as tf
import tf_keras as keras

from escm2_tf import config as config_lib
from escm2_tf import losses
from escm2_tf import model as model_lib
from escm2_tf import optimizers
from escm2_tf import schema

_VOCAB_SIZE = 6
_VOCABULARIES = {field: 100 * (i + 1) + np.arange(_VOCAB_SIZE, dtype=np.int64)
                 for i, field in enumerate(schema.FIELD_NAMES)}
_TINY = dict(embedding_dim=4, num_experts=2, expert_units=(4,),
             bottom_units=(4,), tower_units=(3,))


def _batch(num_examples: int, seed: int):
  """Ragged raw ids (some unknown) and labels with a learnable click signal."""
  rng = np.random.default_rng(seed)
  features = {}
  for i, field in enumerate(schema.FIELD_NAMES):
    lengths = (rng.integers(0, 4, num_examples)
               if field in schema.MULTI_VALUED_FIELDS
               else np.ones(num_examples, np.int64))
    # One id in eight is outside the vocabulary.
    values = 100 * (i + 1) + rng.integers(0, _VOCAB_SIZE + 1,
                                          lengths.sum())
    features[field] = tf.RaggedTensor.from_row_lengths(
        tf.constant(values, tf.int64), tf.constant(lengths, tf.int64))
    if field in schema.WEIGHTED_FIELDS:
      features[schema.weight_name(field)] = tf.RaggedTensor.from_row_lengths(
          tf.constant(rng.random(lengths.sum()), tf.float32),
          tf.constant(lengths, tf.int64))
  item = features["205"].values.numpy() - features["205"].values.numpy().min()
  click = (rng.random(num_examples) < 0.15 + 0.12 * (item % 3)).astype(
      np.float32)
  conversion = click * (rng.random(num_examples) < 0.4)
  labels = {schema.CLICK: tf.constant(click),
            schema.CONVERSION: tf.constant(conversion, tf.float32)}
  return features, labels


def _dataset(num_examples=256, batch_size=64, seed=0):
  return tf.data.Dataset.from_tensor_slices(_batch(num_examples, seed)).batch(
      batch_size)


def _build(loss="dr", seed=0, **overrides):
  model_config = config_lib.ModelConfig(**{**_TINY, **overrides})
  return model_lib.build_model(model_config, config_lib.LossConfig(loss=loss),
                               _VOCABULARIES, seed=seed)


class OutputsTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.product(backbone=("mmoe", "shared_bottom", "dcn"),
                         loss=("esmm", "dr", "dr_jl"))
  def test_names_shapes_and_ranges(self, backbone, loss):
    model = _build(loss, backbone=backbone)
    features, _ = _batch(9, seed=1)
    outputs = model(features)
    expected = {"ctr", "cvr", "ctcvr"} | ({"imputation"} if loss != "esmm"
                                           else set())
    self.assertEqual(set(outputs), expected)
    for name, value in outputs.items():
      self.assertEqual(value.shape, (9,), name)
      self.assertEqual(value.dtype, tf.float32, name)
      self.assertTrue(np.all(np.isfinite(value)), name)
    for name in ("ctr", "cvr", "ctcvr"):
      self.assertTrue(np.all((outputs[name] > 0) & (outputs[name] < 1)))
    self.assertAllClose(outputs["ctcvr"], outputs["ctr"] * outputs["cvr"])
    if loss == "dr":
      self.assertTrue(np.all(outputs["imputation"] >= 0))
    if loss == "dr_jl":  # A pseudo-label.
      self.assertTrue(np.all((outputs["imputation"] > 0)
                             & (outputs["imputation"] < 1)))

  def test_weights_change_outputs_only_when_used(self):
    features, _ = _batch(8, seed=2)
    heavier = dict(features)
    heavier["110_14_w"] = features["110_14_w"] * 5.0
    plain, weighted = _build(), _build(use_weights=True)
    self.assertAllClose(plain(features)["ctr"], plain(heavier)["ctr"])
    self.assertNotAllClose(weighted(features)["ctr"], weighted(heavier)["ctr"])

  def test_extra_features_are_ignored_and_missing_ones_named(self):
    model = _build()
    features, _ = _batch(4, seed=3)
    with_id = {**features, schema.SAMPLE_ID: tf.constant(["a", "b", "c", "d"])}
    self.assertAllClose(model(features)["cvr"], model(with_id)["cvr"])
    del features["216"]
    with self.assertRaisesRegex(ValueError, "216"):
      model(features)

  def test_missing_vocabulary_is_named(self):
    vocabularies = dict(_VOCABULARIES)
    del vocabularies["702"]
    with self.assertRaisesRegex(ValueError, "702"):
      model_lib.build_model(config_lib.ModelConfig(**_TINY),
                            config_lib.LossConfig(), vocabularies)


class NetworkConfigTest(tf.test.TestCase):

  def test_network_config_rebuilds_the_network(self):
    model = _build("dr", use_weights=True, oov_buckets=2, dropout=0.1)
    features, _ = _batch(9, seed=10)
    config = model.network.get_config()
    rebuilt = keras.Model.from_config(json.loads(json.dumps(config)))
    rebuilt.set_weights(model.network.get_weights())
    expected, outputs = model(features), rebuilt(features)
    for name in expected:
      self.assertAllClose(outputs[name], expected[name], atol=0, rtol=0)


class FitTest(tf.test.TestCase, parameterized.TestCase):

  def test_fit_evaluate_predict_report_named_values(self):
    model = _build("dr", embedding_l2=1e-4)
    model.compile(optimizer=keras.optimizers.Adam(0.02), steps_per_execution=2)
    history = model.fit(_dataset(), epochs=3, verbose=0)
    names = {"loss", "ctr_loss", "cvr_loss", "ctcvr_loss", "ctr_ctcvr_loss",
             "imputation_loss", "regularization_loss", "auc_ctr", "auc_cvr",
             "auc_ctcvr"}
    self.assertEqual(set(history.history), names)
    for name, values in history.history.items():
      self.assertLen(values, 3)
      self.assertTrue(all(math.isfinite(v) for v in values), name)
    # The DR total may rise while the imputation risk, whose IPS weights grow
    # as pCTR separates, catches up; the factual risks must fall.
    for name in ("ctr_loss", "cvr_loss", "ctcvr_loss"):
      self.assertLess(history.history[name][-1], history.history[name][0],
                      name)
    self.assertAllClose(history.history["ctr_ctcvr_loss"],
                        np.add(history.history["ctr_loss"],
                               history.history["ctcvr_loss"]), rtol=1e-5)
    evaluation = model.evaluate(_dataset(seed=1), verbose=0, return_dict=True)
    self.assertEqual(set(evaluation), names)
    self.assertGreater(evaluation["loss"], 0.0)
    predictions = model.predict(_dataset(num_examples=70), verbose=0)
    self.assertEqual({k: v.shape for k, v in predictions.items()},
                     {k: (70,) for k in ("ctr", "cvr", "ctcvr", "imputation")})

  def test_evaluate_loss_matches_compute_losses(self):
    model = _build("ipw")
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    features, labels = _batch(64, seed=4)
    expected = losses.compute_losses(model.loss_config, labels,
                                     model(features))
    evaluation = model.evaluate(
        tf.data.Dataset.from_tensors((features, labels)), verbose=0,
        return_dict=True)
    for name in ("loss", "ctr_loss", "cvr_loss", "ctcvr_loss"):
      self.assertAllClose(evaluation[name], expected[name], rtol=1e-5)

  def test_equal_seeds_train_to_equal_weights(self):
    runs = []
    for _ in range(2):
      model = _build("ipw", seed=5, dropout=0.2)
      model.compile(optimizer=keras.optimizers.Adam(0.01))
      history = model.fit(_dataset(seed=2), epochs=2, verbose=0)
      runs.append((model.get_weights(), history.history))
    for first, second in zip(runs[0][0], runs[1][0]):
      self.assertAllEqual(first, second)
    self.assertEqual(runs[0][1], runs[1][1])
    other = _build("ipw", seed=6)
    self.assertNotAllClose(runs[0][0][0], other.get_weights()[0])

  def test_every_trace_sums_the_total_in_one_order(self):
    # Grappler reordered a chain of adds differently from one trace of the
    # training step to the next (36 of 39 fresh models summed unlike the
    # first), so equal runs logged totals one float32 step apart.
    f32 = np.float32
    for seed in range(4):
      model = _build("dr", seed=seed, embedding_l2=1e-4)
      model.compile(optimizer=keras.optimizers.Adam(0.01))
      config = model.loss_config
      for features, labels in _dataset(seed=2):
        logged = model.train_on_batch(features, labels, return_dict=True)
        terms = [logged["ctr_loss"], f32(config.lambda_c) * logged["cvr_loss"],
                 f32(config.lambda_g) * logged["ctcvr_loss"],
                 f32(config.lambda_imp) * logged["imputation_loss"],
                 logged["regularization_loss"]]
        expected = f32(0.0)
        for term in terms:
          expected = f32(expected + f32(term))
        self.assertEqual(f32(logged["loss"]), expected, f"seed {seed}")

  @parameterized.parameters("adam", "sparse_adam")
  def test_the_training_function_is_traced_once(self, optimizer):
    # Variables created inside the first step would make tf.function trace
    # the whole step twice; compile creates the optimizer's beforehand.
    model = _build("dr")
    model.compile(optimizer=optimizers.make_optimizer(optimizer, 0.01),
                  steps_per_execution=2)
    self.assertNotEmpty(model.optimizer.variables)
    model.fit(_dataset(), epochs=2, verbose=0)
    self.assertEqual(model.train_function.experimental_get_tracing_count(), 1)

  def test_refuses_xla_foreign_losses_and_sample_weights(self):
    model = _build()
    with self.assertRaisesRegex(ValueError, "jit_compile"):
      model.compile(optimizer="adam", jit_compile=True)
    with self.assertRaisesRegex(ValueError, "no loss"):
      model.compile(optimizer="adam", loss="mse")
    with self.assertRaisesRegex(ValueError, "no loss or metrics"):
      model.compile(optimizer="adam", metrics=["auc"])
    model.compile(optimizer="adam")
    features, labels = _batch(8, seed=5)
    weighted = tf.data.Dataset.from_tensors(
        (features, labels, tf.ones([8])))
    with self.assertRaisesRegex(ValueError, "sample weights"):
      model.fit(weighted, verbose=0)


class GradientTest(tf.test.TestCase, parameterized.TestCase):
  """The loss's gradient contract, seen on the towers' variables.

  The towers are stacked [task, in, out]; slice t belongs to task t only
  (0: CTR, 1: CVR, 2: imputation).
  """

  def _tower_gradients(self, model, select):
    features, labels = _batch(128, seed=7)
    towers = model.network.get_layer("towers")
    with tf.GradientTape(persistent=True) as tape:
      values = losses.compute_losses(model.loss_config, labels,
                                     model(features, training=True))
      targets = select(values)
    gradients = {name: tape.gradient(target, towers.kernels + towers.biases)
                 for name, target in targets.items()}
    self.assertGreater(float(tf.reduce_sum(labels[schema.CLICK])), 0.0)
    return gradients

  @parameterized.parameters("dr", "dr_jl", "mrdr")
  def test_imputation_tower_is_moved_by_r_imp_only(self, loss):
    model = _build(loss)
    lambda_imp = model.loss_config.lambda_imp
    gradients = self._tower_gradients(model, lambda v: {
        "total": v["loss"], "imp": lambda_imp * v["imputation_loss"]})
    for total, imp in zip(gradients["total"], gradients["imp"]):
      self.assertAllClose(total[2], imp[2], atol=1e-7)
      self.assertGreater(float(tf.reduce_sum(tf.abs(imp[2]))), 0.0)
      # R_imp, in turn, does not move the CVR tower.
      self.assertAllEqual(imp[1], tf.zeros_like(imp[1]))

  def test_stop_ips_gradient_cuts_the_ips_path_into_ctr(self):
    for stop in (True, False):
      model = model_lib.build_model(
          config_lib.ModelConfig(**_TINY),
          config_lib.LossConfig(loss="ipw", stop_ips_gradient=stop),
          _VOCABULARIES, seed=0)
      lambda_g = model.loss_config.lambda_g
      gradients = self._tower_gradients(model, lambda v: {
          "total": v["loss"],
          "factual": v["ctr_loss"] + lambda_g * v["ctcvr_loss"]})
      ctr_slices = [(t[0], f[0]) for t, f in zip(gradients["total"],
                                                 gradients["factual"])]
      if stop:
        for total, factual in ctr_slices:
          self.assertAllClose(total, factual, atol=1e-7)
      else:
        self.assertNotAllClose(ctr_slices[0][0], ctr_slices[0][1])


class SavingTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.dir)

  def test_saved_model_round_trip(self):
    model = _build("dr", use_weights=True, oov_buckets=2)
    model.compile(optimizer="adam")
    model.fit(_dataset(num_examples=64), verbose=0)
    features, _ = _batch(11, seed=8)
    expected = model(features)
    path = os.path.join(self.dir, "saved")
    tf.saved_model.save(model, path)
    restored = tf.saved_model.load(path)
    outputs = restored(features, training=False)
    self.assertEqual(set(outputs), set(expected))
    for name in expected:
      self.assertAllClose(outputs[name], expected[name], atol=1e-6)

  def test_checkpoint_restores_into_a_fresh_model(self):
    model = _build("ipw", seed=1)
    features, _ = _batch(6, seed=9)
    expected = model(features)["cvr"]
    path = tf.train.Checkpoint(model=model).save(os.path.join(self.dir, "ck"))
    fresh = _build("ipw", seed=2)
    self.assertNotAllClose(fresh(features)["cvr"], expected)
    status = tf.train.Checkpoint(model=fresh).restore(path)
    status.assert_existing_objects_matched()
    self.assertAllClose(fresh(features)["cvr"], expected)


if __name__ == "__main__":
  tf.test.main()
