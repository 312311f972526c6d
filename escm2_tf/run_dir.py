"""A training run's directory: its layout, and restoring a model from it.

``model_dir`` holds ``config.json`` (the run's ``ExperimentConfig``, for
``escm2-export`` to rebuild the model), ``checkpoints/`` (Keras weights,
``epoch-NNN`` per epoch, then ``final``, which the checkpoint state names as
the latest), ``backup/`` (``BackupAndRestore``; removed when a run completes),
``logs/`` (TensorBoard) and ``metrics.json``.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import json
import os
from typing import Any

import tensorflow as tf
import tf_keras as keras

from escm2_tf import config as config_lib
from escm2_tf import model as model_lib
from escm2_tf import vocab

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"
BACKUP_DIR = "backup"
LOG_DIR = "logs"
FINAL_CHECKPOINT = "final"


def load_config(model_dir: str) -> config_lib.ExperimentConfig:
  """The ``ExperimentConfig`` of the run in ``model_dir``.

  Raises:
    FileNotFoundError: ``model_dir/config.json`` does not exist.
    ValueError: It is not an ``ExperimentConfig``'s JSON; the message names
      the file and says why, in one line.
  """
  path = os.path.join(model_dir, CONFIG_FILE)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path} not found")
  try:
    return config_lib.ExperimentConfig.from_dict(_read_json(path))
  except (TypeError, ValueError) as error:
    raise ValueError(f"{path}: not an escm2-train config "
                     f"({str(error).splitlines()[0]})") from None


def _read_json(path: str) -> Any:
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def restore_model(model_dir: str) -> keras.Model:
  """The model of a training run, with its latest checkpoint's weights.

  Raises:
    FileNotFoundError: config.json or every checkpoint is missing.
    ValueError: a config or the checkpoint does not fit (names the file).
  """
  config = load_config(model_dir)
  config_path = os.path.join(model_dir, CONFIG_FILE)
  vocabularies = vocab.load_vocabularies(config.data.vocab_dir,
                                         config.data.min_count)
  model = model_lib.build_model(config.model, config.loss, vocabularies,
                                seed=config.runtime.seed)
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
