r"""ESMM vs ESCM2-IPW vs ESCM2-DR on simulated Ali-CCP data with ground truth.

Simulates logs with ``escm2-synth``'s simulator, converts them with the
converter, then trains every row on the same data, seed and hyperparameters
for the same fixed number of steps and scores it on held-out impressions
against the simulator's true conversion probabilities. The test split's first
``--validation_shards`` converted shards are the validation set (traced after
every 1/``--rounds_per_epoch`` epoch); the rest is the test set of the table.

Besides the table it measures what the estimators rely on, on the test set:
the CTR tower's calibration, the inverse propensity weights of the clicks
(share clipped, spread, effective sample size, mean o·w which an unbiased
weighting makes 1), and for DR the imputed error δ̂ against the realised δ on
clicks and against the true expected error E[δ] = BCE(p_conversion, pCVR) on
every impression, plus the entire-space CVR risk each estimator estimates.

  .venv/bin/python benchmarks/estimator_table.py --work_dir=/tmp/esttab \
      --output_json=/tmp/esttab/table.json

Rows are ``--row='LABEL|key=value,...'`` (LossConfig fields; repeatable);
without ``--row`` the six rows of docs/results.md. Simulated and converted
data under ``--work_dir`` is reused when its settings match.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import dataclasses
import json
import math
import os
import sys
import time
from typing import Any

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf
import tf_keras as keras

from escm2_tf import config as config_lib
from escm2_tf import data
from escm2_tf import evaluation
from escm2_tf import losses
from escm2_tf import metrics as metrics_lib
from escm2_tf import model as model_lib
from escm2_tf import schema
from escm2_tf import simulator
from escm2_tf import vocab
from escm2_pipelines import convert

_DEFAULT_ROWS = (
    "ESMM|loss=esmm",
    "ESCM2-IPW (paper)|loss=ipw",
    "ESCM2-IPW (paddlerec)|loss=ipw,compat=paddlerec",
    "ESCM2-DR (paper)|loss=dr",
    "ESCM2-DR (paddlerec)|loss=dr,compat=paddlerec",
    "naive|loss=naive",
)
_WORK_DIR = flags.DEFINE_string("work_dir", None, "Data and outputs.")
_OUTPUT_JSON = flags.DEFINE_string("output_json", "", "Results as JSON.")
_ROWS = flags.DEFINE_multi_string("row", list(_DEFAULT_ROWS),
                                  "LABEL|loss=...,lambda_c=...,...")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 1_000_000, "Train impressions.")
_NUM_TEST = flags.DEFINE_integer("num_test", 350_000,
                                 "Held-out impressions (validation + test).")
_TEST_SHARDS = flags.DEFINE_integer("test_shards", 7, "Held-out shards.")
_VALIDATION_SHARDS = flags.DEFINE_integer(
    "validation_shards", 2, "Held-out shards used for validation.")
_EPOCHS = flags.DEFINE_float("epochs", 1.0, "Fixed training length.")
_ROUNDS_PER_EPOCH = flags.DEFINE_integer("rounds_per_epoch", 4,
                                         "Validation traces per epoch.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 1024, "Examples per step.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-3, "Adam's rate.")
_STEPS_PER_EXECUTION = flags.DEFINE_integer("steps_per_execution", 8,
                                            "Steps per graph call.")
_SEED = flags.DEFINE_integer("seed", 0, "Weight and shuffle seed.")
_DATA_SEED = flags.DEFINE_integer("data_seed", 0, "Simulator seed.")
_BASE_RATE_INIT = flags.DEFINE_boolean(
    "base_rate_init", False, "Start the CTR and CVR logits' output biases at "
    "the training data's log-odds instead of 0 (pCTR = pCVR = 0.5).")
_FLAG_HOLDERS = (_ROWS, _NUM_TRAIN, _NUM_TEST, _TEST_SHARDS,
                 _VALIDATION_SHARDS, _EPOCHS, _ROUNDS_PER_EPOCH, _BATCH_SIZE,
                 _LEARNING_RATE, _STEPS_PER_EXECUTION, _SEED, _DATA_SEED,
                 _BASE_RATE_INIT)

# PaddleRec's DR weight: min(o / max(ô, 1e-6), 15); its IPW weight is
# B / (ô · N_clicks) with the same cap on 1/(ô·N), which almost never binds.
_PADDLEREC_CLIP = {"ipw": (losses.PADDLEREC_MIN_PROPENSITY, None),
                   "dr": (losses.PADDLEREC_MIN_PROPENSITY,
                          losses.PADDLEREC_MAX_WEIGHT)}


def _value(key: str, text: str) -> str | float | bool:
  if key in ("loss", "compat"):
    return text
  if key == "stop_ips_gradient":
    if text not in ("true", "false"):
      raise ValueError(f"{key} must be true or false, got {text!r}")
    return text == "true"
  return float(text)


def parse_row(spec: str) -> tuple[str, config_lib.LossConfig]:
  """'LABEL|loss=dr,lambda_c=0.5' -> (label, LossConfig).

  Raises:
    ValueError: An unknown field or a bad value; the message names the row.
  """
  label, _, settings = spec.partition("|")
  fields = {f.name for f in dataclasses.fields(config_lib.LossConfig)}
  try:
    values = {}
    for item in filter(None, settings.split(",")):
      key, _, text = item.partition("=")
      if key not in fields:
        raise ValueError(f"{key!r} is no LossConfig field")
      values[key] = _value(key, text)
    return label, config_lib.LossConfig(**values)
  except ValueError as e:
    raise ValueError(f"--row={spec!r}: {e}") from None


def prepare_data(work_dir: str, config: simulator.SimulatorConfig,
                 test_shards: int) -> dict[str, Any]:
  """Simulates and converts once; reuses the files when settings match."""
  marker = os.path.join(work_dir, "data_settings.json")
  settings = {"simulator": dataclasses.asdict(config),
              "test_shards": test_shards}
  if os.path.exists(marker):
    with open(marker, encoding="utf-8") as f:
      if json.load(f) != settings:
        raise ValueError(f"{marker}: {work_dir} holds data of other settings;"
                         " use a new --work_dir")
  else:
    raw = os.path.join(work_dir, "raw")
    simulator.simulate(config, raw)
    for split, shards in (("train", 8), ("test", test_shards)):
      convert.convert(
          os.path.join(work_dir, "data", split), input_format="aliccp",
          skeleton=os.path.join(raw, f"sample_skeleton_{split}.csv"),
          common_features=os.path.join(raw, f"common_features_{split}.csv"),
          num_shards=shards)
    evaluation.write_json(marker, settings)
  with open(os.path.join(work_dir, "data", "train", "stats.json"),
            encoding="utf-8") as f:
    return json.load(f)


def inverse_propensity(loss_config: config_lib.LossConfig,
                       ctr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The per-click weight the estimator uses, and whether it was clipped."""
  if loss_config.compat == "paddlerec":
    floor, cap = _PADDLEREC_CLIP.get(
        loss_config.loss, (losses.PADDLEREC_MIN_PROPENSITY, None))
  else:
    floor, cap = loss_config.propensity_clip, loss_config.max_ips_weight
  raw = 1.0 / np.maximum(ctr, 1e-12)
  weight = 1.0 / np.maximum(ctr, floor)
  if cap is not None:
    weight = np.minimum(weight, cap)
  return weight, weight < raw * (1 - 1e-6)


