"""Tests of escm2_tf.base_rates and the output biases it starts."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import json
import math
import os
import tempfile

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from escm2_tf import base_rates
from escm2_tf import config as config_lib
from escm2_tf import layout
from escm2_tf import model as model_lib
from escm2_tf import schema

_VOCABULARIES = {field: 100 * (i + 1) + np.arange(6, dtype=np.int64)
                 for i, field in enumerate(schema.FIELD_NAMES)}
_TINY = config_lib.ModelConfig(embedding_dim=4, num_experts=2,
                               expert_units=(4,), tower_units=(3,))
RATES = base_rates.BaseRates(ctr=0.04, cvr=0.05)


def _features(num_examples: int = 512) -> dict[str, tf.RaggedTensor]:
  rng = np.random.default_rng(0)
  return {field: tf.RaggedTensor.from_row_lengths(
      100 * (i + 1) + rng.integers(0, 6, num_examples),
      np.ones(num_examples, np.int64))
          for i, field in enumerate(schema.FIELD_NAMES)}


def _output_biases(model) -> np.ndarray:
  towers = model.network.get_layer("towers")
  return towers.biases[-1].numpy()[:, 0]


class BaseRatesTest(tf.test.TestCase, parameterized.TestCase):

  def test_from_counts(self):
    rates = base_rates.BaseRates.from_counts(1000, 40, 2)
    self.assertEqual((rates.ctr, rates.cvr), (0.04, 0.05))

  def test_zero_conversions_keep_a_finite_logit(self):
    rates = base_rates.BaseRates.from_counts(1000, 40, 0)
    self.assertEqual(rates.cvr, 1e-6)
    self.assertTrue(all(map(math.isfinite, rates.output_biases(
        ("ctr", "cvr", "imputation")))))

  @parameterized.parameters((0, 0, 0), (100, 0, 0))
  def test_no_clicks_is_an_error(self, impressions, clicks, conversions):
    with self.assertRaisesRegex(ValueError, "need impressions and clicks"):
      base_rates.BaseRates.from_counts(impressions, clicks, conversions)

  @parameterized.parameters(("ctr", 0.0), ("cvr", 1.0), ("ctr", True))
  def test_rates_must_be_probabilities(self, name, value):
    with self.assertRaisesRegex(ValueError, f"BaseRates.{name}"):
      base_rates.BaseRates(**{"ctr": 0.1, "cvr": 0.1, name: value})

  def test_output_biases_are_the_rates_log_odds(self):
    ctr, cvr, imputation = RATES.output_biases(("ctr", "cvr", "imputation"))
    self.assertAllClose(1 / (1 + np.exp(-ctr)), RATES.ctr)
    self.assertAllClose(1 / (1 + np.exp(-cvr)), RATES.cvr)
    # The imputation tower (a softplus) starts at the mean cross-entropy of
    # a constant prediction at the CVR rate.
    entropy = -(0.05 * np.log(0.05) + 0.95 * np.log(0.95))
    self.assertAllClose(np.log1p(np.exp(imputation)), entropy)

  def test_reads_the_converters_stats(self):
    path = os.path.join(tempfile.mkdtemp(dir=self.get_temp_dir()),
                        layout.STATS_FILE)
    with open(path, "w") as f:
      json.dump({"rows_written": 2000, "clicks": 80, "conversions": 4,
                 "rows_read": 2001}, f)
    self.assertEqual(base_rates.read_base_rates(path), RATES)

  @parameterized.named_parameters(
      ("missing", None, "not found"),
      ("not_json", "{", "no usable"),
      ("no_counts", '{"rows_written": 5}', "no usable"),
      ("no_clicks", '{"rows_written": 5, "clicks": 0, "conversions": 0}',
       "no usable"))
  def test_bad_stats_name_the_file(self, content, message):
    path = os.path.join(tempfile.mkdtemp(dir=self.get_temp_dir()),
                        layout.STATS_FILE)
    if content is not None:
      with open(path, "w") as f:
        f.write(content)
    with self.assertRaisesRegex(base_rates.StatsError,
                                f"{path}.*{message}|{path} {message}"):
      base_rates.read_base_rates(path)


class ModelStartTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters("naive", "esmm", "ipw", "dr", "dr_jl", "mrdr")
  def test_model_starts_at_the_base_rates(self, loss):
    loss_config = config_lib.LossConfig(loss=loss)
    model = model_lib.build_model(_TINY, loss_config, _VOCABULARIES,
                                  base_rates=RATES, seed=0)
    outputs = model(_features())
    tasks = model.task.tower_names
    self.assertAllClose(_output_biases(model), RATES.output_biases(tasks))
    # The hidden layers add a little spread around the biases.
    self.assertAllClose(np.mean(outputs["ctr"]), RATES.ctr, rtol=0.2)
    self.assertAllClose(np.mean(outputs["cvr"]), RATES.cvr, rtol=0.2)
    self.assertAllClose(np.mean(outputs["ctcvr"]), RATES.ctr * RATES.cvr,
                        rtol=0.3)

  def test_without_base_rates_the_biases_start_at_zero(self):
    model = model_lib.build_model(_TINY, config_lib.LossConfig(loss="dr"),
                                  _VOCABULARIES, seed=0)
    model(_features(8))
    self.assertAllEqual(_output_biases(model), np.zeros(3))
    self.assertAllClose(np.mean(model(_features())["ctr"]), 0.5, atol=0.1)


if __name__ == "__main__":
  tf.test.main()
