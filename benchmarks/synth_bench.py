"""Speed and output size of the Ali-CCP simulator (escm2-synth).

Times ``simulator.simulate`` end to end for N impressions (80% train, 20%
test) and prints impressions per second and the size of every file. The world
(users, behaviour, calibration) is also timed alone, since its cost does not
grow with N.

  .venv/bin/python benchmarks/synth_bench.py --num_impressions=1000000
"""

import dataclasses
import os
import shutil
import tempfile
import time

from escm2_tf import flagbind
from escm2_tf import tool
from escm2_tf import layout
from escm2_tf import options
from escm2_tf import simulator
from escm2_tf.options import option

_PROGRAM = "synth_bench"


@dataclasses.dataclass(frozen=True)
class SynthBenchFlags:
  """How much to simulate.

  Attributes:
    num_impressions: Impressions in all (80 % train, 20 % test).
    format: Output format.
    seed: Simulator seed.
    output_dir: Where to write; by default a temporary directory that is
      deleted afterwards.
  """
  num_impressions: int = option(1_000_000, minimum=2)
  format: str = option("aliccp", choices=layout.RAW_FORMATS)
  seed: int = option(0, minimum=0)
  output_dir: str = option("", group="output")

  def __post_init__(self):
    options.check_declared(self)


_FLAGS = flagbind.Binding(flagbind.Section(SynthBenchFlags, "benchmark"))


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


def main(settings: SynthBenchFlags) -> int:
  num = settings.num_impressions
  num_test = num // 5
  config = simulator.SimulatorConfig(num_train=num - num_test,
                                     num_test=num_test, seed=settings.seed,
                                     format=settings.format)
  start = time.perf_counter()
  simulator.build_world(config)
  world_seconds = time.perf_counter() - start
  output_dir = settings.output_dir or tempfile.mkdtemp(prefix="synth_bench_")
  try:
    start, cpu_start = time.perf_counter(), time.process_time()
    summary = simulator.simulate(config, output_dir)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    _report(summary, seconds, cpu_seconds, world_seconds, num)
  finally:
    if not settings.output_dir:
      shutil.rmtree(output_dir)
  return 0


TOOL = tool.Tool(_PROGRAM, __doc__, _FLAGS,
                 build=lambda binding: binding.build(SynthBenchFlags),
                 body=main)


if __name__ == "__main__":
  TOOL.run()
