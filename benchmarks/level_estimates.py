r"""Where a trained model's counterfactual CVR level comes from, split by split.

The final recalibration (``counterfactual_refit.counterfactual_refit``)
sets the entire-space level of pCVR to an IPS estimate over the training
impressions with the model's own pCTR as the propensity ô. This script
scores a kept study model on the records it trained on, on its held-out
validation slice and on the test split, and prints per split, against the
simulator's truth (its ``p_click`` and ``p_conversion``, looked up by sample
id):

- ``ctr_on_clicks`` / ``ctr_off_clicks``: mean pCTR over mean true p_click,
  on the clicked and the unclicked impressions (1 is calibrated; above 1 on
  the trained-on clicks and below elsewhere is memorisation);
- ``inverse_mass``: (1/N) sum o/ô, and ``inverse_mass_true`` with the true
  p_click (near 1 when the propensities are right);
- ``ips``, ``snips``, ``ips_true``: (1/N) sum o r/ô, the same divided by
  ``inverse_mass``, and with the true p_click, each over the split's true mean
  CVR minus 1;
- ``pcvr``: mean pCVR over the true mean CVR minus 1 (the model's bias);
- ``weight_converted`` / ``weight_unconverted``: the mean of 1/ô over that of
  1/p on the converted and on the unconverted clicks (below 1 where ô is
  optimistic: an IPS estimate reads its level from the converted ones);
- ``logit_gap``: the mean of logit(pCVR) - logit(true CVR); ``logit_sd`` and
  ``true_logit_sd``: the standard deviations of the two logits;
  ``logit_corr``: their correlation. At rates far below 0.5 the sigmoid is
  convex, so of two sets of logits with the same mean the more spread one
  has the higher mean pCVR.

The test split also gets a row for the impressions of users with training
records (``test_known_users``) and one for the others (``test_new_users``):
whether a model's level carries to users it has not seen.

With ``--folds=K`` it also cross-fits: K models, each trained with the
library's defaults (and ``--loss``) on all of the training records but one
hash fold of them, each scoring the fold it did not see; the figures over
those out-of-fold predictions are the row ``out_of_fold``.

docs/results.md, "The dense regime with today's defaults", was measured with
models kept by ``escm2-study --keep_models`` (WORK_DIR/models/REGIME/seedS/E)
on their dataset (WORK_DIR/data/REGIME/seedS):

  .venv/bin/python benchmarks/level_estimates.py \
      --data_dir=/tmp/dense/data/dense/seed0 \
      --model_dir=/tmp/dense/models/dense/seed0/dr

and its five-fold rows with ``--folds=5 --seed=0 --work_dir=/tmp/folds`` (no
``--model_dir``).
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import dataclasses
import functools
import json
import os
from typing import Any

import numpy as np

from escm2_tf import config as config_lib
from escm2_tf import flagbind
from escm2_tf import layout
from escm2_tf import options
from escm2_tf import tool
from escm2_tf.options import ConfigError
from escm2_tf.options import option
from escm2_tf.simulator import traffic

_PROGRAM = "level_estimates"
_BATCH_SIZE = 4096
_TRUE_CVR = "p_conversion"
_KNOWN_USER = "known_user"
# Raw ids are non-negative: -1 stands for a record without a user id.
_NO_USER = -1
# A float32 pCVR can round to 0 or 1, whose logit is infinite.
_RATE_CLIP = 1e-7


@dataclasses.dataclass(frozen=True)
class LevelFlags:
  """The dataset and the models trained on it.

  Attributes:
    data_dir: A study dataset: train/, test/ and raw/ground_truth_*.csv.
    model_dir: A model directory trained on it; repeatable.
    folds: Also cross-fit with this many folds (at least 2); 0 for none.
    loss: The cross-fitted models' estimator.
    seed: The cross-fitted models' seed (the study trains seed S on its
      dataset of seed S).
    work_dir: Where the folds and their models go (with --folds).
    output_json: Also write the rows here.
  """
  data_dir: str = option("", group="data")
  model_dir: tuple[str, ...] = option((), group="data", repeatable=True)
  folds: int = option(0, minimum=0, group="data")
  loss: str = option("ipw", choices=config_lib.LOSSES, group="loss")
  seed: int = option(42, minimum=0, group="data")
  work_dir: str = option("", group="data")
  output_json: str = option("", group="output")

  def __post_init__(self):
    options.check_declared(self)
    if not self.data_dir:
      raise ConfigError("data_dir", "is required")
    if not self.model_dir and not self.folds:
      raise ConfigError("model_dir", "is required unless --folds is set")
    if self.folds == 1:
      raise ConfigError("folds", "must be 0 or at least 2, got 1")
    if self.folds and not self.work_dir:
      raise ConfigError("work_dir", "is required with --folds")


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
  converted_clicks = clicked & converted.astype(bool)

  def weight_ratio(mask: np.ndarray) -> float:
    if not mask.any():
      return float("nan")
    return float(np.mean(1 / propensity[mask])
                 / np.mean(1 / true_propensity[mask]))

  logit = _logit(pcvr)
  true_logit = _logit(true_cvr)
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
      "weight_converted": weight_ratio(converted_clicks),
      "weight_unconverted": weight_ratio(clicked & ~converted_clicks),
      "logit_gap": float(np.mean(logit - true_logit)),
      "logit_sd": float(np.std(logit)),
      "true_logit_sd": float(np.std(true_logit)),
      "logit_corr": _correlation(logit, true_logit),
  }


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
  """Pearson's correlation; NaN where either is constant."""
  if np.std(x) == 0.0 or np.std(y) == 0.0:
    return float("nan")
  return float(np.corrcoef(x, y)[0, 1])


