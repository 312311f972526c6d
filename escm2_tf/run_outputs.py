"""What a fitted run leaves: its refit outputs, exact metrics and export.

After ``fit``, ``training.train`` refits the output layer (``recalibrate``:
levels on held-out data, the counterfactual CVR's slope and level on the
training data; ``escm2_tf.recalibration``), saves the final weights, and the
chief scores a fresh copy of the model (``local_copy``) on the evaluation
data into ``metrics.json`` and exports it (``score_and_export``).
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import os
from typing import Any

import numpy as np
import tf_keras as keras

from escm2_tf import base_rates as base_rates_lib
from escm2_tf import config as config_lib
from escm2_tf import data
from escm2_tf import divergence
from escm2_tf import evaluation
from escm2_tf import export
from escm2_tf import fit_policy
from escm2_tf import ground_truth as ground_truth_lib
from escm2_tf import model as model_lib
from escm2_tf import recalibration
from escm2_tf import run_dir
from escm2_tf import run_inputs
from escm2_tf import schema


def recalibrate(model: keras.Model, config: config_lib.ExperimentConfig,
                rates: base_rates_lib.BaseRates,
                label_table: data.LabelTable | None) -> dict[str, float]:
  """Refits the output layer: the levels held out, the IPS risks trained on.

  Without validation data (early stopping off), the held-out side is the
  training data.
  """
  train_source, validation_source = run_inputs.sources(config)
  files, split = validation_source or train_source
  held_out = data.make_dataset(files, config.trainer.batch_size,
                               training=False, split=split,
                               with_weights=config.model.use_weights)
  training_files, training_split = train_source
  training = fit_policy.refit_batches(
      training_files,
      validation_fraction=training_split.fraction if training_split else 0.0,
      with_weights=config.model.use_weights, label_table=label_table)
  return recalibration.recalibrate(model, held_out, rates, training)


def local_copy(config: config_lib.ExperimentConfig,
               vocabularies: dict[str, np.ndarray],
               checkpoint: str) -> keras.Model:
  """The trained model, whole, from its final checkpoint, without optimizer.

  The chief scores and exports this copy: the trained model's optimizer
  slots (twice its embedding tables) and training functions are freed
  first. Of a parameter-server model, scoring then reads every variable once
  instead of once per batch from the servers, and the export holds plain
  variables, as TF Serving loads them in one process anyway; the
  coordinator needs the memory of the whole model.
  """
  model = model_lib.build_model(config.model, config.loss, vocabularies)
  # The checkpoint also holds the optimizer, which the copy does not need.
  model.load_weights(checkpoint).expect_partial()
  return model


def _evaluate(model: keras.Model,
              config: config_lib.ExperimentConfig) -> dict[str, float | None]:
  """Scores the eval data exactly and writes ``metrics.json``."""
  predictions = evaluation.predict_keras_model(
      model, config.data.eval_data, config.trainer.batch_size,
      with_sample_id=bool(config.data.ground_truth))
  for name in schema.OUTPUT_NAMES:
    if not np.all(np.isfinite(predictions[name])):
      raise divergence.TrainingDivergedError(
          f"the final model predicts NaN or infinite {name} on eval_data")
  ground_truth = (
      ground_truth_lib.read_ground_truth(config.data.ground_truth)
      if config.data.ground_truth else None)
  metrics = evaluation.compute_metrics(predictions, ground_truth,
                                       config.data.ground_truth,
                                       config.data.eval_data)
  metrics = evaluation.json_metrics(metrics)
  evaluation.write_json(
      os.path.join(config.trainer.model_dir, run_dir.METRICS_FILE), metrics)
  return metrics


def score_and_export(model: keras.Model, config: config_lib.ExperimentConfig
                     ) -> dict[str, Any]:
  """The chief's ``metrics.json`` and export.

  Returns:
    ``{"metrics": as written to metrics.json, "export_path": the
    SavedModel's directory or ""}``.

  Raises:
    divergence.TrainingDivergedError: The model predicts NaN or infinity.
  """
  metrics = _evaluate(model, config)
  export_path = ""
  if config.trainer.export_dir:
    export_path = export.export_saved_model(
        model, config.trainer.export_dir,
        extra_assets={"config": config.to_dict(), "metrics": metrics})
  return {"metrics": metrics, "export_path": export_path}
