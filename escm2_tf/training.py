"""Training: ``TrainConfig`` and ``train``, the library behind ``escm2-train``.

``train`` checks its inputs before doing any work, then fits the model with the
callbacks a long run needs: a progress bar, TensorBoard logs, a checkpoint per
epoch, a backup that a killed run resumes from, and a stop on a NaN loss. It
ends with the exact metrics of the final model on the evaluation data and,
optionally, a SavedModel.

``model_dir`` layout (``docs/DESIGN.md``): ``config.json`` (the three configs,
for ``escm2-export`` to rebuild the model), ``checkpoints/`` (Keras weights,
``epoch-NNN`` per epoch, then ``final``, which the checkpoint state names as
the latest), ``backup/`` (``BackupAndRestore``; removed when a run completes),
``logs/`` (TensorBoard) and ``metrics.json``.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import dataclasses
import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from escm2_tf import config as config_lib
from escm2_tf import data
from escm2_tf import evaluation
from escm2_tf import export
from escm2_tf import losses
from escm2_tf import model as model_lib
from escm2_tf import schema
from escm2_tf import vocab

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"
BACKUP_DIR = "backup"
LOG_DIR = "logs"
FINAL_CHECKPOINT = "final"


class ConfigError(ValueError):
  """A training input that is invalid, missing, or does not fit the others.

  Attributes:
    field: The ``TrainConfig`` field at fault (also the CLI flag's name).
    detail: What is wrong with it.
  """

  def __init__(self, field: str, detail: str):
    super().__init__(f"{field}: {detail}")
    self.field = field
    self.detail = detail


class TrainingDivergedError(RuntimeError):
  """The loss became NaN or infinite; training stopped."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """What to train on, where to write, and how long.

  Attributes:
    train_data: Glob of the training TFRecords (the converter's output).
    eval_data: Glob of the TFRecords validated on after every epoch and
      scored for ``metrics.json``.
    vocab_dir: The converter's ``vocab/`` directory of the training data.
    model_dir: Where checkpoints, the backup, logs and the configs go.
    export_dir: Where to export the final SavedModel (``<version>/``); empty
      for no export.
    ground_truth: The simulator's ``ground_truth_*.csv`` of ``eval_data``; adds
      the bias metrics. Empty when the data is not simulated.
    epochs: Passes over the training data. Sparse id embeddings overfit after
      one or two, so keep this small or set ``early_stopping_patience``.
    batch_size: Examples per training step.
    learning_rate: Adam's learning rate.
    seed: Seeds the weights, dropout and shuffles: equal seeds, equal models.
    deterministic: Also makes TensorFlow's ops deterministic (process-wide).
    min_count: Ids seen fewer times in the training data share OOV rows.
    steps_per_execution: Training steps per call into the graph; more is
      faster for small models, with coarser progress updates.
    early_stopping_patience: Epochs without improvement of
      ``early_stopping_monitor`` before stopping (and restoring the best
      weights); 0 turns it off.
    early_stopping_monitor: The validation quantity early stopping watches:
      ``val_`` and a loss or metric name of the model (``val_loss``,
      ``val_ctcvr_loss``, ``val_auc_cvr``, ...); AUCs are maximised, losses
      minimised. For ``dr``, ``val_loss`` includes the imputation risk.
    vocab_check_examples: Training examples read up front to check that the
      vocabulary belongs to the data; 0 skips the check.
    max_unknown_id_fraction: The largest share of a field's ids, in that
      sample, that may be missing from its vocabulary.
  """
  train_data: str
  eval_data: str
  vocab_dir: str
  model_dir: str
  export_dir: str = ""
  ground_truth: str = ""
  epochs: int = 2
  batch_size: int = 1024
  learning_rate: float = 1e-3
  seed: int = 42
  deterministic: bool = True
  min_count: int = 1
  steps_per_execution: int = 1
  early_stopping_patience: int = 0
  early_stopping_monitor: str = "val_loss"
  vocab_check_examples: int = 1000
  max_unknown_id_fraction: float = 0.5

  def __post_init__(self):
    for name in ("train_data", "eval_data", "vocab_dir", "model_dir"):
      if not getattr(self, name):
        raise ConfigError(name, "is required")
    for name, low in (("epochs", 1), ("batch_size", 1), ("seed", 0),
                      ("min_count", 1), ("steps_per_execution", 1),
                      ("early_stopping_patience", 0),
                      ("vocab_check_examples", 0)):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(name, f"must be an integer >= {low}, got {value!r}")
    if not 0.0 < self.learning_rate < float("inf"):
      raise ConfigError("learning_rate", "must be a positive finite number, "
                        f"got {self.learning_rate!r}")
    if not self.early_stopping_monitor.startswith("val_"):
      raise ConfigError("early_stopping_monitor",
                        "must name a validation quantity (val_...), got "
                        f"{self.early_stopping_monitor!r}")
    if not 0.0 <= self.max_unknown_id_fraction <= 1.0:
      raise ConfigError("max_unknown_id_fraction", "must be in [0, 1], got "
                        f"{self.max_unknown_id_fraction!r}")

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
    """The inverse of ``to_dict``; unknown keys are an error."""
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"Unknown TrainConfig field(s): {', '.join(unknown)}.")
    return cls(**values)


def configs_dict(train_config: TrainConfig,
                 model_config: config_lib.ModelConfig,
                 loss_config: losses.LossConfig) -> dict[str, Any]:
  """The content of ``config.json``."""
  return {"model": model_config.to_dict(),
          "loss": dataclasses.asdict(loss_config),
          "train": train_config.to_dict()}


def load_configs(model_dir: str) -> dict[str, Any]:
  """Reads ``model_dir/config.json`` back into the three configs.

  Returns:
    ``{"model": ModelConfig, "loss": LossConfig, "train": TrainConfig}``.
  """
  with tf.io.gfile.GFile(os.path.join(model_dir, CONFIG_FILE)) as f:
    content = json.load(f)
  return {"model": config_lib.ModelConfig.from_dict(content["model"]),
          "loss": losses.LossConfig(**content["loss"]),
          "train": TrainConfig.from_dict(content["train"])}


def _check_files(config: TrainConfig) -> None:
  for name in ("train_data", "eval_data"):
    try:
      evaluation.check_readable(getattr(config, name))
    except FileNotFoundError:
      raise ConfigError(name, f"no files match {getattr(config, name)!r}"
                        ) from None
    except ValueError as e:
      raise ConfigError(name, str(e)) from None
  if config.ground_truth and not tf.io.gfile.exists(config.ground_truth):
    raise ConfigError("ground_truth", f"{config.ground_truth} not found")
  for name in ("model_dir", "export_dir"):
    path = getattr(config, name)
    if path and tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
      raise ConfigError(name, f"{path} exists and is not a directory")


def _load_full_vocabularies(vocab_dir: str) -> dict[str, np.ndarray]:
  """Every id of every field's vocabulary (min_count 1)."""
  if not tf.io.gfile.isdir(vocab_dir):
    raise ConfigError("vocab_dir", f"directory {vocab_dir} not found")
  missing = [field for field in schema.FIELD_NAMES if not tf.io.gfile.exists(
      vocab.vocabulary_path(vocab_dir, field))]
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


def check_vocabulary(config: TrainConfig,
                     vocabularies: Mapping[str, np.ndarray]) -> None:
  """Fails when many ids of the training data are not in the vocabulary.

  A vocabulary built from the training data holds every id of it, so even a
  few unknown ids are suspicious; most of a field's ids unknown means the
  vocabulary came from other data (or another id space, e.g. PaddleRec's).
  """
  if not config.vocab_check_examples:
    return
  worst_field, worst = "", 0.0
  for field, ids in _sample_ids(config.train_data,
                                config.vocab_check_examples).items():
    if ids.size:
      unknown = 1.0 - np.isin(ids, vocabularies[field]).mean()
      if unknown > worst:
        worst_field, worst = field, unknown
  if worst > config.max_unknown_id_fraction:
    raise ConfigError(
        "vocab_dir", f"{worst:.0%} of the ids of field {worst_field} in the "
        f"first {config.vocab_check_examples} examples of train_data are "
        f"not in {config.vocab_dir} (at most "
        f"{config.max_unknown_id_fraction:.0%} allowed): the vocabulary does "
        "not belong to this data")


def _check_ground_truth(config: TrainConfig) -> None:
  try:
    evaluation.align_ground_truth(
        evaluation.read_ground_truth(config.ground_truth),
        evaluation.read_sample_ids(config.eval_data), config.ground_truth)
  except evaluation.GroundTruthError as e:
    raise ConfigError("ground_truth", str(e)) from None


def _check_resume(config: TrainConfig, configs: Mapping[str, Any]) -> None:
  """A backup can only be resumed by the same model and loss."""
  backup = os.path.join(config.model_dir, BACKUP_DIR)
  stored_path = os.path.join(config.model_dir, CONFIG_FILE)
  # BackupAndRestore leaves its directory, emptied, after a finished run.
  if not (tf.io.gfile.exists(stored_path) and tf.io.gfile.isdir(backup)
          and tf.io.gfile.listdir(backup)):
    return
  with tf.io.gfile.GFile(stored_path) as f:
    stored = json.load(f)
  for part in ("model", "loss"):
    if stored.get(part) != configs[part]:
      raise ConfigError(
          "model_dir", f"{config.model_dir} holds the backup of an unfinished "
          f"run with another {part} configuration; resume it with the same "
          f"flags, or use a new --model_dir")


def check_inputs(config: TrainConfig, configs: Mapping[str, Any]
                 ) -> dict[str, np.ndarray]:
  """Checks everything a run needs, cheaply, before it starts.

  Args:
    config: The run.
    configs: ``configs_dict(...)`` of the run.

  Returns:
    The full vocabularies (min_count 1), read for the check.

  Raises:
    ConfigError: The first problem found, naming the field.
  """
  _check_files(config)
  vocabularies = _load_full_vocabularies(config.vocab_dir)
  check_vocabulary(config, vocabularies)
  if config.ground_truth:
    _check_ground_truth(config)
  _check_resume(config, configs)
  return vocabularies


class _StopOnNaN(keras.callbacks.TerminateOnNaN):
  """TerminateOnNaN that also fails the run.

  TerminateOnNaN alone ends ``fit`` quietly, after which the epoch's
  checkpoint and backup would store the broken weights. Raising in
  ``on_epoch_end``, before the callbacks that save, keeps the last good epoch.
  """

  def __init__(self):
    super().__init__()
    self._bad_batch = None

  def on_batch_end(self, batch, logs=None):
    already_stopping = self.model.stop_training
    super().on_batch_end(batch, logs)
    if self.model.stop_training and not already_stopping:
      self._bad_batch = batch

  def on_epoch_end(self, epoch, logs=None):
    if self._bad_batch is not None:
      raise TrainingDivergedError(
          f"the training loss became NaN or infinite in epoch {epoch + 1} "
          f"(batch {self._bad_batch}); try a lower learning rate")


def _callbacks(config: TrainConfig) -> list[keras.callbacks.Callback]:
  """The run's callbacks; those that save come after the NaN check."""
  callbacks = [
      _StopOnNaN(),
      keras.callbacks.BackupAndRestore(
          os.path.join(config.model_dir, BACKUP_DIR)),
      keras.callbacks.ModelCheckpoint(
          os.path.join(config.model_dir, CHECKPOINT_DIR, "epoch-{epoch:03d}"),
          save_weights_only=True),
      keras.callbacks.TensorBoard(os.path.join(config.model_dir, LOG_DIR)),
  ]
  if config.early_stopping_patience:
    monitor = config.early_stopping_monitor
    callbacks.append(keras.callbacks.EarlyStopping(
        monitor=monitor, mode="max" if "auc" in monitor else "min",
        patience=config.early_stopping_patience, restore_best_weights=True))
  return callbacks


def _build_model(config: TrainConfig, model_config: config_lib.ModelConfig,
                 loss_config: losses.LossConfig,
                 full_vocabularies: dict[str, np.ndarray]) -> keras.Model:
  vocabularies = (full_vocabularies if config.min_count == 1 else
                  vocab.load_vocabularies(config.vocab_dir, config.min_count))
  model = model_lib.build_model(model_config, loss_config, vocabularies)
  model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                steps_per_execution=config.steps_per_execution)
  # BackupAndRestore restores into existing variables only: build them by
  # calling the model once.
  features, _ = next(iter(data.make_dataset(config.eval_data, 1,
                                            training=False)))
  model(features, training=False)
  return model


def _check_monitor(config: TrainConfig, model: keras.Model) -> None:
  names = [f"val_{metric.name}" for metric in model.metrics]
  if config.early_stopping_monitor not in names:
    raise ConfigError("early_stopping_monitor", f"this model reports "
                      f"{', '.join(names)}, not "
                      f"{config.early_stopping_monitor!r}")


def _num_batches(file_pattern: str, batch_size: int) -> int:
  files = data.list_files(file_pattern)
  records = tf.data.TFRecordDataset(files, compression_type="GZIP").reduce(
      np.int64(0), lambda count, _: count + 1)
  return max(1, math.ceil(int(records) / batch_size))


def _fit(model: keras.Model, config: TrainConfig,
         callbacks: Sequence[keras.callbacks.Callback],
         verbose: int) -> keras.callbacks.History:
  """Runs ``fit``, one pass over the training data per epoch."""
  steps = {}
  num_epochs = 1
  if config.steps_per_execution > 1:
    # Keras must know the steps to group them: count the records once and
    # repeat the data, an epoch being ceil(records / batch_size) steps.
    steps = {"steps_per_epoch": _num_batches(config.train_data,
                                             config.batch_size),
             "validation_steps": _num_batches(config.eval_data,
                                              config.batch_size)}
    num_epochs = None
  return model.fit(
      data.make_dataset(config.train_data, config.batch_size, training=True,
                        seed=config.seed, num_epochs=num_epochs),
      validation_data=data.make_dataset(config.eval_data, config.batch_size,
                                        training=False),
      epochs=config.epochs, verbose=verbose,
      callbacks=_callbacks(config) + list(callbacks), **steps)


def _evaluate(model: keras.Model,
              config: TrainConfig) -> dict[str, float | None]:
  """Scores the eval data exactly and writes ``metrics.json``."""
  predictions = evaluation.predict_keras_model(model, config.eval_data,
                                               config.batch_size)
  for name in evaluation.PREDICTION_NAMES:
    if not np.all(np.isfinite(predictions[name])):
      raise TrainingDivergedError(
          f"the final model predicts NaN or infinite {name} on eval_data")
  ground_truth = (evaluation.read_ground_truth(config.ground_truth)
                  if config.ground_truth else None)
  metrics = evaluation.compute_metrics(predictions, ground_truth,
                                       config.ground_truth)
  metrics = evaluation.json_metrics(metrics)
  evaluation.write_json(os.path.join(config.model_dir, METRICS_FILE), metrics)
  return metrics


def train(train_config: TrainConfig, model_config: config_lib.ModelConfig,
          loss_config: losses.LossConfig, *,
          callbacks: Sequence[keras.callbacks.Callback] = (),
          verbose: int = 1) -> dict[str, Any]:
  """Checks the inputs, trains, evaluates, and exports.

  A run that finds a backup in ``model_dir/backup`` (left by a killed run)
  resumes from the epoch after the last one that run completed.

  Args:
    train_config: Data, output paths and the schedule.
    model_config: The network.
    loss_config: The objective (naive, ESMM, ESCM2-IPW or ESCM2-DR).
    callbacks: Extra Keras callbacks, run after the built-in ones.
    verbose: Keras' verbosity: 0 silent, 1 progress bar, 2 a line per epoch.

  Returns:
    ``{"metrics": as written to metrics.json (undefined values None),
    "epochs": the epochs this call ran, "history": Keras' per-epoch logs,
    "export_path": the SavedModel's directory or ""}``.

  Raises:
    ConfigError: An input is missing or does not fit (names the field).
    TrainingDivergedError: The loss became NaN or infinite.
  """
  configs = configs_dict(train_config, model_config, loss_config)
  full_vocabularies = check_inputs(train_config, configs)
  keras.utils.set_random_seed(train_config.seed)
  if train_config.deterministic:
    tf.config.experimental.enable_op_determinism()
  model = _build_model(train_config, model_config, loss_config,
                       full_vocabularies)
  _check_monitor(train_config, model)
  tf.io.gfile.makedirs(train_config.model_dir)
  evaluation.write_json(os.path.join(train_config.model_dir, CONFIG_FILE),
                        configs)
  history = _fit(model, train_config, callbacks, verbose)
  model.save_weights(os.path.join(train_config.model_dir, CHECKPOINT_DIR,
                                  FINAL_CHECKPOINT))
  metrics = _evaluate(model, train_config)
  export_path = ""
  if train_config.export_dir:
    export_path = export.export_saved_model(
        model, train_config.export_dir,
        extra_assets={"config": configs, "metrics": metrics})
  return {"metrics": metrics, "epochs": len(history.epoch),
          "history": history.history, "export_path": export_path}