def bce(label: np.ndarray, prob: np.ndarray,
        eps: float = config_lib.LossConfig.epsilon) -> np.ndarray:
  """Per-impression cross-entropy in float64, clipped as the losses clip."""
  prob = np.clip(prob.astype(np.float64), eps, 1 - eps)
  return -(label * np.log(prob) + (1 - label) * np.log(1 - prob))


def diagnostics(loss_config: config_lib.LossConfig,
                columns: dict[str, np.ndarray],
                truth: dict[str, np.ndarray]) -> dict[str, float]:
  """Propensity, weight and imputation measurements on held-out data."""
  click = columns[schema.CLICK] == 1
  ctr, cvr = columns["ctr"].astype(np.float64), columns["cvr"]
  weight, clipped = inverse_propensity(loss_config, ctr)
  w = weight[click]
  delta = bce(columns[schema.CONVERSION], cvr)
  expected = bce(truth["p_conversion"], cvr)  # E[δ] under the true CVR.
  out = {
      "mean_pctr": ctr.mean(), "click_rate": click.mean(),
      "mean_true_pctr": truth["p_click"].mean(),
      "clicks_clipped": clipped[click].mean(),
      "ips_normaliser": (click * weight).mean(),  # 1 if weights unbiased.
      "ips_normaliser_true": (click / truth["p_click"]).mean(),
      "ips_weight_mean": w.mean(), "ips_weight_cv": w.std() / w.mean(),
      "ips_ess_fraction": w.sum() ** 2 / (w.size * np.square(w).sum()),
      # The true CVR of the clicks as the weights re-balance them; the
      # entire-space mean is the target (true_cvr_mean).
      "reweighted_true_cvr": np.average(truth["p_conversion"][click],
                                        weights=w),
      "reweighted_true_cvr_true_weights": np.average(
          truth["p_conversion"][click], weights=1 / truth["p_click"][click]),
      "risk_true": expected.mean(),  # What R_IPS and R_err estimate.
      "risk_ips": (click * weight * delta).mean(),
      "risk_naive": delta[click].mean(),
      "mean_pcvr_clicked": cvr[click].mean(),
      "mean_pcvr_unclicked": cvr[~click].mean(),
  }
  if "imputation" in columns:
    imp = columns["imputation"].astype(np.float64)
    error = delta - imp
    # d loss / d δ per click: w for the paper's R_err, w·(1 + 2e) for
    # PaddleRec's joint loss, whose w·e² term also moves the CVR tower.
    slope = (w * (1 + 2 * error[click])
             if loss_config.compat == "paddlerec" else w)
    converted = columns[schema.CONVERSION][click] == 1
    out.update({
        "risk_dr": (imp + click * weight * error).mean(),
        "r_imp": (click * weight * np.square(error)).mean(),
        "imp_mean_clicked": imp[click].mean(),
        "delta_mean_clicked": delta[click].mean(),
        "imp_delta_corr_clicked": np.corrcoef(imp[click], delta[click])[0, 1],
        "imp_mean_unclicked": imp[~click].mean(),
        "expected_delta_unclicked": expected[~click].mean(),
        "imp_expected_corr_all": np.corrcoef(imp, expected)[0, 1],
        "cvr_slope_converted": slope[converted].mean(),
        "cvr_slope_unconverted": slope[~converted].mean(),
    })
  return {k: float(v) for k, v in out.items()}


