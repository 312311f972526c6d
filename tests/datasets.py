"""Small simulated Ali-CCP datasets for tests, made in-process.

``make_synthetic_data`` runs the simulator and then the converter
(``escm2_tf.prepare.prepare_dataset``), exactly as ``escm2-synth`` and
``escm2-convert`` would, and returns the paths a test needs. Generating the
same data twice in one process is avoided: the first call for a given set of
arguments writes into a private cache directory, and every call copies that
into its own ``directory``, so tests may modify or delete their copy freely.

    import datasets
    import testing
    paths = datasets.make_synthetic_data(testing.new_dir())
    paths["train"]  # glob of the training TFRecords
"""

import shutil
from typing import Any

import testing
from escm2_tf import layout
from escm2_tf import prepare
from escm2_tf import simulator

# Far above Ali-CCP's rates (CTR 3.9 %, CVR 0.55 %): a few thousand
# impressions then hold enough clicks and conversions for every AUC.
TEST_CTR = 0.2
TEST_CVR = 0.2
NUM_SHARDS = {layout.TRAIN: 2, layout.TEST: 1}

_cache: dict[tuple[Any, ...], str] = {}


def paths(directory: str) -> dict[str, str]:
  """The paths inside a directory written by ``make_synthetic_data``."""
  result = {"directory": directory, "raw_dir": layout.raw_dir(directory),
            "vocab_dir": layout.training_vocab_dir(directory)}
  for split in layout.SPLITS:
    result[split] = layout.examples(directory, split)
    result[f"ground_truth_{split}"] = layout.ground_truth(directory, split)
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
    prepare.prepare_dataset(source, simulator.SimulatorConfig(
        num_train=num_train, num_test=num_test, seed=seed,
        **simulator_options), NUM_SHARDS)
    _cache[key] = source
  shutil.copytree(_cache[key], directory, dirs_exist_ok=True)
  return paths(directory)
