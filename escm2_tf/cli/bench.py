r"""escm2-bench: throughput, latency and memory from raw logs to serving.

  escm2-bench --output_json=bench.json     (400k impressions, ~3 min on 2 cores)
  escm2-bench --small                       (a smoke run, ~1 min)
  escm2-bench --work_dir=/tmp/bench         (keeps the data, then reuse it:)
  escm2-bench --data_dir=/tmp/bench/data --parts=train,eval

Simulates Ali-CCP logs (escm2_tf.simulator), converts them (escm2-convert's
pipeline), then measures, each part in its own process: conversion rows/s and
peak RSS; the tf.data parse ceiling of the converted files; steady-state
training examples/s (and peak RSS) of esmm, ipw and dr with the
hyperparameters of --hparams (the shipped configs/paddlerec.flags);
evaluation examples/s; and the serving latency of the exported SavedModel.
--parts=quality also trains one pass with Keras' Adam and with LazyAdam and
compares their exact test AUCs. Prints a table and, with --output_json,
writes every figure as JSON.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any

from escm2_tf import config as config_lib
from escm2_tf import configs
from escm2_tf import flagbind
from escm2_tf import layout
from escm2_tf import options
from escm2_tf import tool
from escm2_tf.bench import hparams as hparams_lib
from escm2_tf.options import ConfigError
from escm2_tf.options import option

PARTS = ("convert", "parse", "train", "eval", "serve", "quality")
_DEFAULT_PARTS = ("convert", "parse", "train", "eval", "serve")
_PROGRAM = "escm2-bench"
_FAILED = 1
# --small: sizes for a smoke run, applied to the flags not given explicitly.
_SMALL = {"train_examples": 2000, "test_examples": 400, "warmup_steps": 2,
          "train_steps": 2, "train_steps_per_execution": 1,
          "serving_requests": 5, "serving_batch_sizes": (1, 64)}


@dataclasses.dataclass(frozen=True)
class BenchFlags:
  """What to measure, on how much data.

  Attributes:
    work_dir: Where generated data and the exported model go; a temporary
      directory, removed at the end, when empty.
    data_dir: Reuse the converted train/ and test/ of an earlier work_dir
      instead of generating data (skips the convert part).
    train_examples: Simulated training impressions.
    test_examples: Simulated test impressions.
    data_seed: Seed of the simulator.
    raw_format: Raw format simulated and converted.
    max_ids_per_field: escm2-convert's max_values_per_field (PaddleRec's
      reader keeps 3).
    parts: What to measure, of convert, parse, train, eval, serve, quality.
    losses: Estimators whose training is timed; eval and serve use the model
      of the last one.
    hparams: escm2-train flagfile whose model, loss and
      batch_size/learning_rate/seed flags are used, or the name of a shipped
      one (demo, paddlerec, bigdata: configs/NAME.flags).
    train_optimizer: Optimizer of the timed training runs.
    train_steps_per_execution: Keras steps_per_execution.
    warmup_steps: Training steps before timing starts.
    train_steps: Timed training steps; 0 for one pass over the training data.
    serving_batch_sizes: Examples per request.
    serving_requests: Timed requests per batch size.
    small: A smoke run: tiny data and few steps, for flags not given
      explicitly.
    output_json: Also write every figure to this file.
  """
  work_dir: str = option("", group="data")
  data_dir: str = option("", group="data")
  train_examples: int = option(400_000, minimum=1, group="data")
  test_examples: int = option(50_000, minimum=1, group="data")
  data_seed: int = option(0, minimum=0, group="data")
  raw_format: str = option("aliccp", choices=layout.RAW_FORMATS,
                           group="data")
  max_ids_per_field: int = option(50, minimum=0, group="data")
  parts: tuple[str, ...] = option(_DEFAULT_PARTS, choices=PARTS)
  losses: tuple[str, ...] = option(("esmm", "ipw", "dr"),
                                   choices=config_lib.LOSSES)
  hparams: str = option("paddlerec", group="training")
  train_optimizer: str = option(config_lib.SPARSE_ADAM,
                                choices=config_lib.OPTIMIZERS,
                                group="training")
  train_steps_per_execution: int = option(32, minimum=1, group="training")
  warmup_steps: int = option(64, minimum=1, group="training")
  train_steps: int = option(0, minimum=0, group="training")
  serving_batch_sizes: tuple[int, ...] = option((1, 64, 1024), minimum=1,
                                                group="serving")
  serving_requests: int = option(200, minimum=1, group="serving")
  small: bool = False
  output_json: str = option("", group="output")

  def __post_init__(self):
    options.check_declared(self)
    if self.data_dir and not all(os.path.isdir(layout.vocab_dir(
        layout.split_dir(self.data_dir, split))) for split in layout.SPLITS):
      raise ConfigError("data_dir", f"{self.data_dir} lacks the converted "
                        "train/ and test/ (with vocab/) of an earlier run")


def _settings(binding: flagbind.Binding) -> dict[str, Any]:
  """The run's settings from the flags; raises ConfigError naming one."""
  values = binding.values(BenchFlags)
  if values["small"]:
    given = binding.present()
    values.update({name: value for name, value in _SMALL.items()
                   if name not in given})
  bench_flags = BenchFlags(**values)
  try:
    hparams = hparams_lib.hparams_from_flagfile(bench_flags.hparams)
  except FileNotFoundError:
    raise ConfigError("hparams", f"{bench_flags.hparams} not found (neither "
                      "a file nor a shipped config: "
                      f"{', '.join(configs.names())})") from None
  except ValueError as e:
    raise ConfigError("hparams", str(e)) from None
  settings = dataclasses.asdict(bench_flags)
  settings.update(parts=list(bench_flags.parts),
                  losses=list(bench_flags.losses),
                  serving_batch_sizes=list(bench_flags.serving_batch_sizes),
                  hparams=hparams,
                  hparams_file=hparams_lib.flagfile_path(bench_flags.hparams),
                  optimizer=bench_flags.train_optimizer)
  return settings


def _bench(settings: dict[str, Any]) -> int:
  # pylint: disable=g-import-not-at-top
  from escm2_tf.bench import harness
  from escm2_tf.bench import report as bench_report
  from escm2_tf.bench import suite
  # pylint: enable=g-import-not-at-top
  machine = suite.machine()
  work_dir = settings["work_dir"] or tempfile.mkdtemp(prefix="escm2-bench-")
  try:
    results = suite.measure(work_dir, settings)
  except harness.PartError as e:
    return tool.fail(_PROGRAM, str(e), _FAILED)
  finally:
    if not settings["work_dir"]:
      shutil.rmtree(work_dir, ignore_errors=True)
  machine["load_average_end"] = os.getloadavg()[0]
  report = bench_report.build(machine, settings, results)
  print(bench_report.format_table(report))
  if settings["output_json"]:
    with open(settings["output_json"], "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2, sort_keys=True)
      f.write("\n")
  return 0


TOOL = tool.Tool(_PROGRAM, __doc__,
                 flagbind.Binding(flagbind.Section(BenchFlags, "benchmark")),
                 build=_settings, body=_bench)


def run() -> None:
  TOOL.run()


if __name__ == "__main__":
  run()
