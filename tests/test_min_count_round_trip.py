"""``min_count`` above 1 from training to serving: train, export, predict.

With ``min_count=5`` on a small training set many ids are rare: they share
their field's OOV rows during training, and at serving time so do those
rare ids and the test ids never seen in training. This runs the trainer as
``configs/bigdata.flags`` does (``min_count=5``, several OOV rows per field),
exports, scores the test records with ``escm2-predict`` and checks that the
OOV rows were trained and are what the OOV ids are scored with.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import csv
import os

import numpy as np
import tensorflow as tf

import datasets
import testing
from escm2_tf import config as config_lib
from escm2_tf import data
from escm2_tf import evaluation
from escm2_tf import model as model_lib
from escm2_tf import run_dir
from escm2_tf import schema
from escm2_tf import training
from escm2_tf import vocab
from escm2_tf.cli import predict

MIN_COUNT = 5
OOV_BUCKETS = 4
MODEL = testing.tiny_model_config(oov_buckets=OOV_BUCKETS)
LOSS = config_lib.LossConfig(loss="dr")
# The run's seed, which also seeds the initial weights.
SEED = 3



def _oov_rows(vocabularies: dict[str, np.ndarray]) -> np.ndarray:
  """The OOV rows of the shared table: the last rows of every field's block."""
  sizes = [len(vocabularies[f]) + OOV_BUCKETS for f in schema.FIELD_NAMES]
  ends = np.cumsum(sizes)
  return np.concatenate([np.arange(end - OOV_BUCKETS, end) for end in ends])


def _test_ids(pattern: str) -> dict[str, np.ndarray]:
  spec = schema.feature_spec(with_weights=False)
  ids = {field: [] for field in schema.FIELD_NAMES}
  for batch in tf.data.TFRecordDataset(
      data.list_files(pattern), compression_type="GZIP").batch(512):
    parsed = tf.io.parse_example(batch, spec)
    for field in schema.FIELD_NAMES:
      ids[field].append(parsed[field].flat_values.numpy())
  return {field: np.concatenate(values) for field, values in ids.items()}


class MinCountRoundTripTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    root = testing.new_dir()
    cls.paths = datasets.make_synthetic_data(
        os.path.join(root, "data"), num_train=3000, num_test=1000, seed=5)
    cls.model_dir = os.path.join(root, "model")
    config = testing.tiny_config(
        cls.paths, cls.model_dir, model=MODEL, loss=LOSS.loss,
        export_dir=os.path.join(root, "export"), min_count=MIN_COUNT,
        seed=SEED)
    cls.result = training.train(config, verbose=0)
    cls.vocabularies = vocab.load_vocabularies(cls.paths["vocab_dir"],
                                               MIN_COUNT)
    cls.full_vocabularies = vocab.load_vocabularies(cls.paths["vocab_dir"])

  def _trained_model(self):
    model = model_lib.build_model(MODEL, LOSS, self.vocabularies)
    model.load_weights(os.path.join(
        self.model_dir, run_dir.CHECKPOINT_DIR,
        run_dir.FINAL_CHECKPOINT)).expect_partial()
    return model

  def test_min_count_drops_ids(self):
    kept = sum(len(v) for v in self.vocabularies.values())
    seen = sum(len(v) for v in self.full_vocabularies.values())
    self.assertLess(kept, seen // 2)

  def test_test_data_holds_rare_and_unseen_ids(self):
    ids = _test_ids(self.paths["test"])
    rare = unseen = 0
    for field in schema.FIELD_NAMES:
      in_kept = np.isin(ids[field], self.vocabularies[field])
      in_full = np.isin(ids[field], self.full_vocabularies[field])
      rare += int((in_full & ~in_kept).sum())
      unseen += int((~in_full).sum())
    self.assertGreater(rare, 0)
    self.assertGreater(unseen, 0)

  def test_oov_rows_of_rare_training_ids_were_trained(self):
    initial = model_lib.build_model(MODEL, LOSS, self.vocabularies,
                                    seed=SEED)
    batch = next(iter(data.make_dataset(self.paths["test"], 2,
                                        training=False)))[0]
    initial(batch)
    trained = self._trained_model()
    trained(batch)
    before = initial.network.get_layer("embedding").embeddings.numpy()
    after = trained.network.get_layer("embedding").embeddings.numpy()
    rows = _oov_rows(self.vocabularies).reshape(-1, OOV_BUCKETS)
    # An OOV row gets gradients only from the rare ids of its bucket.
    expected = np.zeros(rows.shape, bool)
    for index, field in enumerate(schema.FIELD_NAMES):
      rare = np.setdiff1d(self.full_vocabularies[field],
                          self.vocabularies[field])
      expected[index, np.unique(rare % OOV_BUCKETS)] = True
    moved = np.any(np.abs(after[rows] - before[rows]) > 1e-6, axis=2)
    self.assertGreater(expected.sum(), OOV_BUCKETS)
    self.assertFalse(np.any(moved & ~expected))
    # Every bucket of rare ids moved, bar those whose ids a validation
    # slice may have held out of training.
    self.assertGreaterEqual(moved.sum(), 0.8 * expected.sum())

  def test_predict_scores_the_export_like_the_trained_model(self):
    output = os.path.join(self.get_temp_dir(), "scores.csv")
    status, _, stderr = testing.run_main(
        predict.TOOL, saved_model=self.result["export_path"],
        data=self.paths["test"], output=output, input_format="tfrecord",
        common_features="", batch_size=128, max_values_per_field=50)
    self.assertEqual(status, 0, stderr)
    with open(output) as f:
      rows = list(csv.DictReader(f))
    scores = np.array([[float(row[name]) for name in ("ctr", "cvr", "ctcvr")]
                       for row in rows])
    expected = evaluation.predict_keras_model(self._trained_model(),
                                              self.paths["test"], 256)
    # One row per test record (the converter drops a few of the 1000).
    self.assertEqual(len(rows), len(expected["ctr"]))
    self.assertGreater(len(rows), 900)
    self.assertTrue(np.all(np.isfinite(scores)))
    self.assertAllInRange(scores, 0.0, 1.0)
    self.assertEqual([row["sample_id"] for row in rows],
                     [s.decode() if isinstance(s, bytes) else str(s)
                      for s in expected["sample_id"]])
    self.assertAllClose(scores[:, 0], expected["ctr"], atol=1e-5, rtol=0)
    self.assertAllClose(scores[:, 2], expected["ctcvr"], atol=1e-5, rtol=0)

  def test_oov_rows_score_the_oov_ids(self):
    model = self._trained_model()
    features, _ = next(iter(data.make_dataset(self.paths["test"], 1000,
                                              training=False)))
    scores = model(features, training=False)["ctr"].numpy()
    embedding = model.network.get_layer("embedding")
    rows = _oov_rows(self.vocabularies)
    values = embedding.embeddings.numpy()
    # Far from any trained value, so that a ReLU that happened to be off for
    # a record is unlikely to hide the change.
    values[rows] = np.random.default_rng(0).normal(
        0.0, 1.0, size=values[rows].shape)
    embedding.embeddings.assign(values)
    changed = np.abs(model(features, training=False)["ctr"].numpy()
                     - scores) > 1e-7
    has_oov = np.zeros(len(scores), bool)
    for field in schema.FIELD_NAMES:
      ragged = features[field]
      outside = ~np.isin(ragged.flat_values.numpy(), self.vocabularies[field])
      has_oov |= tf.reduce_any(ragged.with_flat_values(outside),
                               axis=1).numpy()
    self.assertGreater(has_oov.sum(), 0)
    # Records without an OOV id do not change; those with one do.
    self.assertFalse(np.any(changed & ~has_oov))
    self.assertGreaterEqual(changed[has_oov].mean(), 0.95)


if __name__ == "__main__":
  tf.test.main()
