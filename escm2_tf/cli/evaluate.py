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

Memory beyond TensorFlow's: 20 bytes per example (labels and predictions as
float32 columns) and 8 more while the exact AUCs are ranked; the sample ids
are kept only with ``--ground_truth``.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import dataclasses
import os
from typing import Any

from escm2_tf import flagbind
from escm2_tf import tool
from escm2_tf import options
from escm2_tf.options import ConfigError
from escm2_tf.options import option

_PROGRAM = "escm2-evaluate"


@dataclasses.dataclass(frozen=True)
class EvaluateFlags:
  """What to score, with which model, and where the metrics go.

  Attributes:
    data: Glob of GZIP TFRecords to score.
    saved_model: A SavedModel directory, or an export base directory.
    ground_truth: The simulator's ground_truth CSV of data; adds cvr_bias,
      cvr_bias_clicked and auc_cvr_truth.
    batch_size: Examples per signature call.
    output: Where to write the metrics JSON.
  """
  data: str = option("", group="input")
  saved_model: str = option("", group="input")
  ground_truth: str = option("", group="input")
  batch_size: int = option(4096, minimum=1, group="input")
  output: str = option("", group="output")

  def __post_init__(self):
    for name in ("data", "saved_model", "output"):
      if not getattr(self, name):
        raise ConfigError(name, "is required")
    options.check_declared(self)


def _check_flags(settings: EvaluateFlags) -> str:
  """Checks the inputs; returns the SavedModel directory to load."""
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from escm2_tf import evaluation
  from escm2_tf import export
  # pylint: enable=g-import-not-at-top
  try:
    evaluation.check_readable(settings.data)
  except FileNotFoundError:
    raise ConfigError("data", f"no files match {settings.data!r}") from None
  except ValueError as e:
    raise ConfigError("data", str(e)) from None
  try:
    saved_model = export.resolve_saved_model(settings.saved_model)
  except FileNotFoundError as e:
    raise ConfigError("saved_model", str(e)) from None
  output_dir = os.path.dirname(os.path.abspath(settings.output))
  if not tf.io.gfile.isdir(output_dir):
    raise ConfigError("output", f"directory {output_dir} does not exist")
  return saved_model


def _load(saved_model: str) -> Any:
  """The ``serving_default`` signature of the SavedModel directory."""
  from escm2_tf import export  # pylint: disable=g-import-not-at-top
  try:
    return export.load_serving_signature(saved_model)[1]
  except (FileNotFoundError, ValueError) as e:
    raise ConfigError("saved_model", str(e)) from None


def _ground_truth(settings: EvaluateFlags) -> Any:
  """The ground truth, checked against the data's ids and labels up front."""
  # pylint: disable=g-import-not-at-top
  from escm2_tf import evaluation
  from escm2_tf import ground_truth as ground_truth_lib
  # pylint: enable=g-import-not-at-top
  if not settings.ground_truth:
    return None
  ground_truth = ground_truth_lib.read_ground_truth(settings.ground_truth)
  ground_truth_lib.align_ground_truth(ground_truth,
                                      evaluation.read_labels(settings.data),
                                      settings.ground_truth, settings.data)
  return ground_truth


def _evaluate(settings: EvaluateFlags
              ) -> tuple[str, dict[str, int | float]]:
  """Scores the data; returns the SavedModel's path and the metrics."""
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from escm2_tf import evaluation
  # pylint: enable=g-import-not-at-top
  saved_model = _check_flags(settings)
  ground_truth = _ground_truth(settings)
  signature = _load(saved_model)
  try:
    predictions = evaluation.predict_saved_model(
        signature, settings.data, settings.batch_size,
        with_sample_id=ground_truth is not None)
  except tf.errors.OpError as e:
    raise ConfigError("data", f"cannot score {settings.data!r}: "
                      f"{e.message.splitlines()[0]}") from None
  return saved_model, evaluation.compute_metrics(
      predictions, ground_truth, settings.ground_truth, settings.data)


def _run(settings: EvaluateFlags) -> int:
  # pylint: disable=g-import-not-at-top
  from escm2_tf import evaluation
  from escm2_tf import ground_truth as ground_truth_lib
  # pylint: enable=g-import-not-at-top
  try:
    saved_model, metrics = _evaluate(settings)
  except ground_truth_lib.GroundTruthError as e:
    return tool.fail(_PROGRAM, f"--ground_truth: {e}")
  evaluation.write_metrics(settings.output, metrics)
  print(f"Scored {saved_model} on {settings.data}; metrics in "
        f"{settings.output}:")
  print(evaluation.format_table(metrics))
  return 0


TOOL = tool.Tool(_PROGRAM, __doc__,
                 flagbind.Binding(flagbind.Section(EvaluateFlags, "input")),
                 build=lambda binding: binding.build(EvaluateFlags),
                 body=_run)


def run() -> None:
  TOOL.run()
