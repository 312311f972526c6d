"""Tests of escm2_tf.task: names, values against numpy, metrics."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import json

from absl.testing import parameterized
import numpy as np
import tensorflow as tf
import tf_keras as keras

import test_losses
from escm2_tf import config as config_lib
from escm2_tf import losses
from escm2_tf import schema
from escm2_tf import streaming_auc
from escm2_tf import task as task_lib

REGULARIZATION = task_lib.REGULARIZATION_LOSS


def _modes():
  return test_losses._all_modes()  # pylint: disable=protected-access


def _inputs(config):
  """A batch's labels and outputs; a pseudo-label for the joint learners."""
  if config.loss in config_lib.JOINT_LEARNING_LOSSES:
    return test_losses.tf_inputs(imputation=test_losses.PSEUDO_LABEL)
  return test_losses.tf_inputs()


def _reference(config):
  """NOTES.md's risks in numpy (tests/test_losses.py's transcription)."""
  labels, outputs = _inputs(config)
  return test_losses.reference_losses(
      config, *(labels[n].numpy() for n in schema.LABELS),
      *(outputs[n].numpy() for n in (schema.CTR, schema.CVR,
                                     schema.IMPUTATION)))


class NamesTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(_modes())
  def test_names_are_the_keys_of_the_values(self, loss, compat):
    config = config_lib.LossConfig(loss=loss, compat=compat)
    for regularized in (False, True):
      task = task_lib.ESCM2Task(config, regularized=regularized)
      labels, outputs = _inputs(config)
      values = task(labels, outputs, [tf.constant(0.25)])
      self.assertCountEqual(values, task.loss_names)
      self.assertEqual([m.name for m in task.metrics],
                       list(task.loss_names) +
                       ["auc_ctr", "auc_cvr", "auc_ctcvr"])
      self.assertEqual(REGULARIZATION in task.loss_names, regularized)
      # The pure risks are exactly the ones the task names.
      risks = losses.compute_losses(config, labels, outputs)
      self.assertCountEqual(risks, ("loss",) + task_lib.risk_names(config))

  def test_history_order_and_imputation(self):
    dr = task_lib.ESCM2Task(config_lib.LossConfig(loss="dr"),
                            regularized=True)
    self.assertEqual(dr.loss_names, (
        "loss", "ctr_loss", "cvr_loss", "ctcvr_loss", "ctr_ctcvr_loss",
        "imputation_loss", "regularization_loss"))
    self.assertEqual(dr.tower_names, ("ctr", "cvr", "imputation"))
    self.assertEqual(dr.output_names, ("ctr", "cvr", "ctcvr", "imputation"))
    ipw = task_lib.ESCM2Task(config_lib.LossConfig(loss="ipw"))
    self.assertEqual(ipw.loss_names, (
        "loss", "ctr_loss", "cvr_loss", "ctcvr_loss", "ctr_ctcvr_loss"))
    self.assertEqual(ipw.tower_names, ("ctr", "cvr"))
    self.assertEqual(ipw.output_names, schema.OUTPUT_NAMES)
    mrdr = task_lib.ESCM2Task(config_lib.LossConfig(loss="mrdr"))
    self.assertEqual(mrdr.tower_names, ("ctr", "cvr", "pseudo_label"))
    self.assertEqual(mrdr.output_names, dr.output_names)
    self.assertIn("imputation_loss", mrdr.loss_names)


class ValuesTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(_modes())
  def test_values_match_numpy(self, loss, compat):
    config = config_lib.LossConfig(loss=loss, compat=compat)
    expected = _reference(config)
    labels, outputs = _inputs(config)
    penalties = [tf.constant(0.125), tf.constant(0.5)]
    plain = task_lib.ESCM2Task(config).compute_losses(labels, outputs)
    regularized = task_lib.ESCM2Task(config, regularized=True).compute_losses(
        labels, outputs, penalties)
    observed = expected["ctr_loss"] + expected["ctcvr_loss"]
    for values in (plain, regularized):
      for name, value in expected.items():
        if name != "loss":
          self.assertAllClose(values[name], value, rtol=1e-5, atol=1e-6)
      self.assertAllClose(values["ctr_ctcvr_loss"], observed, rtol=1e-5)
    self.assertAllClose(plain["loss"], expected["loss"], rtol=1e-5, atol=1e-6)
    self.assertAllClose(regularized["regularization_loss"], 0.625)
    self.assertAllClose(regularized["loss"], expected["loss"] + 0.625,
                        rtol=1e-5, atol=1e-6)


class MetricsTest(tf.test.TestCase):

  def test_call_records_means_and_aucs(self):
    task = task_lib.ESCM2Task(config_lib.LossConfig(loss="ipw"))
    labels, outputs = test_losses.tf_inputs()
    first = task(labels, outputs)
    halved = {name: value * 0.5 for name, value in outputs.items()}
    second = task(labels, halved)
    results = {m.name: float(m.result()) for m in task.metrics}
    for name in task.loss_names:
      self.assertAllClose(results[name], (first[name] + second[name]) / 2,
                          rtol=1e-6)
    for name in schema.OUTPUT_NAMES:
      auc = streaming_auc.TaskAUC(name)
      auc.update_state(labels, outputs)
      auc.update_state(labels, halved)
      self.assertEqual(results[f"auc_{name}"], float(auc.result()))
      self.assertGreater(results[f"auc_{name}"], 0.0)

  def test_without_metrics_nothing_is_recorded(self):
    task = task_lib.ESCM2Task(config_lib.LossConfig())
    labels, outputs = test_losses.tf_inputs()
    values = task(labels, outputs, compute_metrics=False)
    self.assertGreater(float(values["loss"]), 0.0)
    for metric in task.metrics:
      self.assertEqual(float(metric.result()), 0.0, metric.name)

  def test_config_round_trip(self):
    config = config_lib.LossConfig(loss="dr", lambda_c=0.3, max_ips_weight=8.0)
    task = task_lib.ESCM2Task(config, regularized=True, name="t")
    rebuilt = keras.layers.deserialize(json.loads(json.dumps(
        keras.layers.serialize(task))))
    self.assertIsInstance(rebuilt, task_lib.ESCM2Task)
    self.assertEqual(rebuilt.loss_config, config)
    self.assertTrue(rebuilt.regularized)
    self.assertEqual(rebuilt.get_config(), task.get_config())


if __name__ == "__main__":
  tf.test.main()