class _Trace(keras.callbacks.Callback):
  """Times the training rounds and scores the validation set after each."""

  def __init__(self, evaluate):
    super().__init__()
    self._evaluate, self._start = evaluate, 0.0
    self.train_seconds, self.rounds = 0.0, []

  def on_epoch_begin(self, epoch, logs=None):
    self._start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    self.train_seconds += time.perf_counter() - self._start
    self.rounds.append({"train": {k: float(v) for k, v in logs.items()},
                        "validation": self._evaluate()})


def init_output_biases(estimator: keras.Model, stats: dict[str, Any]) -> None:
  """Sets the CTR and CVR towers' last biases to the base rates' log-odds.

  Adam moves a bias by about the learning rate per step, so from 0 the CVR
  logit needs thousands of steps to reach log-odds(4 %) by itself.
  """
  bias = estimator.network.get_layer("towers").biases[-1]
  rates = (stats["clicks"] / stats["rows_written"],
           stats["conversions"] / stats["clicks"])
  values = bias.numpy()
  values[:2, 0] = [math.log(rate / (1 - rate)) for rate in rates]
  bias.assign(values)


def run_row(label: str, loss_config: config_lib.LossConfig,
            files: dict[str, Any],
            truth: dict[str, np.ndarray], stats: dict[str, Any]
            ) -> dict[str, Any]:
  """Trains one estimator for the fixed length; its test metrics."""
  seed, batch = _SEED.value, _BATCH_SIZE.value
  keras.utils.set_random_seed(seed)
  estimator = model_lib.build_model(config_lib.ModelConfig(), loss_config,
                                    files["vocabularies"], seed=seed)
  if _BASE_RATE_INIT.value:
    init_output_biases(estimator, stats)
  num_rows = stats["rows_written"]
  estimator.compile(optimizer=keras.optimizers.Adam(_LEARNING_RATE.value),
                    steps_per_execution=_STEPS_PER_EXECUTION.value)
  rounds = max(1, round(_EPOCHS.value * _ROUNDS_PER_EPOCH.value))
  steps = math.ceil(num_rows / batch / _ROUNDS_PER_EPOCH.value)

  def score(split):
    # Every output, the imputation included, with labels and ids.
    columns = evaluation.predict_keras_model(estimator, files[split], batch,
                                             outputs=None)
    aligned = evaluation.align_ground_truth(truth, columns[schema.SAMPLE_ID],
                                            "ground_truth_test.csv")
    result = metrics_lib.evaluate_predictions(
        columns[schema.CLICK], columns[schema.CONVERSION], columns["ctr"],
        columns["cvr"], columns["ctcvr"], ground_truth=aligned)
    result.update(diagnostics(loss_config, columns, aligned))
    return result

  trace = _Trace(lambda: score("validation"))
  estimator.fit(data.make_dataset(files["train"], batch, training=True,
                                  num_epochs=None, seed=seed),
                epochs=rounds, steps_per_epoch=steps, callbacks=[trace],
                verbose=0)
  result = {"label": label, "loss_config": dataclasses.asdict(loss_config),
            "epochs": rounds * steps * batch / num_rows,
            "examples_per_second": rounds * steps * batch / trace.train_seconds,
            "test": score("test"), "rounds": trace.rounds}
  print(f"{label}: {json.dumps(result['test'])}", flush=True)
  return result


