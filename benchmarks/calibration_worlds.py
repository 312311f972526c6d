r"""Calibration of every estimator on worlds of different shapes.

Simulates each world (``escm2-synth`` settings), converts it, trains every
estimator with the library's defaults and prints, per estimator and world,
calibration_ctr, calibration_ctcvr and calibration_cvr (mean pCVR over the
test clicks / their conversion rate), each as trained and after the default
recalibration of the output biases (``TrainerConfig.recalibrate``): one run
gives both, since the shift is added to the output logits only. The
``_truth`` columns divide by the simulator's expected labels instead of the
test labels. docs/training.md, "Calibrated by default", was measured with:

  .venv/bin/python benchmarks/calibration_worlds.py --work_dir=/tmp/calworlds

A world is ``NAME`` or ``NAME:field=value,...`` of ``SimulatorConfig``;
``--num_train``, ``--num_test`` and ``--seed`` apply to every world.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import dataclasses
import json
import os
import shutil
import time
from typing import Any

import numpy as np

from escm2_tf import config as config_lib
from escm2_tf import flagbind
from escm2_tf import tool
from escm2_tf import layout
from escm2_tf import options
from escm2_tf import simulator
from escm2_tf.options import ConfigError
from escm2_tf.options import option

_PROGRAM = "calibration_worlds"


@dataclasses.dataclass(frozen=True)
class WorldsFlags:
  """The worlds, the estimators and where they go.

  Attributes:
    work_dir: Data and models.
    world: NAME or NAME:field=value,... of SimulatorConfig; repeatable.
    estimators: LossConfig.loss values.
    num_train: Training impressions per world.
    num_test: Test impressions per world.
    seed: The simulator's and training's.
    output_json: Also write the rows here.
  """
  work_dir: str = option("", group="data")
  world: tuple[str, ...] = option(
      ("dense:num_users=1000,num_items=2000,click_conversion_correlation=0.9",
       "longtail:num_users=500,num_items=50000", "default"),
      group="data", repeatable=True)
  estimators: tuple[str, ...] = option(("naive", "esmm", "ipw", "dr"),
                                       choices=config_lib.LOSSES,
                                       group="loss")
  num_train: int = option(200_000, minimum=1, group="data")
  num_test: int = option(50_000, minimum=1, group="data")
  seed: int = option(0, minimum=0, group="data")
  output_json: str = option("", group="output")

  def __post_init__(self):
    if not self.work_dir:
      raise ConfigError("work_dir", "is required")
    options.check_declared(self)


_FLAGS = flagbind.Binding(flagbind.Section(WorldsFlags, "benchmark"))
_COLUMNS = ("calibration_ctr", "calibration_ctcvr", "calibration_cvr",
            "calibration_ctr_truth", "calibration_ctcvr_truth",
            "calibration_cvr_truth")


def parse_world(spec: str, settings: WorldsFlags
                ) -> tuple[str, simulator.SimulatorConfig]:
  """``NAME:field=value,...`` (JSON values) and the sizes and seed.

  Raises:
    ConfigError: A field or value SimulatorConfig refuses; names --world.
  """
  name, _, fields = spec.partition(":")
  values = {"num_train": settings.num_train, "num_test": settings.num_test,
            "seed": settings.seed}
  try:
    for item in filter(None, fields.split(",")):
      field, _, text = item.partition("=")
      values[field] = json.loads(text)
    return name, simulator.SimulatorConfig(**values)
  except (ValueError, TypeError) as error:
    raise ConfigError("world", f"{spec!r}: {error}") from None


def prepare(directory: str, config: simulator.SimulatorConfig) -> None:
  """Simulates and converts once into ``directory``."""
  if os.path.exists(os.path.join(directory, "done")):
    return
  from escm2_tf import prepare as prepare_lib  # pylint: disable=g-import-not-at-top
  shutil.rmtree(directory, ignore_errors=True)
  prepare_lib.prepare_dataset(directory, config)
  open(os.path.join(directory, "done"), "w", encoding="utf-8").close()


def _keep_model() -> Any:
  """A callback holding on to the trained model (best weights restored)."""
  import tf_keras as keras  # pylint: disable=g-import-not-at-top

  class KeepModel(keras.callbacks.Callback):

    def on_train_end(self, logs=None):
      self.trained = self.model

  return KeepModel()


def _unshifted(columns: dict[str, np.ndarray], shifts: dict[str, float]
               ) -> dict[str, np.ndarray]:
  """The predictions before the recalibration's logit changes."""
  result = dict(columns)
  for task in ("ctr", "cvr"):
    p = np.clip(columns[task].astype(np.float64), 1e-7, 1 - 1e-7)
    slope = shifts.get(f"{task}_slope", 1.0)
    logit = (np.log(p / (1 - p)) - shifts[task]) / slope
    result[task] = 1 / (1 + np.exp(-logit))
  result["ctcvr"] = result["ctr"] * result["cvr"]
  return result


