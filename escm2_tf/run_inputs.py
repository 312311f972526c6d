"""A run's input: what it trains and validates on, and how ``fit`` reads it.

``escm2-train`` trains on ``train_data`` and validates on ``validation_data``
or, by default, on a slice of ``train_data`` held out by a hash of
``sample_id``; never on ``eval_data``. This module chooses those sources,
counts their batches when Keras must know an epoch's steps, decides which
parsed batches stay in memory, and makes the datasets ``fit`` reads.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import functools
import math
from typing import Any

import tensorflow as tf
import tf_keras as keras

from escm2_tf import config as config_lib
from escm2_tf import data
from escm2_tf import data_size
from escm2_tf import distribute
from escm2_tf import fit_policy
from escm2_tf import tracing

# Files, and the side of a hash split of them (None: every record).
Source = tuple[str, data.HashSplit | None]


def _num_batches(file_pattern: str, batch_size: int,
                 split: data.HashSplit | None = None) -> int:
  return max(1, math.ceil(data_size.count_records(file_pattern, split)
                          / batch_size))


def _fixed_steps(config: config_lib.ExperimentConfig, train_source: Source,
                 validation_source: Source | None) -> dict[str, int]:
  """``steps_per_epoch`` and ``validation_steps``, counted up front.

  A held-out slice and the rest of the same files are counted in one read.
  """
  batch_size = config.trainer.batch_size
  train_files, train_split = train_source
  if (validation_source and train_split is not None
      and validation_source[0] == train_files):
    training, validation = data_size.count_split_records(
        train_files, train_split.fraction)
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


def sources(config: config_lib.ExperimentConfig
            ) -> tuple[Source, Source | None]:
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


def _parsed_bytes(source: Source) -> float:
  """The estimated memory of a (files, split) source once parsed."""
  files, split = source
  share = 1.0
  if split is not None:
    share = split.fraction if split.validation else 1.0 - split.fraction
  return share * data_size.parsed_bytes_estimate(files)


def _cache_choice(config: config_lib.ExperimentConfig, train_source: Source,
                  validation_source: Source | None) -> tuple[bool, bool]:
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


def fit_inputs(model: keras.Model, config: config_lib.ExperimentConfig,
               strategy: tf.distribute.Strategy,
               label_table: data.LabelTable | None
               ) -> tuple[Any, Any, dict[str, int]]:
  """The training and validation inputs of ``fit``, and its step counts.

  By default an epoch is one pass over the training data. The run validates
  on ``validation_data``, or on the held-out slice of the training data,
  which is then left out of training. On one machine the datasets are made
  here and the model's steps traced while the records are counted; under a
  cluster strategy they are distributed.

  Returns:
    The training input, the validation input (or None), and the keyword
    arguments ``steps_per_epoch`` and ``validation_steps`` for ``fit``, when
    it needs them.
  """
  cluster = distribute.needs_fixed_steps(strategy)
  one_machine = (config.runtime.distribution_strategy
                 == config_lib.DEFAULT_STRATEGY)
  repeated = _repeats_input(config, strategy)
  (train_files, train_split), validation_source = sources(config)
  parameter_server = isinstance(strategy,
                                tf.distribute.ParameterServerStrategy)
  cache_training, cache_validation = _cache_choice(
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
  return inputs, validation_inputs, steps
