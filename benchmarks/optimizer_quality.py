r"""Test AUCs of Keras' Adam and LazyAdam after the same training, per seed.

For every seed and optimizer, trains with a flagfile's settings (by default
the shipped ``configs/paddlerec.flags``) for each of ``--epoch_counts`` (each
a fresh run from the seed's initial weights, on the same batches) and scores
the test split exactly (``metrics.json`` of the run). Each run is its own
process.

  .venv/bin/python benchmarks/optimizer_quality.py --data_dir=/tmp/pr \
      --seeds=1,2 --epoch_counts=1,2

Arguments after ``--`` are escm2-train flags that override the flagfile.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import dataclasses
import json
import shutil
import tempfile
from typing import Any

from escm2_tf import config as config_lib
from escm2_tf import flagbind
from escm2_tf import tool
from escm2_tf import layout
from escm2_tf import options
from escm2_tf.bench import hparams as hparams_lib
from escm2_tf.options import option

_PROGRAM = "optimizer_quality"
_METRICS = ("auc_ctr", "auc_cvr", "auc_ctcvr", "logloss_ctr", "logloss_cvr",
            "logloss_ctcvr")


@dataclasses.dataclass(frozen=True)
class QualityFlags:
  """The runs to compare.

  Attributes:
    data_dir: Converted train/ and test/ (as escm2-convert writes them).
    train_flagfile: The escm2-train flagfile, or a shipped config's name.
    seeds: Seeds.
    epoch_counts: Epochs of each run.
    optimizers: Optimizers.
  """
  data_dir: str = option("", group="data")
  train_flagfile: str = option("paddlerec", group="training")
  seeds: tuple[int, ...] = option((1, 2), minimum=0)
  epoch_counts: tuple[int, ...] = option((1, 2), minimum=1)
  optimizers: tuple[str, ...] = option(("adam", "lazy_adam"),
                                       choices=config_lib.OPTIMIZERS)

  def __post_init__(self):
    if not self.data_dir:
      raise options.ConfigError("data_dir", "is required")
    options.check_declared(self)


_FLAGS = flagbind.Binding(flagbind.Section(QualityFlags, "benchmark"))


def _train(args: list[str]) -> dict[str, Any]:
  """One trainer run in this (fresh) process; its exact test metrics."""
  from escm2_tf import training  # pylint: disable=g-import-not-at-top
  model_dir = tempfile.mkdtemp(prefix="escm2_quality_")
  config = hparams_lib.experiment_config(
      [*args, f"--model_dir={model_dir}", "--export_dir="])
  result = training.train(config, verbose=0)
  shutil.rmtree(model_dir, ignore_errors=True)
  return {name: result["metrics"][name] for name in _METRICS}


def main(settings: QualityFlags, args: list[str]) -> int:
  # Imports TensorFlow, which the tool's quiet start-up filters.
  from escm2_tf.bench import harness  # pylint: disable=g-import-not-at-top
  data_dir = settings.data_dir
  base = [
      f"--flagfile={hparams_lib.flagfile_path(settings.train_flagfile)}",
      f"--train_data={layout.examples(data_dir, layout.TRAIN)}",
      f"--eval_data={layout.examples(data_dir, layout.TEST)}",
      f"--vocab_dir={layout.training_vocab_dir(data_dir)}", *args]
  for seed in settings.seeds:
    for epochs in settings.epoch_counts:
      for optimizer in settings.optimizers:
        metrics = harness.run_isolated(_train, args=base + [
            f"--seed={seed}", f"--epochs={epochs}",
            f"--optimizer={optimizer}"])
        print(json.dumps({"seed": seed, "epochs": epochs,
                          "optimizer": optimizer, **metrics}), flush=True)
  return 0


TOOL = tool.Tool(_PROGRAM, __doc__, _FLAGS,
                 build=lambda binding: binding.build(QualityFlags), body=main,
                 passes_args=True)


if __name__ == "__main__":
  TOOL.run()
