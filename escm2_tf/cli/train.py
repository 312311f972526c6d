r"""escm2-train: trains ESMM or ESCM2 on converted Ali-CCP TFRecords.

  escm2-train --flagfile=configs/demo.flags
  escm2-train --train_data='data/train/*.tfrecord.gz' \
      --eval_data='data/test/*.tfrecord.gz' --vocab_dir=data/train/vocab \
      --model_dir=runs/dr --export_dir=runs/dr/export --loss=dr

Every input is checked before training starts; a problem is reported as one
line naming the flag, with exit status 2. A NaN loss stops the run with exit
status 1. Rerunning a killed run with the same flags resumes it.

On a cluster, every task runs the same command with its own TF_CONFIG and
--distribution_strategy=multi_worker_mirrored or parameter_server (whose
worker and ps tasks serve until they are stopped); see docs/scaling.md.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import dataclasses
import re
import sys
from typing import Any, Sequence

from absl import app
from absl import flags

from escm2_tf import config as config_lib
from escm2_tf import distribute
from escm2_tf import evaluation
from escm2_tf import losses
from escm2_tf import optimizers
from escm2_tf import training
from escm2_tf import run_dir

_MODEL = config_lib.ModelConfig()
_LOSS = losses.LossConfig()
_TRAIN = {field.name: field.default
          for field in dataclasses.fields(training.TrainConfig)}
_USAGE_ERROR = 2
_DIVERGED = 1
# Each CLI runs in its own process, but the test suite imports them all into
# one: a flag name that other CLIs define too may override theirs there.
_SHARED = True

# Data and outputs.
_TRAIN_DATA = flags.DEFINE_string("train_data", "",
                                  "Glob of training TFRecords.")
_EVAL_DATA = flags.DEFINE_string(
    "eval_data", "", "Glob of TFRecords scored for metrics.json at the end "
    "(never used to choose the stopping epoch).")
_VALIDATION_DATA = flags.DEFINE_string(
    "validation_data", _TRAIN["validation_data"],
    "Glob of TFRecords validated on after every epoch (early stopping "
    "watches them); no file in common with --train_data or --eval_data. "
    "Empty: hold out --validation_fraction of --train_data.")
_VALIDATION_FRACTION = flags.DEFINE_float(
    "validation_fraction", _TRAIN["validation_fraction"],
    "Without --validation_data, the share of --train_data held out for "
    "validation, in (0, 0.5], chosen by a hash of sample_id (the same "
    "records on every run and worker).")
_VOCAB_DIR = flags.DEFINE_string(
    "vocab_dir", "", "The converter's vocab/ directory of the training data.")
_MODEL_DIR = flags.DEFINE_string(
    "model_dir", "", "Checkpoints, backup, TensorBoard logs, config.json, "
    "metrics.json.", allow_override=_SHARED)
_EXPORT_DIR = flags.DEFINE_string(
    "export_dir", "", "Export the final SavedModel to <export_dir>/<version>; "
    "empty for none.", allow_override=_SHARED)
_GROUND_TRUTH = flags.DEFINE_string(
    "ground_truth", "", "The simulator's ground_truth CSV of --eval_data; adds "
    "cvr_bias, cvr_bias_clicked and auc_cvr_truth.", allow_override=_SHARED)

# Schedule.
_EPOCHS = flags.DEFINE_integer(
    "epochs", _TRAIN["epochs"], "The most training epochs; early stopping "
    "usually ends the run sooner.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", _TRAIN["batch_size"],
                                   "Examples per step.", allow_override=_SHARED)
_LEARNING_RATE = flags.DEFINE_float("learning_rate", _TRAIN["learning_rate"],
                                    "The optimizer's learning rate.")
_OPTIMIZER = flags.DEFINE_enum(
    "optimizer", _TRAIN["optimizer"], optimizers.OPTIMIZERS,
    "adam: Keras' Adam; lazy_adam: row-wise Adam for the embedding table, "
    "which updates only the rows a batch uses (faster, docs/benchmarks.md).")
_SEED = flags.DEFINE_integer("seed", _TRAIN["seed"],
                             "Seeds weights, dropout and shuffles.",
                             allow_override=_SHARED)
_DETERMINISTIC = flags.DEFINE_boolean(
    "deterministic", _TRAIN["deterministic"], "Deterministic TensorFlow ops.")
_MIN_COUNT = flags.DEFINE_integer(
    "min_count", _TRAIN["min_count"], "Ids seen fewer times go to OOV rows.")
_STEPS_PER_EXECUTION = flags.DEFINE_integer(
    "steps_per_execution", _TRAIN["steps_per_execution"],
    "Training steps per graph call.")
_EARLY_STOPPING_PATIENCE = flags.DEFINE_integer(
    "early_stopping_patience", _TRAIN["early_stopping_patience"],
    "Stop after this many epochs without improvement of "
    "--early_stopping_monitor and end with the best epoch's weights; 0 for "
    "off (train --epochs epochs, keep the last weights).")
_EARLY_STOPPING_MONITOR = flags.DEFINE_string(
    "early_stopping_monitor", _TRAIN["early_stopping_monitor"],
    "What early stopping watches: val_loss, val_ctcvr_loss, val_auc_cvr, ...")
_BASE_RATE_INIT = flags.DEFINE_boolean(
    "base_rate_init", _TRAIN["base_rate_init"],
    "Start the towers' output biases at the training data's click and "
    "conversion rates (from --stats_file), so training starts calibrated.")
_STATS_FILE = flags.DEFINE_string(
    "stats_file", _TRAIN["stats_file"],
    "The converter's stats.json of --train_data; empty for the one beside "
    "--vocab_dir.")
_VOCAB_CHECK_EXAMPLES = flags.DEFINE_integer(
    "vocab_check_examples", _TRAIN["vocab_check_examples"],
    "Training examples checked against --vocab_dir up front; 0 for none.")
_MAX_UNKNOWN_ID_FRACTION = flags.DEFINE_float(
    "max_unknown_id_fraction", _TRAIN["max_unknown_id_fraction"],
    "Most of a field's sampled ids that may be missing from its vocabulary.")
_STEPS_PER_EPOCH = flags.DEFINE_integer(
    "steps_per_epoch", _TRAIN["steps_per_epoch"],
    "Training steps per epoch; 0 for one pass over --train_data.")

# Distribution.
_DISTRIBUTION_STRATEGY = flags.DEFINE_enum(
    "distribution_strategy", _TRAIN["distribution_strategy"],
    distribute.STRATEGIES, "default (this process), mirrored (this machine's "
    "devices), multi_worker_mirrored or parameter_server (the cluster in "
    "TF_CONFIG).")
_PS_MIN_SHARD_BYTES = flags.DEFINE_integer(
    "ps_min_shard_bytes", _TRAIN["ps_min_shard_bytes"],
    "parameter_server: split a variable larger than this into "
    "min(servers, ceil(bytes / this)) shards, one per parameter server.")

_VERBOSE = flags.DEFINE_integer(
    "verbose", 1, "Keras: 0 silent, 1 progress bar, 2 a line per epoch.",
    lower_bound=0, upper_bound=2)

# Loss.
_LOSS_NAME = flags.DEFINE_enum("loss", _LOSS.loss, losses.LOSSES,
                               "naive, esmm, ipw (ESCM2-IPW) or dr (ESCM2-DR).")
_COMPAT = flags.DEFINE_enum("compat", _LOSS.compat, losses.COMPAT_MODES,
                            "paper, or PaddleRec's escm2 losses.")
_LAMBDA_C = flags.DEFINE_float("lambda_c", _LOSS.lambda_c,
                               "Weight of the (counterfactual) CVR risk.")
_LAMBDA_G = flags.DEFINE_float("lambda_g", _LOSS.lambda_g,
                               "Weight of the global CTCVR risk.")
_LAMBDA_IMP = flags.DEFINE_float("lambda_imp", _LOSS.lambda_imp,
                                 "Weight of the DR imputation risk.")
_PROPENSITY_CLIP = flags.DEFINE_float(
    "propensity_clip", _LOSS.propensity_clip, "Smallest pCTR inverted.")
_MAX_IPS_WEIGHT = flags.DEFINE_float("max_ips_weight", _LOSS.max_ips_weight,
                                     "Cap on 1/pCTR; unset for none.")
_STOP_IPS_GRADIENT = flags.DEFINE_boolean(
    "stop_ips_gradient", _LOSS.stop_ips_gradient,
    "No gradient through the IPS weight into the CTR tower.")
_SELF_NORMALIZED = flags.DEFINE_boolean(
    "self_normalized", _LOSS.self_normalized,
    "Self-normalised IPS: divide the IPS-weighted sums by the batch's sum of "
    "IPS weights instead of its size.")
_EPSILON = flags.DEFINE_float("epsilon", _LOSS.epsilon,
                              "Probability clip in every cross-entropy.")

# Model.
_EMBEDDING_DIM = flags.DEFINE_integer("embedding_dim", _MODEL.embedding_dim,
                                      "Embedding width per field.")
_BACKBONE = flags.DEFINE_enum("backbone", _MODEL.backbone, config_lib.BACKBONES,
                              "Shared layers under the towers.")
_NUM_EXPERTS = flags.DEFINE_integer("num_experts", _MODEL.num_experts,
                                    "MMoE experts.")
_EXPERT_UNITS = flags.DEFINE_list("expert_units", list(map(
    str, _MODEL.expert_units)), "Layer sizes of each MMoE expert.")
_BOTTOM_UNITS = flags.DEFINE_list("bottom_units", list(map(
    str, _MODEL.bottom_units)), "Shared MLP of shared_bottom and dcn.")
_NUM_CROSS_LAYERS = flags.DEFINE_integer(
    "num_cross_layers", _MODEL.num_cross_layers, "Cross layers of dcn.")
_CROSS_PROJECTION_DIM = flags.DEFINE_integer(
    "cross_projection_dim", _MODEL.cross_projection_dim,
    "Low-rank projection of dcn's cross layers; unset for full rank.")
_TOWER_UNITS = flags.DEFINE_list("tower_units", list(map(
    str, _MODEL.tower_units)), "Hidden layer sizes of each task tower.")
_POOLING = flags.DEFINE_enum("pooling", _MODEL.pooling, config_lib.POOLINGS,
                             "Pooling of a field's ids.")
_USE_WEIGHTS = flags.DEFINE_boolean(
    "use_weights", _MODEL.use_weights, "Weight behaviour ids by their values.")
_OOV_BUCKETS = flags.DEFINE_integer("oov_buckets", _MODEL.oov_buckets,
                                    "Embedding rows per field for unknown ids.")
_EMBEDDING_INITIALIZER = flags.DEFINE_enum(
    "embedding_initializer", _MODEL.embedding_initializer,
    config_lib.EMBEDDING_INITIALIZERS, "Embedding initialiser.")
_EMBEDDING_INIT_SCALE = flags.DEFINE_float(
    "embedding_init_scale", _MODEL.embedding_init_scale,
    "Range or stddev of the embedding initialiser.")
_EMBEDDING_L2 = flags.DEFINE_float("embedding_l2", _MODEL.embedding_l2,
                                   "L2 penalty on the looked-up embeddings.")
_EMBEDDING_DROPOUT = flags.DEFINE_float(
    "embedding_dropout", _MODEL.embedding_dropout,
    "Dropout on pooled embeddings.")
_DROPOUT = flags.DEFINE_float("dropout", _MODEL.dropout,
                              "Dropout after hidden layers.")
_ACTIVATION = flags.DEFINE_enum("activation", _MODEL.activation,
                                config_lib.ACTIVATIONS, "Hidden activation.")


class _FlagError(ValueError):
  """A flag value that is invalid; the message starts with the flag."""


def _units(holder: flags.FlagHolder) -> tuple[int, ...]:
  try:
    return tuple(int(unit) for unit in holder.value)
  except ValueError:
    raise _FlagError(f"--{holder.name}: expected comma-separated integers, "
                     f"got {','.join(holder.value)!r}") from None


def _as_flag_error(error: ValueError) -> _FlagError:
  # The configs name their fields ("ModelConfig.num_experts must ..."), and
  # every field has the flag of the same name.
  match = re.search(r"\b(?:ModelConfig|LossConfig)\.(\w+)", str(error))
  if match is None:
    return _FlagError(f"invalid model or loss flags: {error}")
  return _FlagError(f"--{match.group(1)}: {error}")


def _model_config() -> config_lib.ModelConfig:
  return config_lib.ModelConfig(
      embedding_dim=_EMBEDDING_DIM.value, backbone=_BACKBONE.value,
      num_experts=_NUM_EXPERTS.value, expert_units=_units(_EXPERT_UNITS),
      bottom_units=_units(_BOTTOM_UNITS),
      num_cross_layers=_NUM_CROSS_LAYERS.value,
      cross_projection_dim=_CROSS_PROJECTION_DIM.value,
      tower_units=_units(_TOWER_UNITS), pooling=_POOLING.value,
      use_weights=_USE_WEIGHTS.value, oov_buckets=_OOV_BUCKETS.value,
      embedding_initializer=_EMBEDDING_INITIALIZER.value,
      embedding_init_scale=_EMBEDDING_INIT_SCALE.value,
      embedding_l2=_EMBEDDING_L2.value,
      embedding_dropout=_EMBEDDING_DROPOUT.value, dropout=_DROPOUT.value,
      activation=_ACTIVATION.value, seed=_SEED.value)


def _loss_config() -> losses.LossConfig:
  return losses.LossConfig(
      loss=_LOSS_NAME.value, lambda_c=_LAMBDA_C.value,
      lambda_g=_LAMBDA_G.value, lambda_imp=_LAMBDA_IMP.value,
      propensity_clip=_PROPENSITY_CLIP.value,
      max_ips_weight=_MAX_IPS_WEIGHT.value,
      stop_ips_gradient=_STOP_IPS_GRADIENT.value,
      self_normalized=_SELF_NORMALIZED.value, compat=_COMPAT.value,
      epsilon=_EPSILON.value)


def _train_config() -> training.TrainConfig:
  return training.TrainConfig(
      train_data=_TRAIN_DATA.value, eval_data=_EVAL_DATA.value,
      vocab_dir=_VOCAB_DIR.value, model_dir=_MODEL_DIR.value,
      export_dir=_EXPORT_DIR.value, ground_truth=_GROUND_TRUTH.value,
      validation_data=_VALIDATION_DATA.value,
      validation_fraction=_VALIDATION_FRACTION.value, epochs=_EPOCHS.value, batch_size=_BATCH_SIZE.value,
      learning_rate=_LEARNING_RATE.value, optimizer=_OPTIMIZER.value,
      seed=_SEED.value,
      deterministic=_DETERMINISTIC.value, min_count=_MIN_COUNT.value,
      steps_per_execution=_STEPS_PER_EXECUTION.value,
      early_stopping_patience=_EARLY_STOPPING_PATIENCE.value,
      early_stopping_monitor=_EARLY_STOPPING_MONITOR.value,
      base_rate_init=_BASE_RATE_INIT.value, stats_file=_STATS_FILE.value,
      vocab_check_examples=_VOCAB_CHECK_EXAMPLES.value,
      max_unknown_id_fraction=_MAX_UNKNOWN_ID_FRACTION.value,
      distribution_strategy=_DISTRIBUTION_STRATEGY.value,
      steps_per_epoch=_STEPS_PER_EPOCH.value,
      ps_min_shard_bytes=_PS_MIN_SHARD_BYTES.value)


def _configs() -> dict[str, Any]:
  """The three configs from the flags; raises _FlagError naming the flag."""
  try:
    return {"train": _train_config(), "model": _model_config(),
            "loss": _loss_config()}
  except _FlagError:
    raise
  except training.ConfigError as e:
    raise _FlagError(f"--{e.field}: {e.detail}") from None
  except ValueError as e:
    raise _as_flag_error(e) from None


def _fail(message: str, status: int) -> int:
  print(f"escm2-train: error: {message}", file=sys.stderr)
  return status


def _serve_if_server() -> bool:
  """Runs a parameter-server cluster's worker or ps task, if this is one."""
  task = distribute.read_task()
  distribute.check_task(_DISTRIBUTION_STRATEGY.value, task)
  if not distribute.is_server(_DISTRIBUTION_STRATEGY.value, task):
    return False
  print(f"escm2-train: serving as {task} of the parameter-server cluster "
        "until stopped", flush=True)
  distribute.run_server(task)
  return True


