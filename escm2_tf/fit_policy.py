"""``escm2-train``'s training policy, for ``model.fit`` users.

What the trainer does around ``model.fit``, as the functions it calls itself,
so that a notebook trains exactly as ``escm2-train`` does:

- ``base_rates``: the towers' output biases start at the training data's base
  rates (``escm2_tf.base_rates``), not at 0.5;
- ``split_datasets``: training on all of the training data but a held-out
  slice, chosen by a hash of ``sample_id`` (``data.HashSplit``), and
  validating on that slice; never on the test data, which must stay unseen
  until the end;
- ``stopping_callbacks``: early stopping on ``val_ctr_ctcvr_loss``, ending on
  the weights of the best epoch (``early_stopping.ResumableEarlyStopping``);
- then ``recalibration.recalibrate`` moves the outputs to where the
  estimator's risk puts them: pCTR's mean on the held-out slice to the click
  rate; pCVR to the rate naive and esmm fix, or, for the counterfactual
  estimators, to the slope and level that minimise their own CVR risk on
  the trained-on side of the training data (``refit_batches``).

``escm2-train`` also sets two properties of the process before TensorFlow's
runtime starts, which change the cost, not the weights: a notebook gets them
with ``threads.apply_runtime(config.RuntimeConfig())`` before its first
TensorFlow op (``escm2_tf.threads``).

The defaults below are ``escm2-train``'s, read from its declarations::

    rates = fit_policy.base_rates(vocab_dir)
    model = model_lib.build_model(model_config, loss_config, vocabularies,
                                  base_rates=rates, seed=42)
    model.compile(optimizer=optimizers.make_optimizer(
        fit_policy.OPTIMIZER, fit_policy.LEARNING_RATE))
    training, validation = fit_policy.split_datasets(train_files, 1024,
                                                     seed=42)
    model.fit(training, validation_data=validation, epochs=fit_policy.EPOCHS,
              callbacks=fit_policy.stopping_callbacks(model_dir))
    recalibration.recalibrate(model, validation, rates,
                              training=fit_policy.refit_batches(train_files))
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import dataclasses
import functools
import os
from typing import Any, Callable

import tensorflow as tf
import tf_keras as keras

from escm2_tf import base_rates as base_rates_lib
from escm2_tf import config as config_lib
from escm2_tf import data
from escm2_tf import data_size
from escm2_tf import early_stopping
from escm2_tf import layout
from escm2_tf import recalibration
from escm2_tf import run_dir

DatasetFn = Callable[..., tf.data.Dataset]


def _default(name: str) -> Any:
  """The default of ``escm2-train``'s flag ``name``."""
  fields = {field.name: field for section in config_lib.SECTIONS.values()
            for field in dataclasses.fields(section)}
  return fields[name].default


OPTIMIZER = _default("optimizer")
LEARNING_RATE = _default("learning_rate")
EPOCHS = _default("epochs")
MIN_COUNT = _default("min_count")
VALIDATION_FRACTION = _default("validation_fraction")
PATIENCE = _default("early_stopping_patience")
MONITOR = _default("early_stopping_monitor")


def base_rates(vocab_dir: str, stats_file: str = ""
               ) -> base_rates_lib.BaseRates:
  """The training data's base rates, for ``build_model(base_rates=...)``.

  Args:
    vocab_dir: The converter's ``vocab/`` directory of the training data.
    stats_file: Its ``stats.json``; empty for the one beside ``vocab_dir``.

  Raises:
    base_rates.StatsError: The file is missing or holds no counts.
  """
  return base_rates_lib.read_base_rates(
      stats_file or layout.stats_beside(vocab_dir))


def held_out_split(validation_fraction: float = VALIDATION_FRACTION
                   ) -> tuple[data.HashSplit, data.HashSplit]:
  """(the records trained on, the records validated on) of training data."""
  return (data.HashSplit(validation_fraction, validation=False),
          data.HashSplit(validation_fraction, validation=True))


def dataset_fns(train_data: str, batch_size: int, *, seed: int | None,
                validation_fraction: float = VALIDATION_FRACTION,
                validation_data: str = "", with_weights: bool = False,
                num_epochs: int | None = 1,
                validation_num_epochs: int | None = 1,
                cache_training: bool = False, cache_validation: bool = False,
                label_table: data.LabelTable | None = None
                ) -> tuple[DatasetFn, DatasetFn | None]:
  """``split_datasets`` as functions of ``input_context`` (tf.distribute).

  With ``validation_data`` it trains on all of ``train_data`` and validates
  on those files; with ``validation_fraction`` 0 (and no
  ``validation_data``) it trains on all and validates on nothing (None).
  The other arguments are ``data.make_dataset``'s: ``num_epochs`` and
  ``cache_training`` of the training side, ``validation_num_epochs`` and
  ``cache_validation`` of the validation side; ``label_table`` of both.
  """
  training_split, validation_split = None, None
  if not validation_data and validation_fraction:
    training_split, validation_split = held_out_split(validation_fraction)
  training = functools.partial(
      data.make_dataset, train_data, batch_size, training=True, seed=seed,
      num_epochs=num_epochs, split=training_split, with_weights=with_weights,
      cache=cache_training, label_table=label_table)
  if not (validation_data or validation_fraction):
    return training, None
  return training, functools.partial(
      data.make_dataset, validation_data or train_data, batch_size,
      training=False, num_epochs=validation_num_epochs,
      split=validation_split, with_weights=with_weights,
      cache=cache_validation, label_table=label_table)