def _logit(rates: np.ndarray) -> np.ndarray:
  return traffic.logit(np.clip(rates.astype(np.float64), _RATE_CLIP,
                               1.0 - _RATE_CLIP))


def known_users(train_users: np.ndarray, test_users: np.ndarray
                ) -> np.ndarray:
  """Whether each test record's user has a training record.

  Args:
    train_users: The user id of every training record, ``_NO_USER`` where
      it has none.
    test_users: The same for the test records.

  Returns:
    bool, one per test record; False for a record without a user id.
  """
  has_user = test_users != _NO_USER
  return has_user & np.isin(test_users, train_users[train_users != _NO_USER])


def user_ids(files: str) -> tuple[np.ndarray, np.ndarray]:
  """(sample ids, user ids) of every record, ``_NO_USER`` for none."""
  # pylint: disable=g-import-not-at-top
  from escm2_tf import data
  from escm2_tf import schema
  sample_ids, users = [], []
  for features, _ in data.make_dataset(files, _BATCH_SIZE, training=False,
                                       with_sample_id=True,
                                       with_weights=False):
    sample_ids.append(features[schema.SAMPLE_ID].numpy())
    users.append(features[schema.USER_ID].to_tensor(
        default_value=_NO_USER, shape=[None, 1])[:, 0].numpy())
  return np.concatenate(sample_ids), np.concatenate(users)


def _split_columns(model, files: str, split, tables) -> dict[str, np.ndarray]:
  # pylint: disable=g-import-not-at-top
  from escm2_tf import data
  from escm2_tf import output_logits
  from escm2_tf import schema
  batches = data.make_dataset(files, _BATCH_SIZE, training=False, split=split,
                              with_weights=False, with_sample_id=True)

  def add_labels(features, labels):
    for i, table in enumerate(tables):
      features, labels = table.add(features, labels,
                                   keep_sample_id=i < len(tables) - 1)
    return features, labels

  scored = output_logits.score(model, batches.map(add_labels))
  return {"clicked": scored.clicked,
          "converted": scored.labels[schema.CONVERSION] > 0.5,
          "pctr": scored.outputs[schema.CTR], "pcvr": scored.outputs[schema.CVR],
          **{table.name: scored.labels[table.name] for table in tables}}


def model_rows(data_dir: str, model_dir: str) -> list[dict[str, Any]]:
  """One row per split (train, held_out, test) of one model."""
  # pylint: disable=g-import-not-at-top
  from escm2_tf import fit_policy
  from escm2_tf import run_dir
  config = run_dir.load_config(model_dir)
  model = run_dir.restore_model(model_dir)
  trained_on, held_out = fit_policy.held_out_split(
      config.data.validation_fraction)
  rows = []

  def add_row(name: str, columns: dict[str, np.ndarray]) -> None:
    rows.append({"model_dir": model_dir, "split": name, **split_figures(
        columns["clicked"], columns["converted"], columns["pctr"],
        columns["p_click"], columns["pcvr"], columns[_TRUE_CVR],
        model.loss_config.propensity_clip)})

  for name, split in (("train", trained_on), ("held_out", held_out)):
    add_row(name, _split_columns(model, layout.examples(data_dir,
                                                        layout.TRAIN),
                                 split, _label_tables(data_dir, layout.TRAIN)))
  test = _split_columns(model, layout.examples(data_dir, layout.TEST), None,
                        [_known_user_table(data_dir),
                         *_label_tables(data_dir, layout.TEST)])
  add_row("test", test)
  known = test.pop(_KNOWN_USER) > 0.5
  for name, users in (("test_known_users", known),
                      ("test_new_users", ~known)):
    if users.any():
      add_row(name, {column: values[users]
                     for column, values in test.items()})
  return rows


# Every model of a dataset shares it: read the user ids once.
@functools.cache
def _known_user_table(data_dir: str) -> Any:
  """1 for each test record whose user has training records, else 0."""
  from escm2_tf import data  # pylint: disable=g-import-not-at-top
  _, train_users = user_ids(layout.examples(data_dir, layout.TRAIN))
  sample_ids, test_users = user_ids(layout.examples(data_dir, layout.TEST))
  return data.LabelTable(_KNOWN_USER, sample_ids, known_users(
      train_users, test_users).astype(np.float32))


