"""Runs a study: every estimator on every (regime, seed), with the defaults.

Each run calls ``training.train`` with an ``ExperimentConfig`` at its
defaults except the paths, the seed and the estimator's settings (its loss,
or an arm's fields): the study measures what a user of the library gets, not
a tuned model. After
training, the test set is scored once more to bin pCTR and pCVR against the
true probabilities (the reliability curves of the report).

The results file is rewritten (atomically) after every run, so a killed
study resumes where it stopped: runs already in it are skipped.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import dataclasses
import json
import os
import shutil
import time
from typing import Any, Callable, Sequence

import tf_keras as keras

from escm2_tf import config as config_lib
from escm2_tf import evaluation
from escm2_tf import ground_truth as ground_truth_lib
from escm2_tf import layout
from escm2_tf import metrics as metrics_lib
from escm2_tf import options
from escm2_tf import training
from escm2_tf.study import datasets
from escm2_tf.study import floor
from escm2_tf.options import ConfigError
from escm2_tf.study import grid
from escm2_tf.study import regime as regime_lib
from escm2_tf.study import summary as summary_lib

RELIABILITY_BINS = 10
FORMAT_VERSION = 1


class _KeepModel(keras.callbacks.Callback):
  """Holds on to the trained model (best weights restored) for scoring."""

  def __init__(self):
    super().__init__()
    self.trained = None

  def on_train_end(self, logs=None):
    self.trained = self.model


def run_key(regime: regime_lib.Regime, seed: int, estimator: str) -> str:
  """Identifies a run by its regime's settings, not only its name."""
  return json.dumps([dataclasses.asdict(regime), seed, estimator],
                    sort_keys=True)


def _reliability(model: keras.Model, dataset: datasets.Dataset,
                 batch_size: int) -> dict[str, dict[str, list[float]]]:
  columns = evaluation.predict_keras_model(model, dataset.eval_data,
                                           batch_size)
  truth = ground_truth_lib.align_ground_truth(
      ground_truth_lib.read_ground_truth(dataset.ground_truth), columns,
      dataset.ground_truth, dataset.eval_data)
  out = {}
  for output, true_name in (("ctr", "p_click"), ("cvr", "p_conversion")):
    curve = metrics_lib.reliability_curve(columns[output], truth[true_name],
                                          RELIABILITY_BINS)
    out[output] = {name: values.tolist() for name, values in curve.items()}
  return out


def dataset_dir(work_dir: str, regime: str, seed: int) -> str:
  """Where the dataset of (regime, seed) is simulated and converted."""
  return os.path.join(work_dir, "data", regime, f"seed{seed}")


def run_model_dir(work_dir: str, regime: str, seed: int, estimator: str
                  ) -> str:
  """Where a run trains (kept there with ``keep_models``)."""
  return os.path.join(work_dir, "models", regime, f"seed{seed}", estimator)


def train_one(dataset: datasets.Dataset, settings: dict[str, Any],
              seed: int, model_dir: str, keep_model: bool = False,
              callbacks: Sequence[keras.callbacks.Callback] = ()
              ) -> dict[str, Any]:
  """One estimator on one dataset with the library's defaults otherwise.

  Args:
    dataset: The files to train and score on.
    settings: The estimator's config fields (``StudyConfig.settings``).
    seed: Seeds the weights and the order.
    model_dir: Where it trains (emptied first).
    keep_model: Leave ``model_dir`` (``run_dir.restore_model`` reads it)
      instead of removing it once the run is scored.
    callbacks: More Keras callbacks for its ``fit``.
  """
  shutil.rmtree(model_dir, ignore_errors=True)
  config = config_lib.ExperimentConfig.create(
      train_data=dataset.train_data, eval_data=dataset.eval_data,
      vocab_dir=dataset.vocab_dir, model_dir=model_dir,
      ground_truth=dataset.ground_truth, seed=seed, **settings)
  keep = _KeepModel()
  started = time.monotonic()
  result = training.train(
      config, callbacks=[keep, *callbacks], verbose=0,
      propensity_labels=(dataset.train_ground_truth
                         if settings.get("propensity") == "label" else ""))
  reliability = _reliability(keep.trained, dataset,
                             config.trainer.batch_size)
  keras.backend.clear_session()
  if not keep_model:
    shutil.rmtree(model_dir, ignore_errors=True)
  return {"metrics": result["metrics"], "epochs": result["epochs"],
          "best_epoch": result.get("best_epoch"),
          "history": {name: [float(v) for v in values]
                      for name, values in result["history"].items()},
          "reliability": reliability,
          "output_bias_shifts": result["output_bias_shifts"],
          "seconds": time.monotonic() - started}


