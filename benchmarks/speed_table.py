r"""Training cost per CPU-second: DeepCTR's MMOE, escm2-tf before and after.

One sitting, one table. Each trainer runs twice, for ``--short_epochs`` and
for ``--long_epochs`` epochs, each in a fresh process; the difference of the
two runs' CPU seconds (user + system, all threads of the process), divided
by the difference of their epochs, is the whole-run cost of an epoch:
start-up and the one-time work (checks, counting, tracing, the final
evaluation and export) cancel out. Rows:

- DeepCTR 0.9.4's MMOE (``deepctr_mmoe_bench.py``, run by
  ``--deepctr_python``, an interpreter of an environment with DeepCTR): the
  rows loaded once into numpy, no input pipeline in its epochs;
- escm2-tf of ``--before_src`` (a checkout of the code to compare with, run
  through ``PYTHONPATH`` by this interpreter) and of this tree: the trainer
  with ``--train_flagfile``, streaming the TFRecords every epoch
  (``epoch_time_bench.py``, which also times the parse ceiling);
- the tf.data parse ceiling of the same files (ids, labels and weights).

First epoch against later ones: Keras' count of each epoch's training loop
in the long run (DeepCTR: its epochs).

  .venv/bin/python benchmarks/speed_table.py --data_dir=/tmp/pr \
      --before_src=/tmp/main_src --deepctr_python=/work/deepctr_venv/bin/python
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import dataclasses
import json
import os
import subprocess
import sys
from typing import Any

from escm2_tf import flagbind
from escm2_tf import layout
from escm2_tf import options
from escm2_tf import tool
from escm2_tf.options import ConfigError
from escm2_tf.options import option

_PROGRAM = "speed_table"
_HERE = os.path.dirname(os.path.abspath(__file__))


@dataclasses.dataclass(frozen=True)
class SpeedTableFlags:
  """The data, the trainers compared and the two run lengths.

  Attributes:
    data_dir: Converted train/ and test/ (as escm2-convert writes them).
    train_flagfile: The escm2-train flagfile, or a shipped config's name.
    before_src: A checkout of escm2-tf to compare with; empty: none.
    deepctr_python: A Python with DeepCTR 0.9.4; empty: no DeepCTR row.
    deepctr_max_len: Ids DeepCTR keeps per multi-valued field.
    short_epochs: Epochs of the short runs.
    long_epochs: Epochs of the long runs.
  """
  data_dir: str = option("", group="data")
  train_flagfile: str = option("paddlerec", group="training")
  before_src: str = ""
  deepctr_python: str = ""
  deepctr_max_len: int = option(20, minimum=1)
  short_epochs: int = option(1, minimum=1)
  long_epochs: int = option(4, minimum=2)

  def __post_init__(self):
    if not self.data_dir:
      raise ConfigError("data_dir", "is required")
    if self.long_epochs <= self.short_epochs:
      raise ConfigError("long_epochs", "must be more than --short_epochs")
    options.check_declared(self)


_FLAGS = flagbind.Binding(flagbind.Section(SpeedTableFlags, "benchmark"))


def _last_json(command: list[str], env: dict[str, str] | None = None,
               cwd: str | None = None) -> dict[str, Any]:
  """The JSON a benchmark prints last; its stderr if it fails."""
  result = subprocess.run(command, capture_output=True, text=True, env=env,
                          cwd=cwd, check=False)
  if result.returncode:
    raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
  text = result.stdout
  return json.loads(text[text.rindex("\n{") + 1:] if "\n{" in text else text)


def _escm2(src: str, settings: SpeedTableFlags) -> dict[str, Any]:
  """epoch_time_bench of the tree ``src``, run with that tree's code."""
  env = dict(os.environ, PYTHONPATH=src)
  report = _last_json(
      [sys.executable, os.path.join(src, "benchmarks", "epoch_time_bench.py"),
       f"--data_dir={settings.data_dir}",
       f"--train_flagfile={settings.train_flagfile}",
       f"--short_epochs={settings.short_epochs}",
       f"--long_epochs={settings.long_epochs}"], env=env, cwd=src)
  short = report["runs"][str(settings.short_epochs)]
  long = report["runs"][str(settings.long_epochs)]
  return {"examples": report["train_examples"],
          "cpu": (short["cpu_s"], long["cpu_s"]),
          "wall": (short["wall_s"], long["wall_s"]),
          "epoch_cpu": long["train_loop_cpu_s"],
          "ceiling_per_cpu_s": report["parse_ceiling_per_cpu_s"],
          "ceiling_per_s": report["parse_ceiling_per_s"]}


