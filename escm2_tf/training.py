"""Training: ``train``, the library behind ``escm2-train``.

``train`` checks its inputs before doing any work, then fits the model with the
callbacks a long run needs: a progress bar, TensorBoard logs, a checkpoint per
epoch, a backup that a killed run resumes from, a stop on a NaN loss, and
early stopping on a validation set that is not the evaluation data (by
default a slice of the training data held out by a hash of ``sample_id``).
The towers' output biases start at the training data's base rates
(``escm2_tf.base_rates``). It ends with the exact metrics of the final model
on the evaluation data and, optionally, a SavedModel.

``model_dir`` layout: ``escm2_tf.run_dir``.

With ``distribution_strategy`` set, the model is built and fit under that
``tf.distribute`` strategy (``escm2_tf.distribute``). Only the chief writes
into ``model_dir`` and ``export_dir``; under ``multi_worker_mirrored`` the
other workers take part in every save into a temporary directory of their
own, deleted afterwards, and Keras' callbacks do the same for theirs.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import functools
import gc
import math
import os
from typing import Any, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from escm2_tf import allocator
from escm2_tf import config as config_lib
from escm2_tf import data
from escm2_tf import base_rates as base_rates_lib
from escm2_tf import distribute
from escm2_tf import early_stopping
from escm2_tf import evaluation
from escm2_tf import export
from escm2_tf import fit_policy
from escm2_tf import losses
from escm2_tf import model as model_lib
from escm2_tf import optimizers
from escm2_tf import recalibration
from escm2_tf import run_dir
from escm2_tf import schema
from escm2_tf import threads
from escm2_tf import tracing
from escm2_tf import validation
from escm2_tf import vocab


class TrainingDivergedError(RuntimeError):
  """The loss became NaN or infinite; training stopped."""


def check_inputs(config: config_lib.ExperimentConfig
                 ) -> dict[str, np.ndarray]:
  """``validation.check_inputs`` against ``model_dir``'s layout.

  Returns:
    The full vocabularies (min_count 1), read for the check.

  Raises:
    ConfigError: The first problem found, naming the field.
  """
  return validation.check_inputs(
      config,
      stored_config=os.path.join(config.trainer.model_dir, run_dir.CONFIG_FILE),
      backup_dir=os.path.join(config.trainer.model_dir, run_dir.BACKUP_DIR))


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


class _StopOnNaNLoss(keras.callbacks.Callback):
  """The NaN stop for parameter servers, where ``fit`` allows no batch hooks.

  An epoch's mean loss is NaN or infinite when any of its batches' was; this
  raises before the callbacks that save, as ``_StopOnNaN`` does.
  """

  def on_epoch_end(self, epoch, logs=None):
    loss = (logs or {}).get("loss")
    if loss is not None and not math.isfinite(loss):
      raise TrainingDivergedError(
          f"the training loss became NaN or infinite in epoch {epoch + 1}; "
          "try a lower learning rate")


def _callbacks(config: config_lib.ExperimentConfig,
               parameter_server: bool = False, is_chief: bool = True,
               verbose: int = 0
               ) -> list[keras.callbacks.Callback]:
  """The run's callbacks.

  Those that save come after the NaN check. Early stopping's state and the
  epoch's checkpoint are written before the epoch's backup: a run resumed
  from a backup finds both (a kill in between redoes the epoch).
  """
  trainer = config.trainer
  callbacks = [_StopOnNaNLoss() if parameter_server else _StopOnNaN()]
  callbacks += fit_policy.stopping_callbacks(
      trainer.model_dir, patience=trainer.early_stopping_patience,
      monitor=trainer.early_stopping_monitor, write_state=is_chief,
      verbose=verbose)
  callbacks += [
      keras.callbacks.BackupAndRestore(
          os.path.join(trainer.model_dir, run_dir.BACKUP_DIR)),
      keras.callbacks.TensorBoard(
          os.path.join(trainer.model_dir, run_dir.LOG_DIR)),
  ]
  return callbacks


def _build_model(config: config_lib.ExperimentConfig,
                 vocabularies: dict[str, np.ndarray],
                 strategy: tf.distribute.Strategy,
                 base_rates: base_rates_lib.BaseRates | None
                 ) -> keras.Model:
  with strategy.scope():
    model = model_lib.build_model(config.model, config.loss, vocabularies,
                                  base_rates=base_rates,
                                  seed=config.runtime.seed)
    model.compile(optimizer=optimizers.make_optimizer(
        config.trainer.optimizer, config.trainer.learning_rate),
                  steps_per_execution=config.trainer.steps_per_execution)
    # BackupAndRestore restores into existing variables only: build them by
    # calling the model once.
    features, _ = next(iter(data.make_dataset(
        config.data.eval_data, 1, training=False,
        with_weights=config.model.use_weights)))
    model(features, training=False)
  return model


def _local_copy(config: config_lib.ExperimentConfig,
                vocabularies: dict[str, np.ndarray],
                checkpoint: str) -> keras.Model:
  """The trained model, whole, from its final checkpoint, without optimizer.

  The chief scores and exports this copy: the trained model's optimizer
  slots (twice its embedding tables) and training functions are freed
  first. Of a parameter-server model, scoring then reads every variable once
  instead of once per batch from the servers, and the export holds plain
  variables, as TF Serving loads them in one process anyway; the
  coordinator needs the memory of the whole model.
  """
  model = model_lib.build_model(config.model, config.loss, vocabularies)
  # The checkpoint also holds the optimizer, which the copy does not need.
  model.load_weights(checkpoint).expect_partial()
  return model


def _num_batches(file_pattern: str, batch_size: int,
                 split: data.HashSplit | None = None) -> int:
  return max(1, math.ceil(data.count_records(file_pattern, split)
                          / batch_size))


def _fixed_steps(config: config_lib.ExperimentConfig,
                 train_source: tuple[str, data.HashSplit | None],
                 validation_source: tuple[str, data.HashSplit | None] | None
                 ) -> dict[str, int]:
  """``steps_per_epoch`` and ``validation_steps``, counted up front.

  A held-out slice and the rest of the same files are counted in one read.
  """
  batch_size = config.trainer.batch_size
  train_files, train_split = train_source
  if (validation_source and train_split is not None
      and validation_source[0] == train_files):
    training, validation = data.count_split_records(train_files,
                                                    train_split.fraction)
    return {"steps_per_epoch": config.trainer.steps_per_epoch or max(
        1, math.ceil(training / batch_size)),
            "validation_steps": max(1, math.ceil(validation / batch_size))}
  steps = {"steps_per_epoch": config.trainer.steps_per_epoch or _num_batches(
      train_files, batch_size, train_split)}
  if validation_source:
    validation_files, validation_split = validation_source
    steps["validation_steps"] = _num_batches(validation_files, batch_size,
                                             validation_split)
  return steps


def _validation_source(config: config_lib.ExperimentConfig
                       ) -> tuple[tuple[str, data.HashSplit | None],
                                  tuple[str, data.HashSplit | None] | None]:
  """(files, split) of the training data and of the validation data.

  Without early stopping and without ``validation_data`` nothing is held
  out and nothing validated: the run trains on all of ``train_data``.
  """
  if config.data.validation_data:
    return (config.data.train_data, None), (config.data.validation_data, None)
  if not config.trainer.early_stopping_patience:
    return (config.data.train_data, None), None
  training_split, validation_split = fit_policy.held_out_split(
      config.data.validation_fraction)
  return ((config.data.train_data, training_split),
          (config.data.train_data, validation_split))


def _parsed_bytes(source: tuple[str, data.HashSplit | None]) -> float:
  """The estimated memory of a (files, split) source once parsed."""
  files, split = source
  share = 1.0
  if split is not None:
    share = split.fraction if split.validation else 1.0 - split.fraction
  return share * data.parsed_bytes_estimate(files)


def _cached(config: config_lib.ExperimentConfig,
            train_source: tuple[str, data.HashSplit | None],
            validation_source: tuple[str, data.HashSplit | None] | None
            ) -> tuple[bool, bool]:
  """Whether to keep the parsed training and validation batches in memory.

  The validation data come first: caching them changes nothing but the
  cost, and a held-out slice of the training data otherwise means reading
  all the training files again every epoch.
  """
  budget = config.data.input_cache_mb << 20
  cache_validation = False
  if validation_source:
    validation_bytes = _parsed_bytes(validation_source)
    cache_validation = validation_bytes <= budget
    budget -= validation_bytes if cache_validation else 0
  cache_training = (config.data.cache_training_batches and
                    _parsed_bytes(train_source) <= budget)
  return cache_training, cache_validation


def _repeats_input(config: config_lib.ExperimentConfig,
                   strategy: tf.distribute.Strategy) -> bool:
  """Whether ``fit`` reads an endless stream of batches, cut into epochs.

  That is the case with ``steps_per_epoch``, on a cluster, and with grouped
  steps under a strategy whose distributed input hides its length. An
  epoch of the stream ends after a count of batches, not at the end of a
  pass: batches span passes and none is short. Otherwise every epoch is one
  pass, the same batches whatever ``steps_per_execution``.
  """
  if config.trainer.steps_per_epoch or distribute.needs_fixed_steps(strategy):
    return True
  return (config.trainer.steps_per_execution > 1 and
          config.runtime.distribution_strategy != config_lib.DEFAULT_STRATEGY)


def _with_known_lengths(inputs: tf.data.Dataset,
                        validation_inputs: tf.data.Dataset | None,
                        steps: dict[str, int]
                        ) -> tuple[tf.data.Dataset, tf.data.Dataset | None]:
  """One pass each, their counted batches stated as their cardinality.

  Keras groups steps only over data of known length; knowing it, it makes a
  new pass every epoch and runs the last, partial group of a pass as a
  shorter execution, so an epoch trains exactly the steps of one pass,
  whatever ``steps_per_execution``. Over data of unknown length Keras
  finds the end of the first pass by one more call of its training step;
  that call fails on the exhausted input, but the optimizer's step count,
  which does not wait for the data, counts it: every later step would be
  bias-corrected as the one after it. ``assert_cardinality`` fails the run
  if a pass holds another count.
  """
  inputs = inputs.apply(
      tf.data.experimental.assert_cardinality(steps["steps_per_epoch"]))
  if validation_inputs is not None:
    validation_inputs = validation_inputs.apply(
        tf.data.experimental.assert_cardinality(steps["validation_steps"]))
  return inputs, validation_inputs


def _fit(model: keras.Model, config: config_lib.ExperimentConfig,
         strategy: tf.distribute.Strategy,
         run_callbacks: Sequence[keras.callbacks.Callback],
         callbacks: Sequence[keras.callbacks.Callback],
         verbose: int,
         label_table: data.LabelTable | None) -> keras.callbacks.History:
  """Runs ``fit``, by default one pass over the training data per epoch.

  It validates on ``validation_data``, or on the held-out slice of the
  training data, which is then left out of training.
  """
  cluster = distribute.needs_fixed_steps(strategy)
  one_machine = (config.runtime.distribution_strategy
                 == config_lib.DEFAULT_STRATEGY)
  repeated = _repeats_input(config, strategy)
  (train_files, train_split), validation_source = _validation_source(config)
  parameter_server = isinstance(strategy,
                                tf.distribute.ParameterServerStrategy)
  cache_training, cache_validation = _cached(
      config, (train_files, train_split), validation_source)
  # Every parameter-server worker runs the same dataset function: one seed
  # would give them all the same order, so each shuffles its own way.
  inputs, validation_inputs = fit_policy.dataset_fns(
      train_files, config.trainer.batch_size,
      seed=None if parameter_server else config.runtime.seed,
      validation_fraction=train_split.fraction if train_split else 0.0,
      validation_data=config.data.validation_data,
      with_weights=config.model.use_weights,
      num_epochs=None if repeated else 1,
      validation_num_epochs=None if cluster else 1,
      cache_training=cache_training, cache_validation=cache_validation,
      label_table=label_table)
  # Keras must know an epoch's steps to group them and to end a pass without
  # a failed call; workers must agree on them. One count does.
  count = functools.partial(_fixed_steps, config, (train_files, train_split),
                            validation_source)
  if one_machine:
    inputs = inputs()
    if validation_inputs:
      validation_inputs = validation_inputs()
    with tracing.steps_traced_meanwhile(model, inputs, validation_inputs):
      steps = count()
    if not repeated:
      inputs, validation_inputs = _with_known_lengths(
          inputs, validation_inputs, steps)
      steps = {}
  else:
    steps = count() if repeated else {}
    inputs = distribute.distribute_dataset(strategy, inputs)
    if validation_inputs:
      validation_inputs = distribute.distribute_dataset(strategy,
                                                        validation_inputs)
  return model.fit(
      inputs, validation_data=validation_inputs, epochs=config.trainer.epochs,
      verbose=verbose, callbacks=list(run_callbacks) + list(callbacks),
      **steps)


def _recalibrate(model: keras.Model, config: config_lib.ExperimentConfig,
                 rates: base_rates_lib.BaseRates,
                 label_table: data.LabelTable | None) -> dict[str, float]:
  """Refits the output layer: the levels held out, the IPS risks trained on.

  Without validation data (early stopping off), the held-out side is the
  training data.
  """
  train_source, validation_source = _validation_source(config)
  files, split = validation_source or train_source
  held_out = data.make_dataset(files, config.trainer.batch_size,
                               training=False, split=split,
                               with_weights=config.model.use_weights)
  training_files, training_split = train_source
  training = fit_policy.refit_batches(
      training_files,
      validation_fraction=training_split.fraction if training_split else 0.0,
      with_weights=config.model.use_weights, label_table=label_table)
  return recalibration.recalibrate(model, held_out, rates, training)


def _evaluate(model: keras.Model,
              config: config_lib.ExperimentConfig) -> dict[str, float | None]:
  """Scores the eval data exactly and writes ``metrics.json``."""
  predictions = evaluation.predict_keras_model(
      model, config.data.eval_data, config.trainer.batch_size,
      with_sample_id=bool(config.data.ground_truth))
  for name in schema.OUTPUT_NAMES:
    if not np.all(np.isfinite(predictions[name])):
      raise TrainingDivergedError(
          f"the final model predicts NaN or infinite {name} on eval_data")
  ground_truth = (evaluation.read_ground_truth(config.data.ground_truth)
                  if config.data.ground_truth else None)
  metrics = evaluation.compute_metrics(predictions, ground_truth,
                                       config.data.ground_truth,
                                       config.data.eval_data)
  metrics = evaluation.json_metrics(metrics)
  evaluation.write_json(
      os.path.join(config.trainer.model_dir, run_dir.METRICS_FILE), metrics)
  return metrics


def _score_and_export(model: keras.Model, config: config_lib.ExperimentConfig
                      ) -> dict[str, Any]:
  """The chief's ``metrics.json`` and export."""
  metrics = _evaluate(model, config)
  export_path = ""
  if config.trainer.export_dir:
    export_path = export.export_saved_model(
        model, config.trainer.export_dir,
        extra_assets={"config": config.to_dict(), "metrics": metrics})
  return {"metrics": metrics, "export_path": export_path}


