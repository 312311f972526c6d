"""Training: ``train``, the library behind ``escm2-train``.

``train`` checks its inputs before doing any work, then fits the model with the
callbacks a long run needs: a progress bar, TensorBoard logs, a checkpoint per
epoch, a backup that a killed run resumes from, a stop on a NaN loss, and
early stopping on a validation set that is not the evaluation data (by
default a slice of the training data held out by a hash of ``sample_id``).
The towers' output biases start at the training data's base rates
(``escm2_tf.base_rates``). It ends with the refit of the output layer, the
exact metrics of the final model on the evaluation data and, optionally, a
SavedModel (``escm2_tf.run_outputs``).

``model_dir`` layout: ``escm2_tf.run_dir``.

With ``distribution_strategy`` set, the model is built and fit under that
``tf.distribute`` strategy (``escm2_tf.distribute``). Only the chief writes
into ``model_dir`` and ``export_dir``; under ``multi_worker_mirrored`` the
other workers take part in every save into a temporary directory of their
own, deleted afterwards, and Keras' callbacks do the same for theirs.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import gc
import os
from typing import Any, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from escm2_tf import allocator
from escm2_tf import base_rates as base_rates_lib
from escm2_tf import cluster as cluster_lib
from escm2_tf import config as config_lib
from escm2_tf import data
from escm2_tf import distribute
from escm2_tf import divergence
from escm2_tf import early_stopping
from escm2_tf import evaluation
from escm2_tf import fit_policy
from escm2_tf import ground_truth as ground_truth_lib
from escm2_tf import losses
from escm2_tf import model as model_lib
from escm2_tf import optimizers
from escm2_tf import run_dir
from escm2_tf import run_inputs
from escm2_tf import run_outputs
from escm2_tf import schema
from escm2_tf import threads
from escm2_tf import validation
from escm2_tf import vocab


# ``train``'s error, defined beside the callbacks that raise it.
TrainingDivergedError = divergence.TrainingDivergedError


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
  callbacks = [divergence.stop_on_nan(parameter_server)]
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


def _fit(model: keras.Model, config: config_lib.ExperimentConfig,
         strategy: tf.distribute.Strategy,
         run_callbacks: Sequence[keras.callbacks.Callback],
         callbacks: Sequence[keras.callbacks.Callback],
         verbose: int,
         label_table: data.LabelTable | None) -> keras.callbacks.History:
  """Runs ``fit`` on ``run_inputs.fit_inputs``."""
  inputs, validation_inputs, steps = run_inputs.fit_inputs(
      model, config, strategy, label_table)
  return model.fit(
      inputs, validation_data=validation_inputs, epochs=config.trainer.epochs,
      verbose=verbose, callbacks=list(run_callbacks) + list(callbacks),
      **steps)


def _set_up(config: config_lib.ExperimentConfig
            ) -> tuple[cluster_lib.Task, tf.distribute.Strategy,
                       dict[str, np.ndarray]]:
  """This task, its strategy, and the vocabularies, after every check.

  The base rates are checked here too, and read again by ``train``.
  """
  task = cluster_lib.read_task()
  cluster_lib.check_task(config.runtime.distribution_strategy, task)
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


def _fit_and_save(config: config_lib.ExperimentConfig, task: cluster_lib.Task,
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
  shifts = (run_outputs.recalibrate(model, config, rates, label_table)
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
  workers and servers run ``cluster.run_server`` instead).

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
    cluster.ClusterError: TF_CONFIG does not fit the strategy.
    TrainingDivergedError: The loss became NaN or infinite.
  """
  # Before anything starts TensorFlow's runtime, which reads them once.
  threads.apply_runtime(config.runtime)
  allocator.use_system_allocator()
  validation.check_loss(config.loss, propensity_labels)
  label_table = None
  if config.loss.propensity == "label":
    truth = ground_truth_lib.read_ground_truth(propensity_labels)
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
    result.update(run_outputs.score_and_export(
        run_outputs.local_copy(config, vocabularies, final), config))
  return result
