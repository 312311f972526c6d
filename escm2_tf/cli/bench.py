r"""escm2-bench: throughput, latency and memory from raw logs to serving.

  escm2-bench --output_json=bench.json     (400k impressions, ~3 min on 2 cores)
  escm2-bench --small                       (a smoke run, ~1 min)
  escm2-bench --work_dir=/tmp/bench         (keeps the data, then reuse it:)
  escm2-bench --data_dir=/tmp/bench/data --parts=train,eval

Run it from the repository root, where --hparams finds configs/paddlerec.flags.

Simulates Ali-CCP logs (escm2_tf.simulator), converts them (escm2-convert's
pipeline), then measures, each part in its own process: conversion rows/s and
peak RSS; the tf.data parse ceiling of the converted files; steady-state
training examples/s (and peak RSS) of esmm, ipw and dr with the flagfile's
hyperparameters (configs/paddlerec.flags); evaluation examples/s; and the
serving latency of the exported SavedModel. --parts=quality also trains one
pass with Keras' Adam and with LazyAdam and compares their exact test AUCs.
Prints a table and, with --output_json, writes every figure as JSON.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import json
import os
import platform
import shutil
import sys
import tempfile
from typing import Any, Sequence

from absl import app
from absl import flags

from escm2_tf.bench import harness as benchmark
from escm2_tf.bench import report as bench_report
from escm2_tf.bench import training as training_bench
from escm2_tf import losses
from escm2_tf import optimizers
from escm2_tf import simulator
from escm2_tf.simulator import io as simulator_io

PARTS = ("convert", "parse", "train", "eval", "serve", "quality")
_DEFAULT_PARTS = ("convert", "parse", "train", "eval", "serve")
_SPLITS = ("train", "test")
# pipelines.sinks.STATS_FILE; importing it would load Beam into every part.
_STATS_FILE = "stats.json"
_USAGE_ERROR = 2
_FAILED = 1
# --small: sizes for a smoke run, applied to the flags not given explicitly.
_SMALL = {"train_examples": 2000, "test_examples": 400, "warmup_steps": 2,
          "train_steps": 2, "train_steps_per_execution": 1,
          "serving_requests": 5, "serving_batch_sizes": ["1", "64"]}

# Names are unique among the project's CLIs: the test suite imports them all
# into one process, where a shared name would share one flag.
_WORK_DIR = flags.DEFINE_string(
    "work_dir", "", "Where generated data and the exported model go; a "
    "temporary directory, removed at the end, when empty.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", "", "Reuse the converted train/ and test/ of an earlier "
    "--work_dir instead of generating data (skips the convert part).")
_TRAIN_EXAMPLES = flags.DEFINE_integer(
    "train_examples", 400_000, "Simulated training impressions.", lower_bound=1)
_TEST_EXAMPLES = flags.DEFINE_integer(
    "test_examples", 50_000, "Simulated test impressions.", lower_bound=1)
_DATA_SEED = flags.DEFINE_integer("data_seed", 0, "Seed of the simulator.",
                                  lower_bound=0)
_RAW_FORMAT = flags.DEFINE_enum("raw_format", "aliccp", simulator.FORMATS,
                                "Raw format simulated and converted.")
_MAX_IDS_PER_FIELD = flags.DEFINE_integer(
    "max_ids_per_field", 50, "escm2-convert's --max_values_per_field (its "
    "default is 50; PaddleRec's reader keeps 3).", lower_bound=0)
_PARTS = flags.DEFINE_list("parts", list(_DEFAULT_PARTS),
                           f"What to measure, of {', '.join(PARTS)}.")
_LOSSES = flags.DEFINE_list("losses", ["esmm", "ipw", "dr"],
                            "Estimators whose training is timed; eval and "
                            "serve use the model of the last one.")
_HPARAMS = flags.DEFINE_string(
    "hparams", "configs/paddlerec.flags", "escm2-train flagfile whose model, "
    "loss and batch_size/learning_rate/seed flags are used.")
_TRAIN_OPTIMIZER = flags.DEFINE_enum(
    "train_optimizer", optimizers.SPARSE_ADAM, optimizers.OPTIMIZERS,
    "Optimizer of the timed training runs.")
_TRAIN_STEPS_PER_EXECUTION = flags.DEFINE_integer(
    "train_steps_per_execution", 32, "Keras steps_per_execution.",
    lower_bound=1)
_WARMUP_STEPS = flags.DEFINE_integer(
    "warmup_steps", 64, "Training steps before timing starts.", lower_bound=1)
_TRAIN_STEPS = flags.DEFINE_integer(
    "train_steps", 0, "Timed training steps; 0 for one pass over the "
    "training data.", lower_bound=0)
_SERVING_BATCH_SIZES = flags.DEFINE_list(
    "serving_batch_sizes", ["1", "64", "1024"], "Examples per request.")
_SERVING_REQUESTS = flags.DEFINE_integer(
    "serving_requests", 200, "Timed requests per batch size.", lower_bound=1)
_SMALL_RUN = flags.DEFINE_bool(
    "small", False, "A smoke run: tiny data and few steps, for flags not "
    "given explicitly.")
_OUTPUT_JSON = flags.DEFINE_string("output_json", "",
                                   "Also write every figure to this file.")


class _FlagError(ValueError):
  """A bad flag value; the message starts with the flag."""


def _value(holder: flags.FlagHolder) -> Any:
  if _SMALL_RUN.value and not flags.FLAGS[holder.name].present:
    return _SMALL.get(holder.name, holder.value)
  return holder.value


def _checked_list(holder: flags.FlagHolder,
                  choices: Sequence[str]) -> list[str]:
  values = [value.strip() for value in holder.value]
  unknown = [value for value in values if value not in choices]
  if unknown or not values:
    raise _FlagError(f"--{holder.name}: unknown value(s) "
                     f"{unknown or '(none)'}; choose from {', '.join(choices)}")
  return values


def _serving_batch_sizes() -> list[int]:
  try:
    sizes = [int(size) for size in _value(_SERVING_BATCH_SIZES)]
  except ValueError:
    raise _FlagError("--serving_batch_sizes: expected comma-separated "
                     "integers") from None
  if not sizes or min(sizes) < 1:
    raise _FlagError("--serving_batch_sizes: sizes must be positive")
  return sizes


def _hparams() -> training_bench.HParams:
  try:
    return training_bench.hparams_from_flagfile(_HPARAMS.value)
  except FileNotFoundError:
    raise _FlagError(f"--hparams: {_HPARAMS.value} not found (run from the "
                     "repository root or give its path)") from None
  except ValueError as e:
    raise _FlagError(f"--hparams: {e}") from None


def _settings() -> dict[str, Any]:
  """The run's settings from the flags; raises _FlagError naming one."""
  settings = {"parts": _checked_list(_PARTS, PARTS),
              "losses": _checked_list(_LOSSES, losses.LOSSES),
              "serving_batch_sizes": _serving_batch_sizes()}
  if _DATA_DIR.value and not all(os.path.isdir(os.path.join(
      _DATA_DIR.value, split, "vocab")) for split in _SPLITS):
    raise _FlagError(f"--data_dir: {_DATA_DIR.value} lacks the converted "
                     "train/ and test/ (with vocab/) of an earlier run")
  for holder in (_TRAIN_EXAMPLES, _TEST_EXAMPLES, _WARMUP_STEPS, _TRAIN_STEPS,
                 _TRAIN_STEPS_PER_EXECUTION, _SERVING_REQUESTS):
    settings[holder.name] = _value(holder)
  settings.update(
      hparams=_hparams(), hparams_file=_HPARAMS.value,
      optimizer=_TRAIN_OPTIMIZER.value, raw_format=_RAW_FORMAT.value,
      data_seed=_DATA_SEED.value, max_ids_per_field=_MAX_IDS_PER_FIELD.value)
  return settings


