"""The study's data: one simulated and converted dataset per (regime, seed).

Every estimator of a (regime, seed) trains and is scored on the same files,
so their differences are paired. A dataset is made by
``escm2_tf.prepare.prepare_dataset`` (the same code as ``escm2-synth`` then
``escm2-convert``), laid out as ``escm2_tf.layout`` says; the raw logs are
deleted afterwards, the ground truth kept. The regime's identifiable floor
(``escm2_tf.study.floor``) is computed with it, from the same world. A
finished dataset carries a marker with its settings and is reused by a
resumed study.
"""

import dataclasses
import json
import os
import shutil
from typing import Any

from escm2_tf import layout
from escm2_tf import options
from escm2_tf import prepare as prepare_lib
from escm2_tf.options import ConfigError
from escm2_tf.study import floor
from escm2_tf.study import regime as regime_lib

_MARKER = "dataset.json"
TRAIN_SHARDS = 4
TEST_SHARDS = 2


@dataclasses.dataclass(frozen=True)
class Dataset:
  """The files of one (regime, seed), as ``escm2-train`` takes them.

  Attributes:
    train_data: Glob of the training TFRecords.
    eval_data: Glob of the test TFRecords (scored for the table).
    vocab_dir: The training data's vocabularies (``stats.json`` beside).
    ground_truth: The test split's ground truth.
    train_ground_truth: The training split's (the true-propensity arms'
      p_click).
    summary: The simulator's summary of both splits, the converter's row
      counts and the regime's ``floor`` (``floor.identifiable_floor``).
  """
  train_data: str
  eval_data: str
  vocab_dir: str
  ground_truth: str
  train_ground_truth: str
  summary: dict[str, Any]


def _files(directory: str, summary: dict[str, Any]) -> Dataset:
  return Dataset(
      train_data=layout.examples(directory, layout.TRAIN),
      eval_data=layout.examples(directory, layout.TEST),
      vocab_dir=layout.training_vocab_dir(directory),
      ground_truth=layout.ground_truth(directory, layout.TEST),
      train_ground_truth=layout.ground_truth(directory, layout.TRAIN),
      summary=summary)


def _stored(regime: regime_lib.Regime, seed: int, directory: str
            ) -> dict[str, Any] | None:
  """The marker of a finished dataset of ``regime`` and ``seed``, or None.

  None too for a dataset without the ground truth of a split (laid out
  otherwise, or partly deleted) or with an earlier simulator's columns: it
  is made again.

  Raises:
    ConfigError: ``directory`` holds a dataset of other settings.
  """
  marker = os.path.join(directory, _MARKER)
  if not os.path.exists(marker):
    return None
  with open(marker, encoding="utf-8") as f:
    stored = json.load(f)
  if not _same_settings(stored["settings"], regime, seed):
    raise ConfigError("work_dir", f"{marker} holds a dataset of other "
                      "settings; use another --work_dir")
  if not all(_has_current_ground_truth(layout.ground_truth(directory, split))
             for split in (layout.TRAIN, layout.TEST)):
    return None
  return stored


def _same_settings(stored: dict[str, Any], regime: regime_lib.Regime,
                   seed: int) -> bool:
  current = _settings(regime, seed)
  simulator_config = regime.simulator_config(seed)
  return (options.same_settings(stored.get("simulator"), simulator_config)
          and {**stored, "simulator": None} == {**current, "simulator": None})


def _settings(regime: regime_lib.Regime, seed: int) -> dict[str, Any]:
  return {"simulator": dataclasses.asdict(regime.simulator_config(seed)),
          "train_shards": TRAIN_SHARDS, "test_shards": TEST_SHARDS}


def _has_current_ground_truth(path: str) -> bool:
  if not os.path.exists(path):
    return False
  with open(path, encoding="utf-8") as f:
    return f.readline().rstrip("\n") == ",".join(layout.GROUND_TRUTH_HEADER)


def prepare(regime: regime_lib.Regime, seed: int, directory: str) -> Dataset:
  """Simulates and converts ``regime`` at ``seed`` into ``directory``.

  Reuses a finished dataset of the same settings; a directory without the
  marker (an interrupted run) or without the test split's ground truth in
  ``layout.GROUND_TRUTH_HEADER`` (laid out otherwise, written by an earlier
  simulator, or partly deleted) is rebuilt from scratch.

  Raises:
    ConfigError: ``directory`` holds a dataset of other settings
      (``work_dir``).
  """
  config = regime.simulator_config(seed)
  marker = os.path.join(directory, _MARKER)
  stored = _stored(regime, seed, directory)
  if stored is None:
    shutil.rmtree(directory, ignore_errors=True)
    stored = {"settings": _settings(regime, seed),
              "summary": prepare_lib.prepare_dataset(
                  directory, config,
                  {layout.TRAIN: TRAIN_SHARDS, layout.TEST: TEST_SHARDS},
                  keep_raw_logs=False)}
  if not floor.complete(stored["summary"].get("floor")):
    # Datasets made before the floor, or one of its kinds, existed gain it.
    stored["summary"]["floor"] = floor.regime_floor(config)
    layout.atomic_write(marker, json.dumps(stored, indent=1))
  return _files(directory, stored["summary"])