def _set_up(config: config_lib.ExperimentConfig
            ) -> tuple[distribute.Task, tf.distribute.Strategy,
                       dict[str, np.ndarray]]:
  """This task, its strategy, and the vocabularies, after every check.

  The base rates are checked here too, and read again by ``train``.
  """
  task = distribute.read_task()
  distribute.check_task(config.runtime.distribution_strategy, task)
  # Collective ops must be set up before TensorFlow runs anything.
  strategy = distribute.make_strategy(
      config.runtime.distribution_strategy, task,
      min_shard_bytes=config.runtime.ps_min_shard_bytes)
  full_vocabularies = check_inputs(config)
  validation.check_batch_size(config.trainer.batch_size,
                              strategy.num_replicas_in_sync)
  keras.utils.set_random_seed(config.runtime.seed)
  if config.runtime.deterministic:
    tf.config.experimental.enable_op_determinism()
  if config.data.min_count == 1:
    return task, strategy, full_vocabularies
  return task, strategy, vocab.load_vocabularies(config.data.vocab_dir,
                                                 config.data.min_count)


def _fit_and_save(config: config_lib.ExperimentConfig, task: distribute.Task,
                  strategy: tf.distribute.Strategy,
                  vocabularies: dict[str, np.ndarray],
                  callbacks: Sequence[keras.callbacks.Callback],
                  verbose: int, label_table: data.LabelTable | None
                  ) -> tuple[dict[str, Any], str]:
  """Builds, fits, recalibrates and saves the model (``train``'s steps).

  Returns:
    ``train``'s result without the metrics and the export, and the final
    checkpoint. The model, its optimizer's slots, its training functions and
    the callbacks that hold them end with this call: the final evaluation,
    which scores a copy of the final weights, does not need them.
  """
  rates = validation.read_base_rates(config)
  model = _build_model(config, vocabularies, strategy,
                       rates if config.trainer.base_rate_init else None)
  validation.check_monitor(config, model)
  if task.is_chief:
    tf.io.gfile.makedirs(config.trainer.model_dir)
    evaluation.write_json(
        os.path.join(config.trainer.model_dir, run_dir.CONFIG_FILE),
        config.to_dict())
  parameter_server = isinstance(strategy,
                                tf.distribute.ParameterServerStrategy)
  run_callbacks = _callbacks(config, parameter_server, task.is_chief,
                             verbose)
  history = _fit(model, config, strategy, run_callbacks,
                 callbacks, verbose, label_table)
  # From here on, the large blocks the recalibration and the final
  # evaluation free go back to the system; the epochs keep glibc's default,
  # which reuses them.
  allocator.map_large_blocks()
  shifts = (_recalibrate(model, config, rates, label_table)
            if config.trainer.recalibrate else None)
  # Saving reads the metrics' sync-on-read variables, a collective: every
  # worker saves.
  with distribute.writer_dir(config.trainer.model_dir, task) as model_dir:
    final = os.path.join(model_dir, run_dir.CHECKPOINT_DIR,
                         run_dir.FINAL_CHECKPOINT)
    model.save_weights(final)
  stopper = [c for c in run_callbacks
             if isinstance(c, early_stopping.ResumableEarlyStopping)]
  best_epoch = stopper[0].best_epoch if stopper else None
  return {"metrics": {}, "epochs": len(history.epoch),
          "best_epoch": None if best_epoch is None else best_epoch + 1,
          "history": history.history, "output_bias_shifts": shifts,
          "export_path": "", "task": str(task),
          "chief": task.is_chief,
          "variable_shards": distribute.variable_shards(model.variables)
          }, final