def _simulate(raw_dir: str, settings: dict[str, Any]) -> benchmark.Result:
  stopwatch = benchmark.Stopwatch()
  summary = simulator.simulate(simulator.SimulatorConfig(
      num_train=settings["train_examples"],
      num_test=settings["test_examples"], seed=settings["data_seed"],
      format=settings["raw_format"]), raw_dir)
  rows = summary["train"]["rows"] + summary["test"]["rows"]
  result = benchmark.rates(rows, *stopwatch.read(), "rows")
  result["rows"] = rows
  return result


def _convert(raw_dir: str, data_dir: str,
             settings: dict[str, Any]) -> benchmark.Result:
  # Imported here: Beam is only needed in this part's process.
  from escm2_pipelines import convert  # pylint: disable=g-import-not-at-top
  raw_format = settings["raw_format"]
  result = {"rows_read": 0, "rows_written": 0}
  stopwatch = benchmark.Stopwatch()
  for split in _SPLITS:
    names = simulator_io.file_names(raw_format, split)
    inputs = ({"input": os.path.join(raw_dir, names["paddlerec"])}
              if raw_format == "paddlerec" else
              {"skeleton": os.path.join(raw_dir, names["skeleton"]),
               "common_features": os.path.join(raw_dir, names["common"])})
    stats = convert.convert(
        os.path.join(data_dir, split), input_format=raw_format,
        max_values_per_field=settings["max_ids_per_field"], **inputs)
    result[f"{split}_rows_written"] = stats["rows_written"]
    result["rows_read"] += stats["rows_read"]
    result["rows_written"] += stats["rows_written"]
  result.update(benchmark.rates(result["rows_read"], *stopwatch.read(),
                                "rows"))
  return result