def run(directory: str, estimator: str, seed: int) -> dict:
  """One estimator with every default on one world's data."""
  # pylint: disable=g-import-not-at-top
  import tf_keras as keras
  from escm2_tf import evaluation
  from escm2_tf import ground_truth as ground_truth_lib
  from escm2_tf import training
  # pylint: enable=g-import-not-at-top
  model_dir = os.path.join(directory, "model", estimator)
  shutil.rmtree(model_dir, ignore_errors=True)
  config = config_lib.ExperimentConfig.create(
      train_data=layout.examples(directory, layout.TRAIN),
      eval_data=layout.examples(directory, layout.TEST),
      vocab_dir=layout.training_vocab_dir(directory),
      ground_truth=layout.ground_truth(directory, layout.TEST),
      model_dir=model_dir, seed=seed, loss=estimator)
  keep = _keep_model()
  started = time.monotonic()
  result = training.train(config, callbacks=[keep], verbose=0)
  columns = evaluation.predict_keras_model(keep.trained,
                                           config.data.eval_data,
                                           config.trainer.batch_size)
  as_trained = evaluation.compute_metrics(
      _unshifted(columns, result["output_bias_shifts"]),
      ground_truth_lib.read_ground_truth(config.data.ground_truth),
      config.data.ground_truth)
  keras.backend.clear_session()
  return {"estimator": estimator, "best_epoch": result["best_epoch"],
          "epochs": result["epochs"], "shifts": result["output_bias_shifts"],
          "seconds": round(time.monotonic() - started),
          "as_trained": {k: float(as_trained[k]) for k in _COLUMNS},
          "recalibrated": {k: result["metrics"][k] for k in _COLUMNS},
          "cvr_bias": result["metrics"]["cvr_bias"]}


def reference(directory: str) -> dict[str, float]:
  """What predicting the training data's rates scores on the test labels.

  Recalibrated models aim at the training rates, so they land near these,
  not at 1, when the two samples' rates differ.
  """
  rates = {}
  for split in layout.SPLITS:
    with open(layout.stats_file(layout.split_dir(directory, split)),
              encoding="utf-8") as f:
      stats = json.load(f)
    rates[split] = (stats["clicks"] / stats["rows_written"],
                    stats["conversions"] / stats["clicks"])
  ctr, cvr = (train / test for train, test in zip(rates[layout.TRAIN],
                                                   rates[layout.TEST]))
  return {"calibration_ctr": ctr, "calibration_cvr": cvr,
          "calibration_ctcvr": ctr * cvr}


def markdown(rows: list[dict]) -> str:
  lines = ["| world | estimator | kept epoch | shift ctr, cvr; cvr slope | "
           + " | ".join(c.replace("calibration_", "") for c in _COLUMNS)
           + " | cvr_bias |", "|---" * (5 + len(_COLUMNS)) + "|"]
  for row in rows:
    cells = [f"{row['as_trained'][c]:.3f} → {row['recalibrated'][c]:.3f}"
             for c in _COLUMNS]
    lines.append(f"| {row['world']} | {row['estimator']} | "
                 f"{row['best_epoch']} of {row['epochs']} | "
                 f"{row['shifts']['ctr']:+.3f}, {row['shifts']['cvr']:+.3f}; "
                 f"{row['shifts'].get('cvr_slope', 1.0):.2f} | "
                 + " | ".join(cells) + f" | {row['cvr_bias']:+.4f} |")
  return "\n".join(lines)


def main(settings: WorldsFlags) -> int:
  worlds = [parse_world(spec, settings) for spec in settings.world]
  from escm2_tf import evaluation  # pylint: disable=g-import-not-at-top
  rows = []
  for name, config in worlds:
    directory = os.path.join(settings.work_dir, name)
    prepare(directory, config)
    print(json.dumps({"world": name, "reference": reference(directory)}),
          flush=True)
    for estimator in settings.estimators:
      row = {"world": name, **run(directory, estimator, settings.seed)}
      print(json.dumps(row), flush=True)
      rows.append(row)
  print(markdown(rows))
  if settings.output_json:
    evaluation.write_json(settings.output_json, {"rows": rows})
  return 0


TOOL = tool.Tool(_PROGRAM, __doc__, _FLAGS,
                 build=lambda binding: binding.build(WorldsFlags), body=main)


if __name__ == "__main__":
  TOOL.run()
