"""The study's data: one simulated and converted dataset per (regime, seed).

Every estimator of a (regime, seed) trains and is scored on the same files,
so their differences are paired. A dataset is simulated by
``escm2_tf.simulator`` and converted by the converter in this process (the
same code as ``escm2-synth`` then ``escm2-convert``); the raw text files are
deleted afterwards except the test split's ground truth. A finished dataset
carries a marker with its settings and is reused by a resumed study.
"""

import dataclasses
import json
import os
import shutil
from typing import Any

from escm2_tf import simulator
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
    ground_truth: The test split's ``ground_truth_test.csv``.
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
      train_data=os.path.join(directory, "train", "*.tfrecord.gz"),
      eval_data=os.path.join(directory, "test", "*.tfrecord.gz"),
      vocab_dir=os.path.join(directory, "train", "vocab"),
      ground_truth=os.path.join(directory, "ground_truth_test.csv"),
      summary=summary)


def prepare(regime: grid.Regime, seed: int, directory: str) -> Dataset:
  """Simulates and converts ``regime`` at ``seed`` into ``directory``.

  Reuses a finished dataset of the same settings; a directory without the
  marker (an interrupted run) is rebuilt from scratch.

  Raises:
    grid.StudyError: ``directory`` holds a dataset of other settings.
  """
  # Imported here: Beam takes seconds to load, and only this step needs it.
  from escm2_pipelines import convert  # pylint: disable=import-outside-toplevel
  config = simulator_config(regime, seed)
  settings = {"simulator": dataclasses.asdict(config),
              "train_shards": TRAIN_SHARDS, "test_shards": TEST_SHARDS}
  marker = os.path.join(directory, _MARKER)
  if os.path.exists(marker):
    with open(marker, encoding="utf-8") as f:
      stored = json.load(f)
    if stored["settings"] != settings:
      raise grid.StudyError(f"{marker} holds a dataset of other settings; "
                            "use another --work_dir")
    return _files(directory, stored["summary"])
  shutil.rmtree(directory, ignore_errors=True)
  raw = os.path.join(directory, "raw")
  summary = simulator.simulate(config, raw)
  summary.pop("files")
  for split, shards in (("train", TRAIN_SHARDS), ("test", TEST_SHARDS)):
    stats = convert.convert(
        os.path.join(directory, split), input_format="aliccp",
        skeleton=os.path.join(raw, f"sample_skeleton_{split}.csv"),
        common_features=os.path.join(raw, f"common_features_{split}.csv"),
        num_shards=shards)
    summary[split]["rows_written"] = stats["rows_written"]
  os.replace(os.path.join(raw, "ground_truth_test.csv"),
             os.path.join(directory, "ground_truth_test.csv"))
  shutil.rmtree(raw)
  temporary = marker + ".tmp"
  with open(temporary, "w", encoding="utf-8") as f:
    json.dump({"settings": settings, "summary": summary}, f, indent=1)
  os.replace(temporary, marker)
  return _files(directory, summary)