def _report(result: dict[str, Any], train_config: training.TrainConfig
            ) -> None:
  """Where split variables went, then the chief's outputs and metrics."""
  for name, shards in result["variable_shards"].items():
    print(f"{name}: {len(shards)} shards: " + ", ".join(
        f"{'x'.join(map(str, shape))} on {device}"
        for shape, device in shards))
  if not result["chief"]:
    print(f"Trained {result['epochs']} epoch(s) as {result['task']}; the "
          "chief writes the checkpoints, metrics and export")
    return
  best = (f", ended with the weights of epoch {result['best_epoch']}"
          if result.get("best_epoch") else "")
  print(f"Trained {result['epochs']} epoch(s){best}; model_dir: "
        f"{train_config.model_dir}")
  if result["export_path"]:
    print(f"Exported SavedModel: {result['export_path']}")
  print(f"Metrics on {train_config.eval_data} "
        f"({run_dir.METRICS_FILE}):")
  print(evaluation.format_table(result["metrics"]))


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    return _fail(f"unexpected arguments {' '.join(argv[1:])!r}", _USAGE_ERROR)
  try:
    if _serve_if_server():
      return 0
    configs = _configs()
    result = training.train(configs["train"], configs["model"],
                            configs["loss"], verbose=_VERBOSE.value)
  except _FlagError as e:
    return _fail(str(e), _USAGE_ERROR)
  except training.ConfigError as e:
    return _fail(f"--{e.field}: {e.detail}", _USAGE_ERROR)
  except distribute.ClusterError as e:
    return _fail(str(e), _USAGE_ERROR)
  except training.TrainingDivergedError as e:
    return _fail(f"training stopped: {e}", _DIVERGED)
  _report(result, configs["train"])
  return 0


def run() -> None:
  app.run(main)
