"""The study's data: one simulated and converted dataset per (regime, seed).

Every estimator of a (regime, seed) trains and is scored on the same files,
so their differences are paired. A dataset is made by
``escm2_tf.prepare.prepare_dataset`` (the same code as ``escm2-synth`` then
``escm2-convert``), laid out as ``escm2_tf.layout`` says; the raw logs are
deleted afterwards, the ground truth kept. A finished dataset carries a marker
with its settings and is reused by a resumed study.
"""

import dataclasses
import json
import os
import shutil
from typing import Any

from escm2_tf import layout
from escm2_tf import prepare as prepare_lib
from escm2_tf import simulator
from escm2_tf.options import ConfigError
from escm2_tf.study import grid

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
    summary: The simulator's summary of both splits and the converter's
      row counts.
  """
  train_data: str
  eval_data: str
  vocab_dir: str
  ground_truth: str
  summary: dict[str, Any]


def simulator_config(regime: grid.Regime, seed: int
                     ) -> simulator.SimulatorConfig:
  """The simulator settings of a regime; everything else at its default."""
  return simulator.SimulatorConfig(
      num_train=regime.num_train, num_test=regime.num_test, seed=seed,
      ctr=regime.ctr, cvr=regime.cvr,
      click_conversion_correlation=regime.correlation)


def _files(directory: str, summary: dict[str, Any]) -> Dataset:
  return Dataset(
      train_data=layout.examples(directory, layout.TRAIN),
      eval_data=layout.examples(directory, layout.TEST),
      vocab_dir=layout.training_vocab_dir(directory),
      ground_truth=layout.ground_truth(directory, layout.TEST),
      summary=summary)


def _has_current_ground_truth(dataset: Dataset) -> bool:
  if not os.path.exists(dataset.ground_truth):
    return False
  with open(dataset.ground_truth, encoding="utf-8") as f:
    return f.readline().rstrip("\n") == ",".join(layout.GROUND_TRUTH_HEADER)


def prepare(regime: grid.Regime, seed: int, directory: str) -> Dataset:
  """Simulates and converts ``regime`` at ``seed`` into ``directory``.

  Reuses a finished dataset of the same settings; a directory without the
  marker (an interrupted run) or without the test split's ground truth in
  ``layout.GROUND_TRUTH_HEADER`` (laid out otherwise, written by an earlier
  simulator, or partly deleted) is rebuilt from scratch.

  Raises:
    ConfigError: ``directory`` holds a dataset of other settings
      (``work_dir``).
  """
  config = simulator_config(regime, seed)
  settings = {"simulator": dataclasses.asdict(config),
              "train_shards": TRAIN_SHARDS, "test_shards": TEST_SHARDS}
  marker = os.path.join(directory, _MARKER)
  if os.path.exists(marker):
    with open(marker, encoding="utf-8") as f:
      stored = json.load(f)
    if stored["settings"] != settings:
      raise ConfigError("work_dir", f"{marker} holds a dataset of other "
                        "settings; use another --work_dir")
    dataset = _files(directory, stored["summary"])
    if _has_current_ground_truth(dataset):
      return dataset
  shutil.rmtree(directory, ignore_errors=True)
  summary = prepare_lib.prepare_dataset(
      directory, config, {layout.TRAIN: TRAIN_SHARDS, layout.TEST: TEST_SHARDS},
      keep_raw_logs=False)
  layout.atomic_write(marker, json.dumps(
      {"settings": settings, "summary": summary}, indent=1))
  return _files(directory, summary)