# The training split's tables serve its trained-on and held-out sides, and
# every model of the same dataset: read each ground truth once.
@functools.cache
def _label_tables(data_dir: str, split_name: str) -> list[Any]:
  """The simulator's p_click and p_conversion of a split, by sample id."""
  # pylint: disable=g-import-not-at-top
  from escm2_tf import data
  from escm2_tf import ground_truth as ground_truth_lib
  truth = ground_truth_lib.read_ground_truth(
      layout.ground_truth(data_dir, split_name))
  return [data.LabelTable(label, truth["sample_id"], truth[label])
          for label in ("p_click", _TRUE_CVR)]


def write_folds(data_dir: str, work_dir: str, folds: int) -> list[str]:
  """The training records in ``folds`` files by a hash of their sample id."""
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from escm2_tf import data
  paths = [os.path.join(work_dir, f"fold{k}.tfrecord.gz")
           for k in range(folds)]
  # In the files' sorted order, so the folds' records keep one order.
  records = tf.data.TFRecordDataset(
      data.list_files(layout.examples(data_dir, layout.TRAIN)),
      compression_type="GZIP").batch(_BATCH_SIZE)
  writers = [tf.io.TFRecordWriter(path, options="GZIP") for path in paths]
  for block in records:
    # Salted, so the folds do not follow the trainer's held-out split.
    fold = tf.strings.to_hash_bucket_fast(
        data.parse_sample_ids(block) + b"#kfold", folds).numpy()
    for record, k in zip(block.numpy(), fold):
      writers[k].write(record)
  for writer in writers:
    writer.close()
  return paths


def cross_fitted_row(data_dir: str, work_dir: str, folds: int,
                     loss: str, seed: int = 42) -> dict[str, Any]:
  """The figures over out-of-fold predictions of ``folds`` models."""
  # pylint: disable=g-import-not-at-top
  from escm2_tf import run_dir
  from escm2_tf import training
  os.makedirs(work_dir, exist_ok=True)
  paths = write_folds(data_dir, work_dir, folds)
  tables = _label_tables(data_dir, layout.TRAIN)
  parts = []
  for k, left_out in enumerate(paths):
    model_dir = os.path.join(work_dir, f"model{k}")
    # The other folds, linked into one directory for the trainer's glob.
    train_dir = os.path.join(work_dir, f"train{k}")
    os.makedirs(train_dir, exist_ok=True)
    for path in paths:
      link = os.path.join(train_dir, os.path.basename(path))
      if path != left_out and not os.path.lexists(link):
        os.symlink(os.path.abspath(path), link)
    config = config_lib.ExperimentConfig.create(
        train_data=os.path.join(train_dir, "*.tfrecord.gz"),
        eval_data=layout.examples(data_dir, layout.TEST),
        vocab_dir=layout.training_vocab_dir(data_dir), model_dir=model_dir,
        export_dir="", loss=loss, seed=seed)
    training.train(config, verbose=0)
    model = run_dir.restore_model(model_dir)
    parts.append(_split_columns(model, left_out, None, tables))
  # The folds' models share the config, hence the clip.
  clip = model.loss_config.propensity_clip
  columns = {name: np.concatenate([part[name] for part in parts])
             for name in parts[0]}
  return {"model_dir": f"{folds} folds, {loss}", "split": "out_of_fold",
          **split_figures(columns["clicked"], columns["converted"],
                          columns["pctr"], columns["p_click"],
                          columns["pcvr"], columns[_TRUE_CVR], clip)}


def markdown(rows: list[dict[str, Any]]) -> str:
  lines = ["| model | split | pCTR/p on clicks | off clicks | (1/N) sum o/ô "
           "| IPS | SNIPS | IPS, true p | pCVR | 1/ô over 1/p: converted, "
           "unconverted clicks | CVR logit gap | logit sd (truth's) "
           "| logit corr |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for row in rows:
    lines.append(
        f"| {row['model_dir']} | {row['split']} | {row['ctr_on_clicks']:.3f} "
        f"| {row['ctr_off_clicks']:.3f} | {row['inverse_mass']:.3f} "
        f"(true {row['inverse_mass_true']:.3f}) | {row['ips']:+.1%} "
        f"| {row['snips']:+.1%} | {row['ips_true']:+.1%} | {row['pcvr']:+.1%} "
        f"| {row['weight_converted']:.3f}, {row['weight_unconverted']:.3f} "
        f"| {row['logit_gap']:+.3f} | {row['logit_sd']:.3f} "
        f"({row['true_logit_sd']:.3f}) | {row['logit_corr']:.3f} |")
  return "\n".join(lines)


def main(settings: LevelFlags) -> int:
  from escm2_tf import evaluation  # pylint: disable=g-import-not-at-top
  rows = []
  for model_dir in settings.model_dir:
    for row in model_rows(settings.data_dir, model_dir):
      print(json.dumps(row), flush=True)
      rows.append(row)
  if settings.folds:
    row = cross_fitted_row(settings.data_dir, settings.work_dir,
                           settings.folds, settings.loss, settings.seed)
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
