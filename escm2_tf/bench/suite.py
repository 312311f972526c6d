"""The parts of ``escm2-bench``: data, conversion, parsing, training, serving.

``measure`` simulates and converts the data (unless ``settings["data_dir"]``
holds an earlier run's), then measures each part of ``settings["parts"]`` in
its own process (``harness.run_isolated``); ``settings`` is what the CLI
built from its flags.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import json
import os
import platform
from typing import Any

from escm2_tf import config as config_lib
from escm2_tf import layout
from escm2_tf import prepare
from escm2_tf import simulator
from escm2_tf.bench import harness as benchmark
from escm2_tf.bench import report as bench_report
from escm2_tf.bench import training as training_bench


def _simulate(data_dir: str, settings: dict[str, Any]) -> benchmark.Result:
  stopwatch = benchmark.Stopwatch()
  summary = prepare.simulate_raw(simulator.SimulatorConfig(
      num_train=settings["train_examples"],
      num_test=settings["test_examples"], seed=settings["data_seed"],
      format=settings["raw_format"]), data_dir)
  rows = sum(summary[split]["rows"] for split in layout.SPLITS)
  result = benchmark.rates(rows, *stopwatch.read(), "rows")
  result["rows"] = rows
  return result


def _convert(data_dir: str, settings: dict[str, Any]) -> benchmark.Result:
  result = {"rows_read": 0, "rows_written": 0}
  stopwatch = benchmark.Stopwatch()
  stats = prepare.convert_raw(
      data_dir, settings["raw_format"],
      max_values_per_field=settings["max_ids_per_field"])
  for split in layout.SPLITS:
    result[f"{split}_rows_written"] = stats[split]["rows_written"]
    result["rows_read"] += stats[split]["rows_read"]
    result["rows_written"] += stats[split]["rows_written"]
  result.update(benchmark.rates(result["rows_read"], *stopwatch.read(),
                                "rows"))
  return result


def _count_records(data_dir: str, split: str) -> int:
  with open(layout.stats_file(layout.split_dir(data_dir, split)),
            encoding="utf-8") as f:
    return int(json.load(f)["rows_written"])


def _training_runs(data_dir: str, export_dir: str,
                   settings: dict[str, Any]) -> dict[str, Any]:
  """The timed training runs, the last one also evaluated and exported."""
  parts = settings["parts"]
  hparams = settings["hparams"]
  timed = settings["train_steps"] or -(-_count_records(
      data_dir, layout.TRAIN) // hparams.batch_size)
  results = {}
  for index, loss in enumerate(settings["losses"]):
    last = index == len(settings["losses"]) - 1
    if not last and "train" not in parts:
      continue
    run = training_bench.TrainingRun(
        data_dir, hparams, loss, settings["optimizer"],
        settings["train_steps_per_execution"], settings["warmup_steps"],
        timed, num_test=(_count_records(data_dir, layout.TEST)
                         if last and "eval" in parts else 0),
        export_dir=export_dir if last and "serve" in parts else "")
    results[loss] = benchmark.run_isolated(training_bench.measure_training,
                                           run=run)
  return results


def _quality(data_dir: str, settings: dict[str, Any]) -> dict[str, Any]:
  """Keras' Adam against LazyAdam, trained alike (in one process)."""
  hparams = settings["hparams"]
  runs = [training_bench.TrainingRun(
      data_dir, hparams, hparams.loss.loss, name,
      settings["train_steps_per_execution"], settings["warmup_steps"],
      settings["train_steps"]) for name in config_lib.OPTIMIZERS]
  return benchmark.run_isolated(training_bench.measure_quality, runs=runs,
                                num_train=_count_records(data_dir,
                                                         layout.TRAIN))


def measure(work_dir: str, settings: dict[str, Any]) -> dict[str, Any]:
  """Every part of ``settings`` measured, each in its own process."""
  parts = settings["parts"]
  results: dict[str, Any] = {}
  data_dir = settings["data_dir"] or os.path.join(work_dir, "data")
  if not settings["data_dir"]:
    results["simulate"] = benchmark.run_isolated(_simulate, data_dir=data_dir,
                                                 settings=settings)
    convert = benchmark.run_isolated(_convert, data_dir=data_dir,
                                     settings=settings)
    if "convert" in parts:
      results["convert"] = convert
  results["data"] = {"dir": data_dir,
                     "train_records": _count_records(data_dir, layout.TRAIN),
                     "test_records": _count_records(data_dir, layout.TEST)}
  batch_size = settings["hparams"].batch_size
  if "parse" in parts:
    results["parse"] = benchmark.run_isolated(
        benchmark.measure_parse,
        file_pattern=layout.examples(data_dir, layout.TRAIN),
        batch_size=batch_size,
        num_examples=_count_records(data_dir, layout.TRAIN))
  if {"train", "eval", "serve"} & set(parts):
    results["training"] = _training_runs(
        data_dir, os.path.join(work_dir, "export"), settings)
  if "serve" in parts:
    saved_model = results["training"][settings["losses"][-1]]["saved_model"]
    results["serve"] = benchmark.run_isolated(
        benchmark.measure_serving, saved_model=saved_model,
        file_pattern=layout.examples(data_dir, layout.TEST),
        batch_sizes=settings["serving_batch_sizes"],
        requests=settings["serving_requests"], warmup=20)
  if "quality" in parts:
    results["quality"] = _quality(data_dir, settings)
  return results


def machine() -> dict[str, Any]:
  """The machine the figures were measured on."""
  return {"cpu": bench_report.cpu_model(), "cpus": os.cpu_count(),
          "python": platform.python_version(),
          "load_average_start": os.getloadavg()[0]}
