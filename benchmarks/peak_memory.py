r"""Runs one command; prints its peak memory and CPU seconds as one JSON line.

  .venv/bin/python benchmarks/peak_memory.py \
      --command=".venv/bin/escm2-evaluate --saved_model=... --data=... --output=..."

``peak_tree_rss_mb`` is what ``benchmarks/rehearsal.py`` records (the process
tree's resident memory, sampled every 0.2 s, so a short peak can slip
between samples); ``max_single_rss_mb`` is the kernel's high-water mark of the
largest single process (``ru_maxrss``), exact for a single-process command.
The command's output is discarded.
"""

import dataclasses
import json
import resource
import shlex
import subprocess
import time

from escm2_tf import flagbind
from escm2_tf import options
from escm2_tf import tool
from escm2_tf.bench import processes
from escm2_tf.options import option

_PROGRAM = "peak_memory"


@dataclasses.dataclass(frozen=True)
class PeakMemoryFlags:
  """The command to measure.

  Attributes:
    command: The command line, split as a POSIX shell splits it.
  """
  command: str = option("", group="benchmark")

  def __post_init__(self):
    options.check_declared(self)
    if not self.command:
      raise options.ConfigError("command", "is required")


_FLAGS = flagbind.Binding(flagbind.Section(PeakMemoryFlags, "benchmark"))


def main(settings: PeakMemoryFlags) -> int:
  command = shlex.split(settings.command)
  start = time.perf_counter()
  before = processes.children_cpu_seconds()
  child = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
  sampler = processes.PeakRss(child)
  child.wait()
  peak = sampler.join()
  print(json.dumps({
      "returncode": child.returncode,
      "peak_tree_rss_mb": round(peak / 2**20),
      "max_single_rss_mb": round(
          resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
      "cpu_s": round(processes.children_cpu_seconds() - before, 1),
      "wall_s": round(time.perf_counter() - start, 1)}))
  return child.returncode


TOOL = tool.Tool(_PROGRAM, __doc__, _FLAGS,
                 build=lambda binding: binding.build(PeakMemoryFlags),
                 body=main)


if __name__ == "__main__":
  TOOL.run()