def _deepctr(settings: SpeedTableFlags) -> dict[str, Any]:
  """DeepCTR's MMOE, one run of each length, in its own environment."""
  runs = [_last_json(
      [settings.deepctr_python, os.path.join(_HERE, "deepctr_mmoe_bench.py"),
       f"--data_dir={layout.split_dir(settings.data_dir, layout.TRAIN)}",
       f"--max_len={settings.deepctr_max_len}", f"--epochs={epochs}"],
      env=dict(os.environ, TF_USE_LEGACY_KERAS="1"))
          for epochs in (settings.short_epochs, settings.long_epochs)]
  return {"examples": runs[0]["rows"],
          "cpu": (runs[0]["fit_cpu_s"], runs[1]["fit_cpu_s"]),
          "wall": (runs[0]["fit_s"], runs[1]["fit_s"]),
          "epoch_cpu": runs[1]["epoch_cpu_s"]}


def _row(name: str, run: dict[str, Any], epochs: int,
         reference: float | None, ceiling: float) -> str:
  cpu = (run["cpu"][1] - run["cpu"][0]) / epochs
  wall = (run["wall"][1] - run["wall"][0]) / epochs
  rate = run["examples"] / cpu
  first, later = run["epoch_cpu"][0], run["epoch_cpu"][1:]
  later_mean = sum(later) / len(later)
  versus = f"{rate / reference:.2f}x" if reference else "-"
  return (f"| {name} | {cpu:.2f} | {wall:.2f} | {rate / 1000:.1f}k | {versus} "
          f"| {rate / ceiling:.2f} | {first:.2f} / {later_mean:.2f} "
          f"({first / later_mean - 1:+.0%}) |")


def main(settings: SpeedTableFlags) -> int:
  epochs = settings.long_epochs - settings.short_epochs
  runs = {}
  if settings.deepctr_python:
    runs["DeepCTR 0.9.4 MMOE (numpy in RAM)"] = _deepctr(settings)
  if settings.before_src:
    runs["escm2-tf before"] = _escm2(os.path.abspath(settings.before_src),
                                     settings)
  runs["escm2-tf"] = _escm2(os.path.dirname(_HERE), settings)
  ceiling = runs["escm2-tf"]["ceiling_per_cpu_s"]
  reference = None
  if settings.deepctr_python:
    first = next(iter(runs.values()))
    reference = first["examples"] * epochs / (first["cpu"][1] - first["cpu"][0])
  print(f"Whole run per epoch: ({settings.long_epochs}-epoch run - "
        f"{settings.short_epochs}-epoch run) / {epochs}.\n")
  print("| trainer | CPU-s per epoch | wall s per epoch | examples per CPU-s "
        "| vs DeepCTR | of parse ceiling (CPU) | first / later epochs, CPU-s |")
  print("|---|---|---|---|---|---|---|")
  for name, run in runs.items():
    print(_row(name, run, epochs, reference, ceiling))
  print(f"| tf.data parse ceiling | - | - | {ceiling / 1000:.1f}k | - | 1.00 "
        f"| - |")
  print(f"\nParse ceiling, wall: {runs['escm2-tf']['ceiling_per_s'] / 1000:.1f}k "
        "examples/s.")
  print(json.dumps(runs))
  return 0


TOOL = tool.Tool(_PROGRAM, __doc__, _FLAGS,
                 build=lambda binding: binding.build(SpeedTableFlags),
                 body=main)


if __name__ == "__main__":
  TOOL.run()
