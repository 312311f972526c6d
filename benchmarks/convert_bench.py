"""Throughput and memory of escm2-convert with the defaults a user gets.

Simulates ``--num_impressions`` training impressions with ``escm2-synth``'s
simulator (cached under ``--work_dir``) in the Tianchi format or, with
``--input_format=paddlerec``, in PaddleRec's (``--behaviour_length`` sets the
ids per line: 60 gives about 90). It runs the ``escm2-convert`` console
script on them as a child process with no flag beyond the inputs (so the
local runner, one worker per core, default shards), samples the resident
memory of its whole process tree, and prints impressions (lines read) per
second of wall time and per CPU second of the whole process tree, CPU
time, peak RSS, output bytes per impression and the load average.
``--num_files=40`` splits the PaddleRec file into 40 files of equal line
counts and converts them as one glob (many small files instead of one).

``--baseline_pythonpath=DIR`` also converts with the code under DIR (a
directory holding ``escm2_tf`` and ``escm2_pipelines``, e.g. links into a
checkout of an older commit), alternating baseline and current runs
``--repeats`` times, so both see the same machine load: on a shared machine
only the ratios measured in one sitting compare.

For the Tianchi format it then projects the full release (85M impressions,
730K common rows):

  CPU = a * impressions + c * common_rows

where c, the CPU cost of one common row (parse, truncate, encode, count), is
timed in this process and a is what the run spent beyond that per
impression. The wall time divides that CPU by the run's measured CPU/wall
ratio (which other processes on a shared machine lower) and, as a bound, by
the number of workers. The side-input memory projection adds, per common
row, its encoded bytes plus dict overhead, once in the main process and
once per worker (their copy-on-write pages, at worst); with
``--join=cogroup`` Beam's local runner keeps its shuffle in memory, so the
peak is scaled linearly with the impressions.

  .venv/bin/python benchmarks/convert_bench.py --num_impressions=1000000

Arguments after ``--`` go to escm2-convert unchanged.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import zlib

from escm2_tf import flagbind
from escm2_tf import tool
from escm2_tf import layout
from escm2_tf import options
from escm2_tf import simulator
from escm2_tf.bench import processes
from escm2_tf.formats import encode
from escm2_tf.formats import examples
from escm2_tf.options import option
from escm2_pipelines import config as config_lib
from escm2_pipelines import tally

_PROGRAM = "convert_bench"


@dataclasses.dataclass(frozen=True)
class ConvertBenchFlags:
  """The simulated input and the converter's settings.

  Attributes:
    num_impressions: Simulated training impressions.
    work_dir: Raw data cache and outputs.
    max_values_per_field: Passed to escm2-convert.
    join: Passed to escm2-convert.
    input_format: Raw format simulated and converted.
    behaviour_length: The simulator's ids per behaviour field and user (510:
      Ali-CCP's ~518 common items; 60: ~90 ids per PaddleRec line).
    num_files: PaddleRec input split into this many files of equal line
      counts, converted as one glob.
    baseline_pythonpath: Also run the converter found under this directory,
      alternating with the current one.
    repeats: Runs of each variant.
    seed: Simulator seed.
    keep_output: Keep the converted files.
  """
  num_impressions: int = option(1_000_000, minimum=1, group="data")
  work_dir: str = option("/tmp/escm2_convert_bench", group="data")
  max_values_per_field: int = option(encode.DEFAULT_MAX_VALUES_PER_FIELD,
                                     minimum=0)
  join: str = option("side_input", choices=config_lib.JOINS)
  input_format: str = option("aliccp", choices=layout.RAW_FORMATS,
                             group="data")
  behaviour_length: int = option(510, minimum=1, group="data")
  num_files: int = option(1, minimum=1, group="data")
  baseline_pythonpath: str = ""
  repeats: int = option(1, minimum=1)
  seed: int = option(0, minimum=0, group="data")
  keep_output: bool = option(False, group="output")

  def __post_init__(self):
    options.check_declared(self)


_FLAGS = flagbind.Binding(flagbind.Section(ConvertBenchFlags, "benchmark"))

FULL_IMPRESSIONS = 85_000_000
FULL_COMMON_ROWS = 730_000
# A dict entry (key string, hash slot, bytes header) beyond the encoded bytes.
_DICT_ENTRY_OVERHEAD = 200
_CALIBRATION_ROWS = 2000


def _simulate(settings: ConvertBenchFlags) -> str:
  num_impressions, seed = settings.num_impressions, settings.seed
  raw_dir = os.path.join(
      settings.work_dir, f"raw_{settings.input_format}_{num_impressions}_"
      f"{seed}_{settings.behaviour_length}")
  if not os.path.exists(os.path.join(raw_dir,
                                     layout.ground_truth_file(layout.TRAIN))):
    # Users and items grow with the data, as in a longer log.
    scale = max(1, num_impressions // 100_000)
    start = time.time()
    simulator.simulate(simulator.SimulatorConfig(
        num_train=num_impressions, num_test=1, seed=seed,
        num_users=10_000 * scale, num_items=20_000 * scale,
        behaviour_length=settings.behaviour_length,
        format=settings.input_format), raw_dir)
    print(f"simulated {num_impressions} impressions in "
          f"{time.time() - start:.0f}s")
  return raw_dir


def _split_lines(path: str, num_files: int) -> str:
  """Splits ``path`` into ``num_files`` files (once); returns their glob."""
  split_dir = f"{path}.split{num_files}"
  pattern = os.path.join(split_dir, "part-*.txt")
  if os.path.exists(split_dir):
    return pattern
  with open(path, "rb") as f:
    lines = f.readlines()
  temporary = split_dir + ".tmp"
  os.makedirs(temporary, exist_ok=True)
  for k in range(num_files):
    part = lines[len(lines) * k // num_files:len(lines) * (k + 1) // num_files]
    with open(os.path.join(temporary, f"part-{k:04d}.txt"), "wb") as f:
      f.writelines(part)
  os.rename(temporary, split_dir)
  return pattern


def _machine_busy_seconds() -> float:
  """CPU seconds all processes of the machine have used since boot."""
  with open("/proc/stat") as f:
    jiffies = [int(v) for v in f.readline().split()[1:]]
  idle = jiffies[3] + jiffies[4]  # idle, iowait
  return (sum(jiffies[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _run_convert(args: list[str], pythonpath: str = "") -> dict:
  """Runs escm2-convert; returns wall and CPU seconds and peak tree RSS.

  ``others_cpu_s`` is what other processes used meanwhile: on a shared
  machine the run gets less than its cores.
  """
  env = dict(os.environ)
  if pythonpath:
    env["PYTHONPATH"] = pythonpath
  command = [sys.executable, "-c",
             "from escm2_pipelines import cli; cli.run()", *args]
  before = processes.children_cpu_seconds()
  busy = _machine_busy_seconds()
  load = os.getloadavg()[0]
  start = time.time()
  # Run from / so that no checkout in the working directory shadows the
  # code under test.
  child = subprocess.Popen(command, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env,
                           cwd="/")
  sampler = processes.PeakRss(child)
  stdout, stderr = child.communicate()
  wall = time.time() - start
  peak = sampler.join()
  if child.returncode:
    sys.exit(f"escm2-convert failed:\n{stderr[-3000:]}")
  cpu = processes.children_cpu_seconds() - before
  print(stdout.strip())
  return {"wall_s": wall, "cpu_s": cpu, "peak_rss_bytes": peak,
          "others_cpu_s": _machine_busy_seconds() - busy - cpu,
          "load_before": load, "load_after": os.getloadavg()[0]}


def _calibrate_common(path: str, max_values: int) -> dict:
  """CPU seconds and encoded bytes per common row, timed here."""
  with open(path) as f:
    lines = [next(f).rstrip("\n") for _ in range(_CALIBRATION_ROWS)]
  counts = tally.Tally()
  start = time.process_time()
  encoded = [encode.encode_common(line, max_values)[1] for line in lines]
  for entry in encoded:
    counts.ids(examples.int64_lists(entry.entries), times=2)
  cpu = (time.process_time() - start) / len(lines)
  size = sum(len(e.entries) for e in encoded) / len(encoded)
  return {"cpu_s": cpu, "bytes": size}


def _output_bytes(output_dir: str) -> tuple[int, int]:
  """Compressed and uncompressed bytes of the TFRecord shards."""
  compressed = uncompressed = 0
  for name in os.listdir(output_dir):
    if not name.endswith(".tfrecord.gz"):
      continue
    path = os.path.join(output_dir, name)
    compressed += os.path.getsize(path)
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    with open(path, "rb") as f:
      while chunk := f.read(1 << 22):
        uncompressed += len(inflate.decompress(chunk))
  return compressed, uncompressed


def _workers(convert_args: list[str]) -> int:
  for arg in convert_args:
    if arg.startswith(("--num_workers=", "--direct_num_workers=")):
      return max(1, int(arg.split("=")[1]))
  return os.cpu_count() or 1


def _project(run: dict, stats: dict, calibration: dict, workers: int,
             join: str) -> dict:
  """The full release's CPU, wall time and peak memory (see the docstring)."""
  impressions, commons = stats["rows_read"], stats["common_rows_read"]
  per_impression = (run["cpu_s"] - calibration["cpu_s"] * commons) / impressions
  cpu = (per_impression * FULL_IMPRESSIONS
         + calibration["cpu_s"] * FULL_COMMON_ROWS)
  if join == "side_input":
    rss = run["peak_rss_bytes"] + (1 + workers) * max(
        0, FULL_COMMON_ROWS - commons) * (calibration["bytes"]
                                         + _DICT_ENTRY_OVERHEAD)
  else:
    # The local runner keeps a shuffle in memory: it grows with the data.
    rss = run["peak_rss_bytes"] * FULL_IMPRESSIONS / impressions
  return {
      "impression_cpu_us": round(per_impression * 1e6, 1),
      "full_release_cpu_min": round(cpu / 60, 1),
      "full_release_wall_min": round(
          cpu / (run["cpu_s"] / run["wall_s"]) / 60, 1),
      "full_release_wall_min_one_core_per_worker": round(
          cpu / workers / 60, 1),
      "full_release_peak_rss_gb": round(rss / 1e9, 2),
  }


