r"""escm2-evaluate: exact metrics of an exported SavedModel on TFRecords.

  escm2-evaluate --data='demo_output/data/test/*.tfrecord.gz' \
      --saved_model=demo_output/export \
      --ground_truth=demo_output/raw/ground_truth_test.csv \
      --output=demo_output/evaluation.json

The model is loaded with tf.saved_model.load and fed the serialized
tf.Examples of the TFRecords through its ``serving_default`` signature, as a
serving client would; labels and ``sample_id`` are parsed from the same
records. ``--saved_model`` is a SavedModel directory or an export base
directory (its highest version is used). With the simulator's ground truth,
joined by ``sample_id``, the metrics include the CVR bias.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import os
import sys
from typing import Sequence

from absl import app
from absl import flags
import tensorflow as tf

from escm2_tf import evaluation
from escm2_tf import export
from escm2_tf import serving

_USAGE_ERROR = 2
# Each CLI runs in its own process, but the test suite imports them all into
# one: a flag name that other CLIs define too may override theirs there.
_SHARED = True

_DATA = flags.DEFINE_string("data", "", "Glob of GZIP TFRecords to score.",
                            allow_override=_SHARED)
_SAVED_MODEL = flags.DEFINE_string(
    "saved_model", "", "A SavedModel directory, or an export base directory.",
    allow_override=_SHARED)
_OUTPUT = flags.DEFINE_string("output", "", "Where to write the metrics JSON.",
                              allow_override=_SHARED)
_GROUND_TRUTH = flags.DEFINE_string(
    "ground_truth", "", "The simulator's ground_truth CSV of --data; adds "
    "cvr_bias, cvr_bias_clicked and auc_cvr_truth.", allow_override=_SHARED)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 4096, "Examples per signature call.", lower_bound=1,
    allow_override=_SHARED)


class _FlagError(ValueError):
  """A flag value that is invalid; the message starts with the flag."""


def _check_flags() -> str:
  """Checks the flags; returns the SavedModel directory to load."""
  for holder in (_DATA, _SAVED_MODEL, _OUTPUT):
    if not holder.value:
      raise _FlagError(f"--{holder.name}: is required")
  try:
    evaluation.check_readable(_DATA.value)
  except FileNotFoundError:
    raise _FlagError(f"--data: no files match {_DATA.value!r}") from None
  except ValueError as e:
    raise _FlagError(f"--data: {e}") from None
  try:
    saved_model = export.resolve_saved_model(_SAVED_MODEL.value)
  except FileNotFoundError as e:
    raise _FlagError(f"--saved_model: {e}") from None
  output_dir = os.path.dirname(os.path.abspath(_OUTPUT.value))
  if not tf.io.gfile.isdir(output_dir):
    raise _FlagError(f"--output: directory {output_dir} does not exist")
  return saved_model


def _load(saved_model: str) -> tf.Module:
  try:
    loaded = tf.saved_model.load(saved_model)
  except (OSError, ValueError, tf.errors.OpError) as e:
    raise _FlagError(f"--saved_model: cannot load {saved_model}: "
                     f"{str(e).splitlines()[0]}") from None
  if serving.EXAMPLES_SIGNATURE not in loaded.signatures:
    raise _FlagError(
        f"--saved_model: {saved_model} has no {serving.EXAMPLES_SIGNATURE} "
        f"signature (it has {', '.join(loaded.signatures) or 'none'})")
  return loaded


def _ground_truth() -> evaluation.Columns | None:
  """The ground truth, checked against the data's sample ids up front."""
  if not _GROUND_TRUTH.value:
    return None
  ground_truth = evaluation.read_ground_truth(_GROUND_TRUTH.value)
  evaluation.align_ground_truth(ground_truth,
                                evaluation.read_sample_ids(_DATA.value),
                                _GROUND_TRUTH.value)
  return ground_truth


def _fail(message: str) -> int:
  print(f"escm2-evaluate: error: {message}", file=sys.stderr)
  return _USAGE_ERROR


def _evaluate() -> tuple[str, dict[str, int | float]]:
  """Scores the data; returns the SavedModel's path and the metrics."""
  saved_model = _check_flags()
  ground_truth = _ground_truth()
  loaded = _load(saved_model)
  try:
    predictions = evaluation.predict_saved_model(
        loaded.signatures[serving.EXAMPLES_SIGNATURE], _DATA.value,
        _BATCH_SIZE.value)
  except tf.errors.OpError as e:
    raise _FlagError(f"--data: cannot score {_DATA.value!r}: "
                     f"{e.message.splitlines()[0]}") from None
  return saved_model, evaluation.compute_metrics(
      predictions, ground_truth, _GROUND_TRUTH.value)


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    return _fail(f"unexpected arguments {' '.join(argv[1:])!r}")
  try:
    saved_model, metrics = _evaluate()
  except _FlagError as e:
    return _fail(str(e))
  except evaluation.GroundTruthError as e:
    return _fail(f"--ground_truth: {e}")
  evaluation.write_metrics(_OUTPUT.value, metrics)
  print(f"Scored {saved_model} on {_DATA.value}; metrics in {_OUTPUT.value}:")
  print(evaluation.format_table(metrics))
  return 0


def run() -> None:
  app.run(main)
