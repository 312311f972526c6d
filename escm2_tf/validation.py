"""The trainer's up-front checks: everything a run needs, before it starts.

A training run that fails after an hour because its vocabulary came from other
data, or its ground truth misses a row, wastes the hour. ``check_inputs``
reads a little of every input first and fails with a ``ConfigError`` naming
the ``ExperimentConfig`` field (the CLI flag of the same name) at fault.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import json
import os
from typing import Any, Mapping

import numpy as np
import tensorflow as tf
import tf_keras as keras

from escm2_tf import base_rates as base_rates_lib
from escm2_tf import config as config_lib
from escm2_tf import data
from escm2_tf import evaluation
from escm2_tf import fit_policy
from escm2_tf import ground_truth as ground_truth_lib
from escm2_tf import layout
from escm2_tf import schema
from escm2_tf import vocab
from escm2_tf.options import ConfigError


def _check_files(config: config_lib.ExperimentConfig) -> None:
  for name in ("train_data", "eval_data"):
    try:
      evaluation.check_readable(getattr(config.data, name))
    except FileNotFoundError:
      raise ConfigError(name, f"no files match {getattr(config.data, name)!r}"
                        ) from None
    except ValueError as e:
      raise ConfigError(name, str(e)) from None
  ground_truth = config.data.ground_truth
  if ground_truth and not tf.io.gfile.exists(ground_truth):
    raise ConfigError("ground_truth", f"{ground_truth} not found")
  for name in ("model_dir", "export_dir"):
    path = getattr(config.trainer, name)
    if path and tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
      raise ConfigError(name, f"{path} exists and is not a directory")


def _real_path(path: str) -> str:
  """A local path made absolute and free of links; URLs as they are."""
  return path if "://" in path else os.path.realpath(path)


def _check_validation_data(config: config_lib.ExperimentConfig) -> None:
  """Validation files exist and are neither trained on nor evaluated on."""
  if not config.data.validation_data:
    return
  try:
    evaluation.check_readable(config.data.validation_data)
  except FileNotFoundError:
    raise ConfigError("validation_data", "no files match "
                      f"{config.data.validation_data!r}") from None
  except ValueError as e:
    raise ConfigError("validation_data", str(e)) from None
  files = {_real_path(f) for f in data.list_files(config.data.validation_data)}
  for name in ("train_data", "eval_data"):
    shared = files & {_real_path(f)
                      for f in data.list_files(getattr(config.data, name))}
    if shared:
      raise ConfigError(
          "validation_data", f"{config.data.validation_data!r} shares "
          f"{len(shared)} file(s) with {name}, e.g. {min(shared)}: the "
          "validation data must be held out from both")


def read_base_rates(config: config_lib.ExperimentConfig
                    ) -> base_rates_lib.BaseRates | None:
  """The training data's base rates; None when nothing uses them.

  The output biases start at them (``base_rate_init``) and are recalibrated
  to them after training (``recalibrate``).

  Raises:
    ConfigError: ``stats_file`` (or the ``stats.json`` beside ``vocab_dir``)
      is missing or holds no counts.
  """
  if not (config.trainer.base_rate_init or config.trainer.recalibrate):
    return None
  try:
    return fit_policy.base_rates(config.data.vocab_dir,
                                 config.data.stats_file)
  except base_rates_lib.StatsError as e:
    raise ConfigError(
        "stats_file", f"{e}; set --stats_file to the converter's stats.json "
        "of --train_data, or --nobase_rate_init --norecalibrate to start the "
        "output biases at 0 and leave them as trained") from None


def _load_full_vocabularies(vocab_dir: str) -> dict[str, np.ndarray]:
  """Every id of every field's vocabulary (min_count 1)."""
  if not tf.io.gfile.isdir(vocab_dir):
    raise ConfigError("vocab_dir", f"directory {vocab_dir} not found")
  missing = [field for field in schema.FIELD_NAMES if not tf.io.gfile.exists(
      layout.vocabulary_file(vocab_dir, field))]
  if missing:
    raise ConfigError("vocab_dir", f"{vocab_dir} has no vocabulary file for "
                      f"field(s) {', '.join(missing)}")
  try:
    return vocab.load_vocabularies(vocab_dir, 1)
  except vocab.VocabularyError as e:
    raise ConfigError("vocab_dir", str(e)) from None


def _sample_ids(file_pattern: str, num_examples: int) -> dict[str, np.ndarray]:
  """Each field's ids over the first examples of the data."""
  spec = schema.feature_spec(with_labels=False, with_weights=False)
  dataset = tf.data.TFRecordDataset(data.list_files(file_pattern),
                                    compression_type="GZIP")
  try:
    serialized = next(iter(dataset.take(num_examples).batch(num_examples)))
    parsed = tf.io.parse_example(serialized, spec)
  except (tf.errors.OpError, StopIteration) as e:
    raise ConfigError("train_data", "cannot read tf.Examples from "
                      f"{file_pattern!r}: {str(e).splitlines()[0]}") from None
  return {field: parsed[field].flat_values.numpy()
          for field in schema.FIELD_NAMES}