def _raw_file(raw_dir: str, input_format: str, role: str) -> str:
  return os.path.join(raw_dir, layout.raw_file_names(
      input_format, layout.TRAIN)[role])


def _inputs(raw_dir: str, input_format: str, num_files: int) -> list[str]:
  if input_format == "paddlerec":
    path = _raw_file(raw_dir, input_format, "paddlerec")
    if num_files > 1:
      path = _split_lines(path, num_files)
    return ["--input_format=paddlerec", f"--input={path}"]
  return ["--input_format=aliccp",
          f"--skeleton={_raw_file(raw_dir, input_format, 'skeleton')}",
          f"--common_features={_raw_file(raw_dir, input_format, 'common')}"]


def _convert_once(raw_dir: str, convert_args: list[str], pythonpath: str,
                  settings: ConvertBenchFlags) -> dict:
  """One measured conversion into a fresh directory, which it removes."""
  output_dir = os.path.join(settings.work_dir, f"out_{os.getpid()}")
  run = _run_convert([*_inputs(raw_dir, settings.input_format,
                              settings.num_files),
                      f"--output_dir={output_dir}",
                      *convert_args], pythonpath)
  with open(layout.stats_file(output_dir)) as f:
    stats = json.load(f)
  compressed, uncompressed = _output_bytes(output_dir)
  run["shards"] = len([n for n in os.listdir(output_dir)
                       if n.endswith(".tfrecord.gz")])
  if not settings.keep_output:
    shutil.rmtree(output_dir)
  return {"run": run, "stats": stats, "compressed": compressed,
          "uncompressed": uncompressed}