def _load(path: str, config: grid.StudyConfig) -> dict[str, dict[str, Any]]:
  """Runs of an earlier results file that belong to this grid."""
  if not os.path.exists(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      stored = json.load(f)
    runs = stored["runs"]
  except (OSError, ValueError, KeyError, TypeError) as error:
    raise ConfigError("output_dir", f"{path}: not a study results file "
                      f"({error}); move it away or use another --output_dir"
                      ) from None
  regimes = {r.name: r for r in config.regimes}
  kept = {}
  for run in runs:
    regime = regimes.get(run.get("regime"))
    estimator = run.get("estimator")
    if (regime is not None and run.get("seed") in config.seeds
        and estimator in config.estimators
        and options.same_settings(run.get("regime_settings"), regime)
        # Runs written before arms existed trained a bare loss.
        and run.get("settings", {"loss": estimator})
        == config.settings(estimator)):
      kept[run_key(regime, run["seed"], run["estimator"])] = run
  return kept


def _write_json(path: str, content: dict[str, Any]) -> None:
  layout.atomic_write(path, json.dumps(content, indent=1, sort_keys=True,
                                       allow_nan=False) + "\n")


def _clock(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run_study(config: grid.StudyConfig, work_dir: str, output_json: str,
              progress: Callable[[str], None] = print,
              resume: bool = True, keep_models: bool = False,
              callbacks: Sequence[keras.callbacks.Callback] = ()
              ) -> dict[str, Any]:
  """Trains every run missing from ``output_json`` and writes the results.

  Each run trains in ``work_dir/models/REGIME/seedSEED/ESTIMATOR``, which is
  removed once the run is scored unless ``keep_models``. Every ``fit`` also
  gets ``callbacks``. The results file is rewritten after each run, so an
  interrupted study keeps the runs it finished.

  Returns:
    The results: ``{"version", "grid", "runs": [...], "summary": {...}}``
    (``summary_lib.summarise``), as written to ``output_json``.

  Raises:
    ConfigError: The results file or a dataset belongs to something
      else, or a directory cannot be created (names the flag).
  """
  for flag, directory in (("work_dir", work_dir), ("output_dir",
                          os.path.dirname(os.path.abspath(output_json)))):
    try:
      os.makedirs(directory, exist_ok=True)
    except OSError as error:
      raise ConfigError(flag, f"cannot create {error.filename}: "
                        f"{error.strerror}") from None
  done = _load(output_json, config) if resume else {}
  plan = [(regime, seed, estimator) for regime in config.regimes
          for seed in config.seeds for estimator in config.estimators]
  todo = sum(run_key(*item) not in done for item in plan)
  progress(f"escm2-study: {len(plan)} runs ({len(done)} already in "
           f"{output_json}, {todo} to train)")
  started, trained = time.monotonic(), 0
  runs = dict(done)
  for regime in config.regimes:
    for seed in config.seeds:
      missing = [e for e in config.estimators
                 if run_key(regime, seed, e) not in runs]
      stale = _stale_floors(runs, regime, seed)
      if not missing:
        if stale:
          progress(f"escm2-study: computing the floor of {regime.name} seed "
                   f"{seed} for {len(stale)} run(s) written before it had "
                   f"{', '.join(floor.KINDS)}")
          _set_floor(stale, floor.regime_floor(regime.simulator_config(seed)))
        continue
      dataset = datasets.prepare(regime, seed,
                                 dataset_dir(work_dir, regime.name, seed))
      _set_floor(stale, dataset.summary["floor"])
      for estimator in missing:
        settings = config.settings(estimator)
        record = train_one(dataset, settings, seed, run_model_dir(
            work_dir, regime.name, seed, estimator), keep_models, callbacks)
        record.update(regime=regime.name, seed=seed, estimator=estimator,
                      settings=settings,
                      regime_settings=dataclasses.asdict(regime),
                      data=dataset.summary)
        runs[run_key(regime, seed, estimator)] = record
        trained += 1
        elapsed = time.monotonic() - started
        eta = elapsed / trained * (todo - trained)
        m = record["metrics"]
        progress(f"[{len(runs)}/{len(plan)}] {regime.name} seed {seed} "
                 f"{estimator}: {record['seconds']:.0f} s, "
                 f"{record['epochs']} epoch(s) (kept "
                 f"{record['best_epoch'] or record['epochs']}), cvr_bias "
                 f"{_signed(m.get('cvr_bias'))}, auc_ctr "
                 f"{_plain(m.get('auc_ctr'))}; elapsed {_clock(elapsed)}, "
                 f"ETA {_clock(eta)}")
        _write_json(output_json, _results(config, runs, plan))
  results = _results(config, runs, plan)
  _write_json(output_json, results)
  return results


def _stale_floors(runs: dict[str, dict[str, Any]], regime: regime_lib.Regime,
                  seed: int) -> list[dict[str, Any]]:
  """The runs of ``regime`` and ``seed`` that lack a kind of floor."""
  return [run for run in runs.values()
          if run["regime"] == regime.name and run["seed"] == seed
          and not floor.complete(run.get("data", {}).get("floor"))]


def _set_floor(runs: list[dict[str, Any]], floors: dict[str, Any]) -> None:
  # The floor needs the simulator's world and splits, not the dataset's
  # files, so it is the same for every run of a regime and seed.
  for run in runs:
    run.setdefault("data", {})["floor"] = floors


def _signed(value: float | None) -> str:
  return "nan" if value is None else f"{value:+.4f}"


def _plain(value: float | None) -> str:
  return "nan" if value is None else f"{value:.4f}"


def _results(config: grid.StudyConfig, runs: dict[str, dict[str, Any]],
             plan: list) -> dict[str, Any]:
  ordered = [runs[run_key(*item)] for item in plan if run_key(*item) in runs]
  return {"version": FORMAT_VERSION, "grid": config.to_dict(),
          "runs": ordered,
          "summary": summary_lib.summarise(config, ordered)}
