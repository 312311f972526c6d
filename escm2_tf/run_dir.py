"""A training run's directory: its layout, and restoring a model from it.

``model_dir`` holds ``config.json`` (the three configs, for ``escm2-export`` to
rebuild the model), ``checkpoints/`` (Keras weights, ``epoch-NNN`` per epoch,
then ``final``, which the checkpoint state names as the latest), ``backup/``
(``BackupAndRestore``; removed when a run completes), ``logs/`` (TensorBoard)
and ``metrics.json``.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import dataclasses
import json
import os
from typing import Any

import tensorflow as tf
import tf_keras as keras

from escm2_tf import config as config_lib
from escm2_tf import losses
from escm2_tf import model as model_lib
from escm2_tf import vocab

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"
BACKUP_DIR = "backup"
LOG_DIR = "logs"
FINAL_CHECKPOINT = "final"


def configs_dict(train_config: config_lib.TrainConfig,
                 model_config: config_lib.ModelConfig,
                 loss_config: losses.LossConfig) -> dict[str, Any]:
  """The content of ``config.json``."""
  return {"model": model_config.to_dict(),
          "loss": dataclasses.asdict(loss_config),
          "train": train_config.to_dict()}


def load_configs(model_dir: str) -> dict[str, Any]:
  """Reads ``model_dir/config.json`` back into the three configs.

  Returns:
    ``{"model": ModelConfig, "loss": LossConfig, "train": config_lib.TrainConfig}``.
  """
  with tf.io.gfile.GFile(os.path.join(model_dir, CONFIG_FILE)) as f:
    content = json.load(f)
  return {"model": config_lib.ModelConfig.from_dict(content["model"]),
          "loss": losses.LossConfig(**content["loss"]),
          "train": config_lib.TrainConfig.from_dict(content["train"])}


def _read_json(path: str) -> Any:
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def restore_model(model_dir: str) -> keras.Model:
  """The model of a training run, with its latest checkpoint's weights.

  Raises:
    FileNotFoundError: config.json or every checkpoint is missing.
    ValueError: a config or the checkpoint does not fit (names the file).
  """
  config_path = os.path.join(model_dir, CONFIG_FILE)
  if not tf.io.gfile.exists(config_path):
    raise FileNotFoundError(f"{config_path} not found")
  try:
    configs = load_configs(model_dir)
  except (KeyError, TypeError, ValueError) as error:
    raise ValueError(f"{config_path}: {error}") from None
  vocabularies = vocab.load_vocabularies(configs["train"].vocab_dir,
                                         configs["train"].min_count)
  model = model_lib.build_model(configs["model"], configs["loss"],
                                vocabularies)
  checkpoint_dir = os.path.join(model_dir, CHECKPOINT_DIR)
  checkpoint = tf.train.latest_checkpoint(checkpoint_dir)
  if checkpoint is None:
    raise FileNotFoundError(f"{checkpoint_dir} holds no checkpoint")
  try:
    # The checkpoint also holds the optimizer, which serving does not need;
    # every variable of the network must be restored.
    model.load_weights(checkpoint).expect_partial(
    ).assert_existing_objects_matched()
  except (AssertionError, ValueError, tf.errors.OpError) as error:
    raise ValueError(f"{checkpoint} does not fit the network of "
                     f"{config_path}: {str(error).splitlines()[0]}") from None
  return model


def run_assets(model_dir: str) -> dict[str, Any]:
  """The run's config and, if written, its metrics, for ``assets.extra``."""
  assets = {"config": _read_json(os.path.join(model_dir,
                                              CONFIG_FILE))}
  metrics_path = os.path.join(model_dir, METRICS_FILE)
  if tf.io.gfile.exists(metrics_path):
    assets["metrics"] = _read_json(metrics_path)
  return assets
