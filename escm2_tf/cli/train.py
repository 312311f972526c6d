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
import os
import sys
import time
from typing import Any

from escm2_tf import config as config_lib
from escm2_tf import console
from escm2_tf import flagbind
from escm2_tf import tool
from escm2_tf.options import option

_PROGRAM = "escm2-train"
_DIVERGED = 1
# The metrics the summary shows; metrics.json has them all.
_HEADLINE = ("auc_ctr", "auc_cvr", "auc_ctcvr", "cvr_bias")


@dataclasses.dataclass(frozen=True)
class _Display:
  """What the trainer prints.

  Attributes:
    verbose: Keras' output: 0 silent, 1 a progress bar (a short line per
      epoch when the output is not a terminal), 2 a line per epoch.
  """
  verbose: int = option(1, minimum=0, maximum=2, group="output")


def _serve_if_server(strategy: str) -> bool:
  """Runs a parameter-server cluster's worker or ps task, if this is one."""
  # pylint: disable-next=g-import-not-at-top
  from escm2_tf import cluster as cluster_lib
  task = cluster_lib.read_task()
  cluster_lib.check_task(strategy, task)
  if not cluster_lib.is_server(strategy, task):
    return False
  print(f"escm2-train: serving as {task} of the parameter-server cluster "
        "until stopped", flush=True)
  cluster_lib.run_server(task)
  return True


def _epoch_line(monitor: str) -> Any:
  """A callback printing one short line per epoch: time, losses, AUCs."""
  import tf_keras as keras  # pylint: disable=g-import-not-at-top
  shown = ("loss", monitor, "val_auc_ctr", "val_auc_cvr", "val_auc_ctcvr")

  class EpochLine(keras.callbacks.Callback):

    def on_epoch_begin(self, epoch, logs=None):
      self.start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
      logs = logs or {}
      values = ", ".join(f"{name} {logs[name]:.4f}" for name in shown
                         if name in logs)
      print(f"Epoch {epoch + 1}/{self.params.get('epochs', '?')}: "
            f"{time.monotonic() - self.start:.0f}s, {values}", flush=True)

  return EpochLine()


def _display(configs: dict[str, Any]) -> dict[str, Any]:
  """Keras' verbosity, and a line per epoch instead of its bar in a log."""
  verbose = configs["display"].verbose
  if verbose == 1 and not sys.stdout.isatty():
    # Keras redraws its bar with backspaces, which fill a log file, and its
    # epoch lines list every metric.
    return {"verbose": 0, "callbacks": [
        _epoch_line(configs["experiment"].trainer.early_stopping_monitor)]}
  return {"verbose": verbose, "callbacks": []}


def _announce(config: config_lib.ExperimentConfig) -> None:
  print(f"{_PROGRAM}: training {config.loss.loss} on a "
        f"{config.model.backbone} network for {config.trainer.epochs} "
        f"epoch(s) of {config.data.train_data}, into "
        f"{config.trainer.model_dir}", flush=True)


def _report(result: dict[str, Any], config: config_lib.ExperimentConfig
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
  from escm2_tf import run_dir  # pylint: disable=g-import-not-at-top
  metrics = result["metrics"]
  best = (f", ended with the weights of epoch {result['best_epoch']}"
          if result.get("best_epoch") else "")
  print(f"Trained {result['epochs']} epoch(s){best}; model_dir: "
        f"{config.trainer.model_dir}")
  if result["export_path"]:
    print(f"Exported SavedModel: {result['export_path']}")
  headline = "  ".join(f"{name} {metrics[name]:.6f}" for name in _HEADLINE
                       if name in metrics)
  print(f"On {int(metrics['count']):,} examples of {config.data.eval_data}: "
        f"{headline}; every metric in "
        f"{os.path.join(config.trainer.model_dir, run_dir.METRICS_FILE)}")


def _train(configs: dict[str, Any]) -> int:
  # Imported once the flags are known to be good: TensorFlow loads slowly.
  # pylint: disable=g-import-not-at-top
  from escm2_tf import cluster as cluster_lib
  from escm2_tf import training
  # pylint: enable=g-import-not-at-top
  experiment = configs["experiment"]
  try:
    if _serve_if_server(experiment.runtime.distribution_strategy):
      return 0
    _announce(experiment)
    display = _display(configs)
    with console.interruptible() as check:
      result = training.train(
          experiment, verbose=display["verbose"],
          callbacks=[*display["callbacks"], console.interrupt_callback(
              check, every_batch=experiment.runtime.distribution_strategy
              != config_lib.PARAMETER_SERVER)])
  except cluster_lib.ClusterError as e:
    return tool.fail(_PROGRAM, str(e))
  except training.TrainingDivergedError as e:
    return tool.fail(_PROGRAM, f"training stopped: {e}", _DIVERGED)
  _report(result, experiment)
  return 0


TOOL = tool.Tool(
    _PROGRAM, __doc__,
    flagbind.Binding(*flagbind.TRAIN_SECTIONS,
                     flagbind.Section(_Display, "output")),
    build=lambda binding: {
        "experiment": binding.build(config_lib.ExperimentConfig),
        "display": binding.build(_Display)},
    body=_train,
    interrupted="interrupted; rerun the same command to resume from the "
    "last completed epoch")


def run() -> None:
  TOOL.run()
