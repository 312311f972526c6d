r"""How well the CTR tower serves as the propensity model, per setting.

Simulates ``escm2-synth`` defaults (200k training, 50k test impressions, seed
42) once, converts them, then trains ESMM once per variant (an
ExperimentConfig field changed from the defaults) and prints one JSON line
each:
the CTR tower's AUC against the oracle's (the true p_click as the score), its
calibration against the true p_click in deciles, and ``ips_true_cvr``, the
true CVR of the test clicks reweighted by 1/pCTR, i.e. the entire-space CVR
that inverse propensity weighting with these propensities aims at
(``ips_true_cvr_oracle`` with the true propensities; ``true_cvr_mean`` the
target). docs/results.md, "Propensities", was measured with:

  .venv/bin/python benchmarks/propensity_sweep.py --work_dir=/tmp/propensity \
      --variant=default --variant=min_count=10 --variant=min_count=100 ...

A variant is ``NAME`` = ``field=value`` (``default`` for none); every other
setting is the library's default.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import json
import os
import shutil
import time

from absl import app
from absl import flags

from escm2_tf import config as config_lib
from escm2_tf import simulator
from escm2_tf import training

_WORK_DIR = flags.DEFINE_string("work_dir", None, "Data and models.",
                                required=True)
_VARIANTS = flags.DEFINE_multi_string(
    "variant", ["default"], "'default' or FIELD=VALUE of ExperimentConfig.")
_LOSS = flags.DEFINE_string("loss", "esmm", "LossConfig.loss.")
_KEYS = ("auc_ctr", "auc_ctr_oracle", "calibration_ctr",
         "ctr_calibration_error", "ips_true_cvr", "ips_true_cvr_oracle",
         "true_cvr_mean", "cvr_bias", "auc_cvr", "auc_cvr_truth")


def _prepare(work_dir: str) -> str:
  """Simulates and converts once; returns the data directory."""
  from escm2_pipelines import convert  # pylint: disable=import-outside-toplevel
  data = os.path.join(work_dir, "data")
  if os.path.exists(os.path.join(data, "done")):
    return data
  shutil.rmtree(data, ignore_errors=True)
  simulator.simulate(simulator.SimulatorConfig(), os.path.join(data, "raw"))
  for split, shards in (("train", 4), ("test", 2)):
    convert.convert(
        os.path.join(data, split), input_format="aliccp",
        skeleton=os.path.join(data, "raw", f"sample_skeleton_{split}.csv"),
        common_features=os.path.join(data, "raw",
                                     f"common_features_{split}.csv"),
        num_shards=shards)
  open(os.path.join(data, "done"), "w", encoding="utf-8").close()
  return data


def _parse(variant: str) -> dict:
  """'field=value' (a JSON value) -> ExperimentConfig changes."""
  if variant == "default":
    return {}
  field, _, text = variant.partition("=")
  if field in config_lib.SECTION_OF:
    return {field: json.loads(text)}
  raise app.UsageError(f"--variant={variant!r}: no ExperimentConfig field "
                       "of that name")


def main(argv):
  del argv
  data = _prepare(_WORK_DIR.value)
  for variant in _VARIANTS.value:
    changes = _parse(variant)
    model_dir = os.path.join(_WORK_DIR.value, "model")
    shutil.rmtree(model_dir, ignore_errors=True)
    started = time.monotonic()
    result = training.train(
        config_lib.ExperimentConfig.create(
            train_data=os.path.join(data, "train", "*.tfrecord.gz"),
            eval_data=os.path.join(data, "test", "*.tfrecord.gz"),
            vocab_dir=os.path.join(data, "train", "vocab"),
            model_dir=model_dir,
            ground_truth=os.path.join(data, "raw", "ground_truth_test.csv"),
            loss=_LOSS.value, **changes), verbose=0)
    metrics = result["metrics"]
    print(json.dumps({
        "variant": variant, "epochs": result["epochs"],
        "val_loss": [round(v, 5) for v in result["history"]["val_loss"]],
        "seconds": round(time.monotonic() - started),
        **{key: round(metrics[key], 4) for key in _KEYS}}), flush=True)
    shutil.rmtree(model_dir, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