def _report(result: dict, calibration: dict, convert_args: list[str],
            settings: ConvertBenchFlags) -> dict:
  run, stats = result["run"], result["stats"]
  written = stats["rows_written"]
  report = {
      "impressions": stats["rows_read"],
      "input_format": settings.input_format,
      "input_files": settings.num_files,
      "convert_args": convert_args,
      "shards": run["shards"],
      "wall_s": round(run["wall_s"], 1), "cpu_s": round(run["cpu_s"], 1),
      "cores_busy": round(run["cpu_s"] / run["wall_s"], 2),
      "other_processes_cpu_s": round(run["others_cpu_s"], 1),
      "load_average_before_after": [round(run["load_before"], 1),
                                    round(run["load_after"], 1)],
      "impressions_per_s": round(stats["rows_read"] / run["wall_s"]),
      "impressions_per_cpu_s": round(stats["rows_read"] / run["cpu_s"]),
      "peak_rss_gb": round(run["peak_rss_bytes"] / 1e9, 2),
      "output_bytes_per_impression": round(result["compressed"] / written, 1),
      "uncompressed_bytes_per_impression": round(
          result["uncompressed"] / written, 1),
      "full_release_output_gb": round(
          result["compressed"] / written * FULL_IMPRESSIONS / 1e9, 1),
  }
  if settings.input_format == "aliccp":
    report.update({
        "common_rows": stats["common_rows_read"],
        "common_row_cpu_ms": round(calibration["cpu_s"] * 1e3, 3),
        "common_row_encoded_bytes": round(calibration["bytes"]),
        **_project(run, stats, calibration, _workers(convert_args),
                   settings.join),
    })
  else:
    report["full_release_wall_min_at_this_rate"] = round(
        FULL_IMPRESSIONS / (stats["rows_read"] / run["wall_s"]) / 60, 1)
  return report


def main(settings: ConvertBenchFlags, args: list[str]) -> int:
  raw_dir = _simulate(settings)
  convert_args = [f"--max_values_per_field={settings.max_values_per_field}",
                  f"--join={settings.join}", *args]
  calibration = {}
  if settings.input_format == "aliccp":
    calibration = _calibrate_common(
        _raw_file(raw_dir, settings.input_format, "common"),
        settings.max_values_per_field)
  variants = [("current", "")]
  if settings.baseline_pythonpath:
    variants.insert(0, ("baseline", settings.baseline_pythonpath))
  reports = []
  for repeat in range(settings.repeats):
    for name, pythonpath in variants:
      result = _convert_once(raw_dir, convert_args, pythonpath, settings)
      report = {"variant": name, "repeat": repeat,
                **_report(result, calibration, convert_args, settings)}
      print(json.dumps(report, indent=2), flush=True)
      reports.append(report)
  if len(variants) > 1:
    def mean(name, key):
      values = [r[key] for r in reports if r["variant"] == name]
      return sum(values) / len(values)
    print(json.dumps({
        "speedup_wall": round(mean("baseline", "wall_s")
                              / mean("current", "wall_s"), 2),
        "speedup_cpu": round(mean("baseline", "cpu_s")
                             / mean("current", "cpu_s"), 2),
    }, indent=2))
  return 0


TOOL = tool.Tool(_PROGRAM, __doc__, _FLAGS,
                 build=lambda binding: binding.build(ConvertBenchFlags),
                 body=main, passes_args=True)


if __name__ == "__main__":
  TOOL.run()