_COLUMNS = ("auc_ctr", "auc_cvr", "auc_cvr_truth", "cvr_bias",
            "cvr_bias_clicked", "auc_ctcvr")
_DIAGNOSTIC_COLUMNS = ("mean_pctr", "clicks_clipped", "ips_normaliser",
                       "ips_weight_cv", "ips_ess_fraction", "risk_true",
                       "risk_ips", "risk_dr")


def markdown(results: list[dict[str, Any]]) -> str:
  """The table, then the diagnostics, as markdown."""
  head = ("estimator",) + _COLUMNS + ("epochs", "train ex/s")
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in results:
    cells = [f"{r['test'][c]:+.4f}" if "bias" in c else f"{r['test'][c]:.4f}"
             for c in _COLUMNS]
    lines.append(f"| {r['label']} | " + " | ".join(cells) +
                 f" | {r['epochs']:.2f} | {r['examples_per_second']:,.0f} |")
  head = ("estimator",) + _DIAGNOSTIC_COLUMNS
  lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in results:
    cells = [f"{r['test'][c]:.4f}" if c in r["test"] else "" for c in
             _DIAGNOSTIC_COLUMNS]
    lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _finite(value: Any) -> Any:
  """The value with NaN (an undefined metric) as None, for strict JSON."""
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_finite(v) for v in value]
  if isinstance(value, float) and math.isnan(value):
    return None
  return value


def _fail(message: str) -> None:
  sys.exit(f"estimator_table: error: {message}")


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments {' '.join(argv[1:])!r}")
  if not _WORK_DIR.value:
    _fail("--work_dir is required")
  if not 0 < _VALIDATION_SHARDS.value < _TEST_SHARDS.value:
    _fail("--validation_shards must be in [1, --test_shards)")
  try:
    rows = [parse_row(spec) for spec in _ROWS.value]
    stats = prepare_data(_WORK_DIR.value, simulator.SimulatorConfig(
        num_train=_NUM_TRAIN.value, num_test=_NUM_TEST.value,
        seed=_DATA_SEED.value), _TEST_SHARDS.value)
  except ValueError as e:  # simulator and converter errors included.
    _fail(str(e))
  data_dir = os.path.join(_WORK_DIR.value, "data")
  held_out = data.list_files(os.path.join(data_dir, "test", "*.tfrecord.gz"))
  files = {"train": os.path.join(data_dir, "train", "*.tfrecord.gz"),
           "validation": held_out[:_VALIDATION_SHARDS.value],
           "test": held_out[_VALIDATION_SHARDS.value:],
           "vocabularies": vocab.load_vocabularies(
               os.path.join(data_dir, "train", "vocab"))}
  truth = evaluation.read_ground_truth(
      os.path.join(_WORK_DIR.value, "raw", "ground_truth_test.csv"))
  tf.config.experimental.enable_op_determinism()
  results = [run_row(label, config, files, truth, stats)
             for label, config in rows]
  print(markdown(results))
  if _OUTPUT_JSON.value:
    evaluation.write_json(_OUTPUT_JSON.value, _finite({
        "flags": {h.name: h.value for h in _FLAG_HOLDERS},
        "train_rows": stats["rows_written"], "results": results}))


if __name__ == "__main__":
  app.run(main)
