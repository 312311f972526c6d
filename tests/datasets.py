"""Small simulated Ali-CCP datasets for tests, made in-process.

``make_synthetic_data`` runs the simulator and then the converter, exactly as
``escm2-synth`` and ``escm2-convert`` would, and returns the paths a test
needs. Generating the same data twice in one process is avoided: the first
call for a given set of arguments writes into a private cache directory, and
every call copies that into its own ``directory``, so tests may modify or
delete their copy freely.

    import datasets
    import testing
    paths = datasets.make_synthetic_data(testing.new_dir())
    paths["train"]  # glob of the training TFRecords
"""

import os
import shutil
from typing import Any

import testing
from escm2_tf import simulator
from escm2_pipelines import convert

# Far above Ali-CCP's rates (CTR 3.9 %, CVR 0.55 %): a few thousand
# impressions then hold enough clicks and conversions for every AUC.
TEST_CTR = 0.2
TEST_CVR = 0.2
RAW_DIR = "raw"
SPLITS = ("train", "test")
TRAIN_SHARDS = 2

_cache: dict[tuple[Any, ...], str] = {}


def _generate(directory: str, config: simulator.SimulatorConfig) -> None:
  raw = os.path.join(directory, RAW_DIR)
  simulator.simulate(config, raw)
  for split in SPLITS:
    convert.convert(
        os.path.join(directory, split), input_format="aliccp",
        skeleton=os.path.join(raw, f"sample_skeleton_{split}.csv"),
        common_features=os.path.join(raw, f"common_features_{split}.csv"),
        num_shards=TRAIN_SHARDS if split == "train" else 1)


def paths(directory: str) -> dict[str, str]:
  """The paths inside a directory written by ``make_synthetic_data``."""
  raw = os.path.join(directory, RAW_DIR)
  result = {"directory": directory, "raw_dir": raw,
            "vocab_dir": os.path.join(directory, "train", "vocab")}
  for split in SPLITS:
    result[split] = os.path.join(directory, split, "*.tfrecord.gz")
    result[f"ground_truth_{split}"] = os.path.join(
        raw, f"ground_truth_{split}.csv")
  return result


def make_synthetic_data(directory: str, num_train: int = 2000,
                        num_test: int = 1000, seed: int = 0,
                        **simulator_options: Any) -> dict[str, str]:
  """Simulated raw logs, converted to TFRecords, under ``directory``.

  Args:
    directory: Where to put the data (created if missing).
    num_train: Training impressions.
    num_test: Test impressions.
    seed: The simulator's seed.
    **simulator_options: Further ``SimulatorConfig`` fields; ``ctr`` and
      ``cvr`` default to ``TEST_CTR`` and ``TEST_CVR``.

  Returns:
    ``train`` and ``test`` (globs of GZIP TFRecords), ``vocab_dir`` (the
    training data's vocabularies), ``ground_truth_train`` and
    ``ground_truth_test`` (the simulator's CSVs), ``raw_dir`` and
    ``directory``.
  """
  simulator_options = {"ctr": TEST_CTR, "cvr": TEST_CVR, **simulator_options}
  key = (num_train, num_test, seed, tuple(sorted(simulator_options.items())))
  if key not in _cache:
    source = testing.new_dir()
    _generate(source, simulator.SimulatorConfig(
        num_train=num_train, num_test=num_test, seed=seed,
        **simulator_options))
    _cache[key] = source
  shutil.copytree(_cache[key], directory, dirs_exist_ok=True)
  return paths(directory)
