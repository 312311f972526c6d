"""escm2-export: exports a trained model_dir as a SavedModel for TF Serving.

  escm2-export --model_dir=runs/escm2_dr --export_dir=serving/escm2

Rebuilds the network from ``model_dir/config.json`` and the vocabularies it
names, restores the latest checkpoint in ``model_dir/checkpoints/`` and writes
``export_dir/<version>/``, with ``config.json`` and ``metrics.json`` copied
into its ``assets.extra/``. An existing version is refused unless
``--overwrite``.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import json
import os
import sys
from typing import Any, Sequence

from absl import app
from absl import flags
import tensorflow as tf
import tf_keras as keras

from escm2_tf import export
from escm2_tf import model as model_lib
from escm2_tf import training
from escm2_tf import vocab

_USAGE_ERROR = 2
_EXISTS_ERROR = 1

# allow_override: escm2-train defines the same names and meanings; tests
# import several CLIs into one process.
_MODEL_DIR = flags.DEFINE_string(
    "model_dir", "", "The training run's directory (config.json, "
    "checkpoints/, metrics.json).", allow_override=True)
_EXPORT_DIR = flags.DEFINE_string(
    "export_dir", "", "TF Serving's model base path; the SavedModel goes to "
    "<export_dir>/<version>/.", allow_override=True)
_VERSION = flags.DEFINE_integer(
    "version", None, "The version number; default: one above the highest "
    "existing version, or 1.", lower_bound=1, allow_override=True)
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace the version if it exists; otherwise an "
    "existing version is an error.", allow_override=True)


def _read_json(path: str) -> Any:
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def restore_model(model_dir: str) -> keras.Model:
  """The model of a training run, with its latest checkpoint's weights.

  Raises:
    FileNotFoundError: config.json or every checkpoint is missing.
    ValueError: a config or the checkpoint does not fit (names the file).
  """
  config_path = os.path.join(model_dir, training.CONFIG_FILE)
  if not tf.io.gfile.exists(config_path):
    raise FileNotFoundError(f"{config_path} not found")
  try:
    configs = training.load_configs(model_dir)
  except (KeyError, TypeError, ValueError) as error:
    raise ValueError(f"{config_path}: {error}") from None
  vocabularies = vocab.load_vocabularies(configs["train"].vocab_dir,
                                         configs["train"].min_count)
  model = model_lib.build_model(configs["model"], configs["loss"],
                                vocabularies)
  checkpoint_dir = os.path.join(model_dir, training.CHECKPOINT_DIR)
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
                                              training.CONFIG_FILE))}
  metrics_path = os.path.join(model_dir, training.METRICS_FILE)
  if tf.io.gfile.exists(metrics_path):
    assets["metrics"] = _read_json(metrics_path)
  return assets


def _fail(message: str, code: int) -> int:
  print(f"escm2-export: error: {message}", file=sys.stderr)
  return code


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    return _fail(f"unexpected arguments {' '.join(argv[1:])!r}", _USAGE_ERROR)
  for holder in (_MODEL_DIR, _EXPORT_DIR):
    if not holder.value:
      return _fail(f"--{holder.name}: is required", _USAGE_ERROR)
  try:
    model = restore_model(_MODEL_DIR.value)
    assets = run_assets(_MODEL_DIR.value)
  except (OSError, ValueError) as error:
    return _fail(f"--model_dir: {error}", _USAGE_ERROR)
  try:
    path = export.export_saved_model(model, _EXPORT_DIR.value,
                                     version=_VERSION.value,
                                     overwrite=_OVERWRITE.value,
                                     extra_assets=assets)
  except FileExistsError as error:
    return _fail(f"--export_dir: {error.filename} exists; pass --overwrite "
                 "to replace it", _EXISTS_ERROR)
  except OSError as error:
    return _fail(f"--export_dir: {error}", _USAGE_ERROR)
  print(f"Exported {path}")
  return 0


def run() -> None:
  app.run(main)
