r"""Where a trained model's counterfactual CVR level comes from, split by split.

The final recalibration (``recalibration.counterfactual_refit``) sets the
entire-space level of pCVR to an IPS estimate over the training impressions
with the model's own pCTR as the propensity ô. This script scores a kept
study model on the records it trained on, on its held-out validation slice
and on the test split, and prints per split, against the simulator's truth
(its ``p_click`` and ``p_conversion``, looked up by sample id):

- ``ctr_on_clicks`` / ``ctr_off_clicks``: mean pCTR over mean true p_click,
  on the clicked and the unclicked impressions (1 is calibrated; above 1 on
  the trained-on clicks and below elsewhere is memorisation);
- ``inverse_mass``: (1/N) sum o/ô, and ``inverse_mass_true`` with the true
  p_click (near 1 when the propensities are right);
- ``ips``, ``snips``, ``ips_true``: (1/N) sum o r/ô, the same divided by
  ``inverse_mass``, and with the true p_click, each over the split's true mean
  CVR minus 1;
- ``pcvr``: mean pCVR over the true mean CVR minus 1 (the model's bias).

docs/results.md, "The dense regime with today's defaults", was measured with
models kept by ``escm2-study --keep_models`` (WORK_DIR/models/REGIME/seedS/E)
on their dataset (WORK_DIR/data/REGIME/seedS):

  .venv/bin/python benchmarks/level_estimates.py \
      --data_dir=/tmp/dense/data/dense/seed0 \
      --model_dir=/tmp/dense/models/dense/seed0/dr
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import dataclasses
import json
from typing import Any

import numpy as np

from escm2_tf import flagbind
from escm2_tf import layout
from escm2_tf import options
from escm2_tf import tool
from escm2_tf.options import ConfigError
from escm2_tf.options import option

_PROGRAM = "level_estimates"
_BATCH_SIZE = 4096
_TRUE_CVR = "p_conversion"


@dataclasses.dataclass(frozen=True)
class LevelFlags:
  """The dataset and the models trained on it.

  Attributes:
    data_dir: A study dataset: train/, test/ and raw/ground_truth_*.csv.
    model_dir: A model directory trained on it; repeatable.
    output_json: Also write the rows here.
  """
  data_dir: str = option("", group="data")
  model_dir: tuple[str, ...] = option((), group="data", repeatable=True)
  output_json: str = option("", group="output")

  def __post_init__(self):
    for name in ("data_dir", "model_dir"):
      if not getattr(self, name):
        raise ConfigError(name, "is required")
    options.check_declared(self)


_FLAGS = flagbind.Binding(flagbind.Section(LevelFlags, "benchmark"))


def split_figures(clicked: np.ndarray, converted: np.ndarray,
                  pctr: np.ndarray, true_ctr: np.ndarray,
                  pcvr: np.ndarray, true_cvr: np.ndarray,
                  propensity_clip: float) -> dict[str, float]:
  """The figures the module docstring lists, for one split's columns."""
  clicked = clicked.astype(bool)
  propensity = np.maximum(pctr.astype(np.float64), propensity_clip)
  true_propensity = np.maximum(true_ctr.astype(np.float64), propensity_clip)
  outcome = clicked * converted.astype(np.float64)
  truth = float(np.mean(true_cvr))
  inverse_mass = float(np.mean(clicked / propensity))
  ips = float(np.mean(outcome / propensity))
  return {
      "impressions": int(clicked.size),
      "ctr_on_clicks": float(pctr[clicked].mean() / true_ctr[clicked].mean()),
      "ctr_off_clicks": float(pctr[~clicked].mean()
                              / true_ctr[~clicked].mean()),
      "inverse_mass": inverse_mass,
      "inverse_mass_true": float(np.mean(clicked / true_propensity)),
      "true_cvr": truth,
      "ips": ips / truth - 1.0,
      "snips": ips / inverse_mass / truth - 1.0,
      "ips_true": float(np.mean(outcome / true_propensity)) / truth - 1.0,
      "pcvr": float(np.mean(pcvr)) / truth - 1.0,
  }


def _split_columns(model, files: str, split, tables) -> dict[str, np.ndarray]:
  # pylint: disable=g-import-not-at-top
  from escm2_tf import data
  from escm2_tf import recalibration
  from escm2_tf import schema
  batches = data.make_dataset(files, _BATCH_SIZE, training=False, split=split,
                              with_weights=False, with_sample_id=True)

  def add_labels(features, labels):
    for i, table in enumerate(tables):
      features, labels = table.add(features, labels,
                                   keep_sample_id=i < len(tables) - 1)
    return features, labels

  scored = recalibration.score(model, batches.map(add_labels))
  return {"clicked": scored.clicked,
          "converted": scored.labels[schema.CONVERSION] > 0.5,
          "pctr": scored.outputs[schema.CTR], "pcvr": scored.outputs[schema.CVR],
          **{table.name: scored.labels[table.name] for table in tables}}


def model_rows(data_dir: str, model_dir: str) -> list[dict[str, Any]]:
  """One row per split (train, held_out, test) of one model."""
  # pylint: disable=g-import-not-at-top
  from escm2_tf import data
  from escm2_tf import evaluation
  from escm2_tf import fit_policy
  from escm2_tf import run_dir
  config = run_dir.load_config(model_dir)
  model = run_dir.restore_model(model_dir)
  trained_on, held_out = fit_policy.held_out_split(
      config.data.validation_fraction)
  rows = []
  for name, split_name, split in (
      ("train", layout.TRAIN, trained_on),
      ("held_out", layout.TRAIN, held_out),
      ("test", layout.TEST, None)):
    truth = evaluation.read_ground_truth(
        layout.ground_truth(data_dir, split_name))
    tables = [data.LabelTable(label, truth["sample_id"], truth[label])
              for label in ("p_click", _TRUE_CVR)]
    columns = _split_columns(model, layout.examples(data_dir, split_name),
                             split, tables)
    rows.append({"model_dir": model_dir, "split": name, **split_figures(
        columns["clicked"], columns["converted"], columns["pctr"],
        columns["p_click"], columns["pcvr"], columns[_TRUE_CVR],
        model.loss_config.propensity_clip)})
  return rows


def markdown(rows: list[dict[str, Any]]) -> str:
  lines = ["| model | split | pCTR/p on clicks | off clicks | (1/N) sum o/ô "
           "| IPS | SNIPS | IPS, true p | pCVR |",
           "|---|---|---|---|---|---|---|---|---|"]
  for row in rows:
    lines.append(
        f"| {row['model_dir']} | {row['split']} | {row['ctr_on_clicks']:.3f} "
        f"| {row['ctr_off_clicks']:.3f} | {row['inverse_mass']:.3f} "
        f"(true {row['inverse_mass_true']:.3f}) | {row['ips']:+.1%} "
        f"| {row['snips']:+.1%} | {row['ips_true']:+.1%} | {row['pcvr']:+.1%} |")
  return "\n".join(lines)


def main(settings: LevelFlags) -> int:
  from escm2_tf import evaluation  # pylint: disable=g-import-not-at-top
  rows = []
  for model_dir in settings.model_dir:
    for row in model_rows(settings.data_dir, model_dir):
      print(json.dumps(row), flush=True)
      rows.append(row)
  print(markdown(rows))
  if settings.output_json:
    evaluation.write_json(settings.output_json, {"rows": rows})
  return 0


TOOL = tool.Tool(_PROGRAM, __doc__, _FLAGS,
                 build=lambda binding: binding.build(LevelFlags), body=main)


if __name__ == "__main__":
  TOOL.run()