def split_datasets(train_data: str, batch_size: int, *, seed: int | None,
                   validation_fraction: float = VALIDATION_FRACTION,
                   with_weights: bool = False
                   ) -> tuple[tf.data.Dataset, tf.data.Dataset]:
  """The training data, split into what ``fit`` trains and validates on.

  The validation slice is the ``validation_fraction`` of the records whose
  ``sample_id`` hashes into it: the same records on every run, machine and
  worker, never trained on. Each dataset makes one pass per epoch.

  Args:
    train_data: Glob of the converter's training TFRecords.
    batch_size: Examples per batch.
    seed: Seeds the training side's shuffle; equal seeds, equal batches.
    validation_fraction: The share held out, in (0, 0.5].
    with_weights: Parse the behaviour weights (``ModelConfig.use_weights``).

  Returns:
    ``(training, validation)``, for ``model.fit(training,
    validation_data=validation)``.
  """
  training, validation = dataset_fns(
      train_data, batch_size, seed=seed,
      validation_fraction=validation_fraction, with_weights=with_weights)
  # Stated lengths let Keras end each pass without a failed extra step,
  # which the optimizer's step count would count, as escm2-train does.
  counts = data_size.count_split_records(train_data, validation_fraction)
  return tuple(
      dataset().apply(tf.data.experimental.assert_cardinality(
          -(-count // batch_size)))
      for dataset, count in ((training, counts[0]), (validation, counts[1])))


def refit_batches(train_data: str, *,
                  validation_fraction: float = VALIDATION_FRACTION,
                  with_weights: bool = False,
                  label_table: data.LabelTable | None = None
                  ) -> tf.data.Dataset:
  """The trained-on side of the training data, in order, for the refit.

  ``recalibration.recalibrate(..., training=...)`` refits the CVR output of
  the counterfactual estimators to their risk on these batches. With
  ``validation_fraction`` 0 (nothing held out) all of ``train_data``.
  """
  training_split = (held_out_split(validation_fraction)[0]
                    if validation_fraction else None)
  return data.make_dataset(
      train_data, recalibration.SCORING_BATCH_SIZE, training=False,
      split=training_split, with_weights=with_weights,
      label_table=label_table)


def checkpoint_path(model_dir: str, epoch: int) -> str:
  """Where the weights after ``epoch`` (0-based) are saved."""
  return os.path.join(model_dir, run_dir.CHECKPOINT_DIR,
                      f"epoch-{epoch + 1:03d}")


def stopping_callbacks(model_dir: str, *, patience: int = PATIENCE,
                       monitor: str = MONITOR, write_state: bool = True,
                       verbose: int = 0) -> list[keras.callbacks.Callback]:
  """Early stopping that ends on the best epoch, and its checkpoints.

  The run stops after ``patience`` epochs without improvement of
  ``monitor`` and ends with the weights of its best epoch, read back from
  the checkpoint saved after it in ``model_dir/checkpoints``.

  Args:
    model_dir: Where the checkpoints (and the stopping state) go.
    patience: Epochs without improvement before stopping; 0 for none (the
      list then holds only the per-epoch checkpoint).
    monitor: The validation quantity watched; losses are minimised, AUCs
      maximised.
    write_state: Whether this process writes the state (a cluster's chief).
    verbose: Print a line when stopping and when restoring.

  Returns:
    Callbacks for ``fit``, in this order; the trainer puts its backup after
    them.
  """
  callbacks = []
  if patience:
    callbacks.append(early_stopping.ResumableEarlyStopping(
        monitor, patience,
        os.path.join(model_dir, run_dir.BACKUP_DIR, early_stopping.STATE_FILE),
        functools.partial(checkpoint_path, model_dir),
        write_state=write_state, verbose=verbose))
  callbacks.append(keras.callbacks.ModelCheckpoint(
      os.path.join(model_dir, run_dir.CHECKPOINT_DIR, "epoch-{epoch:03d}"),
      save_weights_only=True))
  return callbacks
