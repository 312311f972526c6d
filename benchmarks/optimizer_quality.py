r"""Test AUCs of Keras' Adam and LazyAdam after the same training, per seed.

For every seed and optimizer, trains with a flagfile's settings (by default
``configs/paddlerec.flags``) for each of ``--epochs`` (each a fresh run from
the seed's initial weights, on the same batches) and scores the test split
exactly (``metrics.json`` of the run). Each run is its own process.

  .venv/bin/python benchmarks/optimizer_quality.py --data_dir=/tmp/pr \
      --seeds=1,2 --epoch_counts=1,2
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import json
import shutil
import sys
import tempfile

from absl import app
from absl import flags

from escm2_tf import layout
from escm2_tf.bench import harness

_FLAGFILE = flags.DEFINE_string("train_flagfile", "configs/paddlerec.flags",
                                "The escm2-train flagfile.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Converted train/ and test/.")
_SEEDS = flags.DEFINE_list("seeds", ["1", "2"], "Seeds.")
_EPOCHS = flags.DEFINE_list("epoch_counts", ["1", "2"], "Epochs of each run.")
_OPTIMIZERS = flags.DEFINE_list("optimizers", ["adam", "lazy_adam"],
                                "Optimizers.")
_METRICS = ("auc_ctr", "auc_cvr", "auc_ctcvr", "logloss_ctr", "logloss_cvr",
            "logloss_ctcvr")


def _train(argv: list[str]) -> harness.Result:
  """One trainer run in this (fresh) process; its exact test metrics."""
  from escm2_tf.cli import train as train_cli  # pylint: disable=g-import-not-at-top
  from escm2_tf import training  # pylint: disable=g-import-not-at-top
  model_dir = tempfile.mkdtemp(prefix="escm2_quality_")
  binding = train_cli.TOOL.binding.define()
  flags.FLAGS([sys.argv[0], *argv, f"--model_dir={model_dir}",
               "--export_dir="], known_only=True)
  configs = train_cli.TOOL.build(binding)
  result = training.train(configs["experiment"], verbose=0)
  shutil.rmtree(model_dir, ignore_errors=True)
  return {name: result["metrics"][name] for name in _METRICS}


def main(argv):
  if not _DATA_DIR.value:
    sys.exit("optimizer_quality: --data_dir is required")
  data_dir = _DATA_DIR.value
  base = [f"--flagfile={_FLAGFILE.value}",
          f"--train_data={layout.examples(data_dir, layout.TRAIN)}",
          f"--eval_data={layout.examples(data_dir, layout.TEST)}",
          f"--vocab_dir={layout.training_vocab_dir(data_dir)}",
          *argv[1:]]
  rows = []
  for seed in _SEEDS.value:
    for epochs in _EPOCHS.value:
      for optimizer in _OPTIMIZERS.value:
        metrics = harness.run_isolated(_train, argv=base + [
            f"--seed={seed}", f"--epochs={epochs}",
            f"--optimizer={optimizer}"])
        row = {"seed": int(seed), "epochs": int(epochs),
               "optimizer": optimizer,
               **{name: metrics[name] for name in _METRICS}}
        rows.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
  app.run(main)