def check_vocabulary(config: config_lib.ExperimentConfig,
                     vocabularies: Mapping[str, np.ndarray]) -> None:
  """Fails when many ids of the training data are not in the vocabulary.

  A vocabulary built from the training data holds every id of it, so even a
  few unknown ids are suspicious; most of a field's ids unknown means the
  vocabulary came from other data (or another id space, e.g. PaddleRec's).
  """
  if not config.data.vocab_check_examples:
    return
  worst_field, worst = "", 0.0
  for field, ids in _sample_ids(config.data.train_data,
                                config.data.vocab_check_examples).items():
    if ids.size:
      unknown = 1.0 - np.isin(ids, vocabularies[field]).mean()
      if unknown > worst:
        worst_field, worst = field, unknown
  if worst > config.data.max_unknown_id_fraction:
    raise ConfigError(
        "vocab_dir", f"{worst:.0%} of the ids of field {worst_field} in the "
        f"first {config.data.vocab_check_examples} examples of train_data are "
        f"not in {config.data.vocab_dir} (at most "
        f"{config.data.max_unknown_id_fraction:.0%} allowed): the vocabulary "
        "does "
        "not belong to this data")


def _check_ground_truth(config: config_lib.ExperimentConfig) -> None:
  try:
    ground_truth_lib.align_ground_truth(
        ground_truth_lib.read_ground_truth(config.data.ground_truth),
        evaluation.read_labels(config.data.eval_data),
        config.data.ground_truth, config.data.eval_data)
  except ground_truth_lib.GroundTruthError as e:
    raise ConfigError("ground_truth", str(e)) from None


def _check_resume(config: config_lib.ExperimentConfig, stored_config: str,
                  backup_dir: str) -> None:
  """A backup can only be resumed by the same model, loss and seed."""
  # BackupAndRestore leaves its directory, emptied, after a finished run.
  if not (tf.io.gfile.exists(stored_config) and tf.io.gfile.isdir(backup_dir)
          and tf.io.gfile.listdir(backup_dir)):
    return
  with tf.io.gfile.GFile(stored_config) as f:
    stored = json.load(f)
  current = config.to_dict()
  for part, key in (("model", None), ("loss", None), ("runtime", "seed")):
    stored_part, current_part = stored.get(part), current[part]
    if key and isinstance(stored_part, dict):
      stored_part, current_part = stored_part.get(key), current_part[key]
    if stored_part != current_part:
      raise ConfigError(
          "model_dir", f"{config.trainer.model_dir} holds the backup of an "
          f"unfinished run with another {key or part} configuration; resume "
          "it with the same flags, or use a new --model_dir")


def check_inputs(config: config_lib.ExperimentConfig, *, stored_config: str,
                 backup_dir: str
                 ) -> dict[str, np.ndarray]:
  """Checks everything a run needs, cheaply, before it starts.

  Args:
    config: The run.
    stored_config: Where an earlier run in ``model_dir`` left its configs.
    backup_dir: Where an unfinished earlier run left its backup.

  Returns:
    The full vocabularies (min_count 1), read for the check.

  Raises:
    ConfigError: The first problem found, naming the field.
  """
  _check_files(config)
  _check_validation_data(config)
  vocabularies = _load_full_vocabularies(config.data.vocab_dir)
  check_vocabulary(config, vocabularies)
  read_base_rates(config)
  if config.data.ground_truth:
    _check_ground_truth(config)
  _check_resume(config, stored_config, backup_dir)
  return vocabularies


def check_loss(loss_config: Any, propensity_labels: str = "") -> None:
  """The trainer's data carry no known propensity to weigh clicks by.

  Only a caller with the training data's ground truth (``propensity_labels``,
  the study's) may train with ``propensity="label"``.
  """
  if loss_config.propensity != "model" and not propensity_labels:
    raise ConfigError(
        "propensity", f"{loss_config.propensity!r} reads a p_click label, "
        "which the converter's TFRecords do not carry; escm2-train weighs "
        "clicks by the CTR tower's pCTR ('model')")


def check_batch_size(batch_size: int, num_replicas: int) -> None:
  """Every replica of a synchronous strategy needs an equal share."""
  if batch_size % num_replicas:
    raise ConfigError("batch_size", f"{batch_size} does not split evenly "
                      f"over the strategy's {num_replicas} replicas; use a "
                      f"multiple of {num_replicas}")


def check_monitor(config: config_lib.ExperimentConfig,
                  model: keras.Model) -> None:
  """Early stopping must watch a quantity the built model reports."""
  names = [f"val_{metric.name}" for metric in model.metrics]
  if config.trainer.early_stopping_monitor not in names:
    raise ConfigError("early_stopping_monitor", f"this model reports "
                      f"{', '.join(names)}, not "
                      f"{config.trainer.early_stopping_monitor!r}")