def _count_records(data_dir: str, split: str) -> int:
  with open(os.path.join(data_dir, split, _STATS_FILE),
            encoding="utf-8") as f:
    return int(json.load(f)["rows_written"])


def _training_runs(data_dir: str, export_dir: str,
                   settings: dict[str, Any]) -> dict[str, Any]:
  """The timed training runs, the last one also evaluated and exported."""
  parts = settings["parts"]
  hparams = settings["hparams"]
  timed = settings["train_steps"] or -(-_count_records(
      data_dir, "train") // hparams.batch_size)
  results = {}
  for index, loss in enumerate(settings["losses"]):
    last = index == len(settings["losses"]) - 1
    if not last and "train" not in parts:
      continue
    run = training_bench.TrainingRun(
        data_dir, hparams, loss, settings["optimizer"],
        settings["train_steps_per_execution"], settings["warmup_steps"],
        timed, num_test=(_count_records(data_dir, "test")
                         if last and "eval" in parts else 0),
        export_dir=export_dir if last and "serve" in parts else "")
    results[loss] = benchmark.run_isolated(training_bench.measure_training,
                                           run=run)
  return results


def _quality(data_dir: str, settings: dict[str, Any]) -> dict[str, Any]:
  """Every optimizer of ``optimizers.OPTIMIZERS``, trained alike."""
  hparams = settings["hparams"]
  runs = [training_bench.TrainingRun(
      data_dir, hparams, hparams.loss.loss, name,
      settings["train_steps_per_execution"], settings["warmup_steps"],
      settings["train_steps"]) for name in optimizers.OPTIMIZERS]
  return benchmark.run_isolated(training_bench.measure_quality, runs=runs,
                                num_train=_count_records(data_dir, "train"))


def _measure(work_dir: str, settings: dict[str, Any]) -> dict[str, Any]:
  parts = settings["parts"]
  results: dict[str, Any] = {}
  data_dir = _DATA_DIR.value or os.path.join(work_dir, "data")
  if not _DATA_DIR.value:
    raw_dir = os.path.join(work_dir, "raw")
    results["simulate"] = benchmark.run_isolated(_simulate, raw_dir=raw_dir,
                                                 settings=settings)
    convert = benchmark.run_isolated(_convert, raw_dir=raw_dir,
                                     data_dir=data_dir, settings=settings)
    if "convert" in parts:
      results["convert"] = convert
  results["data"] = {"dir": data_dir,
                     "train_records": _count_records(data_dir, "train"),
                     "test_records": _count_records(data_dir, "test")}
  train_files = benchmark.record_files(os.path.join(data_dir, "train"))
  batch_size = settings["hparams"].batch_size
  if "parse" in parts:
    results["parse"] = benchmark.run_isolated(
        benchmark.measure_parse, file_pattern=train_files,
        batch_size=batch_size,
        num_examples=_count_records(data_dir, "train"))
  if {"train", "eval", "serve"} & set(parts):
    results["training"] = _training_runs(
        data_dir, os.path.join(work_dir, "export"), settings)
  if "serve" in parts:
    saved_model = results["training"][settings["losses"][-1]]["saved_model"]
    results["serve"] = benchmark.run_isolated(
        benchmark.measure_serving, saved_model=saved_model,
        file_pattern=benchmark.record_files(os.path.join(data_dir, "test")),
        batch_sizes=settings["serving_batch_sizes"],
        requests=settings["serving_requests"], warmup=20)
  if "quality" in parts:
    results["quality"] = _quality(data_dir, settings)
  return results


def _machine() -> dict[str, Any]:
  return {"cpu": bench_report.cpu_model(), "cpus": os.cpu_count(),
          "python": platform.python_version(),
          "load_average_start": os.getloadavg()[0]}


def _fail(message: str, status: int) -> int:
  print(f"escm2-bench: error: {message}", file=sys.stderr)
  return status


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    return _fail(f"unexpected arguments {' '.join(argv[1:])!r}", _USAGE_ERROR)
  try:
    settings = _settings()
  except _FlagError as e:
    return _fail(str(e), _USAGE_ERROR)
  machine = _machine()
  work_dir = _WORK_DIR.value or tempfile.mkdtemp(prefix="escm2-bench-")
  try:
    results = _measure(work_dir, settings)
  except benchmark.PartError as e:
    return _fail(str(e), _FAILED)
  finally:
    if not _WORK_DIR.value:
      shutil.rmtree(work_dir, ignore_errors=True)
  machine["load_average_end"] = os.getloadavg()[0]
  report = bench_report.build(machine, settings, results)
  print(bench_report.format_table(report))
  if _OUTPUT_JSON.value:
    with open(_OUTPUT_JSON.value, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2, sort_keys=True)
      f.write("\n")
  return 0


def run() -> None:
  app.run(main)


if __name__ == "__main__":
  run()
