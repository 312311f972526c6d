"""Speed and output size of the Ali-CCP simulator (escm2-synth).

Times ``simulator.simulate`` end to end for N impressions (80% train, 20%
test) and prints impressions per second and the size of every file. The world
(users, behaviour, calibration) is also timed alone, since its cost does not
grow with N.

  .venv/bin/python benchmarks/synth_bench.py --num_impressions=1000000
"""

import os
import shutil
import tempfile
import time

from absl import app
from absl import flags

from escm2_tf import layout
from escm2_tf import simulator

_NUM_IMPRESSIONS = flags.DEFINE_integer(
    "num_impressions", 1_000_000, "Impressions in all (80% train, 20% test).",
    lower_bound=2)
_FORMAT = flags.DEFINE_enum("format", "aliccp", layout.RAW_FORMATS,
                            "Output format.")
_SEED = flags.DEFINE_integer("seed", 0, "Simulator seed.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where to write; by default a temporary directory "
    "that is deleted afterwards.")


def _report(summary: dict, seconds: float, cpu_seconds: float,
            world_seconds: float, num: int) -> None:
  print(f"impressions          {num}")
  print(f"world + calibration  {world_seconds:.2f} s")
  print(f"simulate (total)     {seconds:.2f} s wall, {cpu_seconds:.2f} s CPU")
  print(f"impressions/s        {num / seconds:,.0f} "
        f"({num / cpu_seconds:,.0f} per CPU second)")
  total = 0
  for path in summary["files"]:
    size = os.path.getsize(path)
    total += size
    print(f"{os.path.basename(path):28s} {size / 2**20:10.1f} MiB")
  print(f"{'all files':28s} {total / 2**20:10.1f} MiB "
        f"({total / num:,.0f} bytes per impression)")
  for split in layout.SPLITS:
    stats = summary[split]
    print(f"{split}: rows {stats['rows']}, clicks {stats['clicks']}, "
          f"conversions {stats['conversions']}, "
          f"true CVR all {stats['true_cvr_all']:.4f} vs clicked "
          f"{stats['true_cvr_clicked']:.4f}")


def main(argv):
  del argv
  num = _NUM_IMPRESSIONS.value
  num_test = num // 5
  config = simulator.SimulatorConfig(num_train=num - num_test,
                                     num_test=num_test, seed=_SEED.value,
                                     format=_FORMAT.value)
  start = time.perf_counter()
  simulator.build_world(config)
  world_seconds = time.perf_counter() - start
  output_dir = _OUTPUT_DIR.value or tempfile.mkdtemp(prefix="synth_bench_")
  try:
    start, cpu_start = time.perf_counter(), time.process_time()
    summary = simulator.simulate(config, output_dir)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    _report(summary, seconds, cpu_seconds, world_seconds, num)
  finally:
    if not _OUTPUT_DIR.value:
      shutil.rmtree(output_dir)


if __name__ == "__main__":
  app.run(main)