def train(config: config_lib.ExperimentConfig, *,
          callbacks: Sequence[keras.callbacks.Callback] = (),
          verbose: int = 1,
          propensity_labels: str = "") -> dict[str, Any]:
  """Checks the inputs, trains, evaluates, and exports.

  The model is validated after every epoch on ``validation_data`` or on the
  held-out slice of ``train_data``, never on ``eval_data``; with early
  stopping (the default) the run ends with the weights of its best epoch.
  A run that finds a backup in ``model_dir/backup`` (left by a killed run)
  resumes from the epoch after the last one that run completed, with the
  early-stopping state of that epoch. Under a
  cluster strategy, every task of the cluster runs this (parameter-server
  workers and servers run ``distribute.run_server`` instead).

  Args:
    config: The run: data, network, estimator, schedule, outputs, strategy.
    callbacks: Extra Keras callbacks, run after the built-in ones.
    verbose: Keras' verbosity: 0 silent, 1 progress bar, 2 a line per epoch.
    propensity_labels: A ground-truth CSV of the training data (the
      simulator's ``ground_truth_train.csv``) whose ``p_click`` every
      training and validation batch carries, for
      ``LossConfig(propensity="label")``; only the study has one.

  Returns:
    ``{"metrics": as written to metrics.json (undefined values None; empty
    on a worker that is not the chief), "epochs": the epochs this call ran,
    "best_epoch": the epoch (1-based) whose weights the run ended with, by
    early stopping's choice (None with early stopping off), "history":
    Keras' per-epoch logs, "output_bias_shifts": ``recalibrate``'s changes
    of the CTR and CVR logits (``ctr``, ``cvr``: shifts; ``cvr_slope``;
    None when off),
    "export_path": the SavedModel's
    directory or "", "task": this task ("local:0" without a cluster),
    "chief": whether it wrote the outputs, "variable_shards":
    ``distribute.variable_shards`` of the model}``.

  Raises:
    ConfigError: An input is missing or does not fit (names the field).
    distribute.ClusterError: TF_CONFIG does not fit the strategy.
    TrainingDivergedError: The loss became NaN or infinite.
  """
  # Before anything starts TensorFlow's runtime, which reads them once.
  threads.set_thread_spinning(config.runtime.thread_spinning)
  allocator.use_system_allocator()
  validation.check_loss(config.loss, propensity_labels)
  label_table = None
  if config.loss.propensity == "label":
    truth = evaluation.read_ground_truth(propensity_labels)
    label_table = data.LabelTable(losses.PROPENSITY_LABEL,
                                  truth[schema.SAMPLE_ID], truth["p_click"])
  task, strategy, vocabularies = _set_up(config)
  result, final = _fit_and_save(config, task, strategy, vocabularies,
                                callbacks, verbose, label_table)
  if task.is_chief:
    # Keras models hold reference cycles: the trained one is freed only by
    # a collection, which lets scoring reuse its memory; the recalibration's
    # tensors, freed too, go back to the system.
    gc.collect()
    allocator.release_free_memory()
    result.update(_score_and_export(
        _local_copy(config, vocabularies, final), config))
  return result
