r"""The full-scale rehearsal: simulate, convert, train, evaluate, score.

For every size in ``--sizes`` (training impressions), in its own directory
under ``--work_dir``, this runs the console scripts a user runs on the
Tianchi release, each as a child process:

1. ``escm2-synth`` at Ali-CCP's shape: impressions per user and per common
   row as in the release (42.3M training impressions, 730K common rows; about
   90K users per 10M impressions), a test split of ``--test_fraction``;
2. ``escm2-convert --input_format=aliccp`` of the training split, then of the
   test split (the converter's defaults);
3. ``escm2-train --flagfile=configs/bigdata.flags`` with only the paths
   overridden: one epoch, evaluation into metrics.json, the export;
4. ``escm2-evaluate`` of the export on the test split;
5. ``escm2-predict`` of the export on the test split.

For each stage it records wall time, CPU time (the stage's process and every
descendant it waited for), the peak resident memory of the whole process tree
(sampled from /proc every 0.2 s) and the bytes of its outputs. It then reads
the vocabularies with ``--min_count=5``: sizes and out-of-vocabulary rates of
the training and the test ids. With two sizes or more, it projects every
stage to the full release (85M impressions) from the largest two sizes:
``t(85M) = t(large) + slope * (85M - large)``, and checks linearity: the
ratio of the per-impression times of the two sizes.

  nice -n 5 .venv/bin/python benchmarks/rehearsal.py \
      --work_dir=/tmp/rehearsal --sizes=1000000,10000000 \
      --report=docs/rehearsal.json > /tmp/rehearsal.log 2>&1

It prints one JSON report (also written to ``--report``); docs/rehearsal.md
is written from it.
"""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np

from escm2_tf import flagbind
from escm2_tf import tool
from escm2_tf import layout
from escm2_tf import options
from escm2_tf.bench import hparams as hparams_lib
from escm2_tf.bench import processes
from escm2_tf.options import option

_PROGRAM = "rehearsal"


@dataclasses.dataclass(frozen=True)
class RehearsalFlags:
  """The sizes to rehearse, the simulated world's shape and the outputs.

  Attributes:
    work_dir: Where every size's data and runs go.
    sizes: Training impressions of each rehearsal.
    test_fraction: Test impressions per training impression.
    users_per_impression: Users per training impression (about 90K per 10M).
    items_per_impression: Items per training impression (the simulator's
      default world holds one per 10 of its default 200K impressions).
    impressions_per_request: Impressions per common row: 42.3M / 730K in the
      release.
    min_count: As in configs/bigdata.flags.
    oov_sample: Test records read for the test OOV rates.
    train_flagfile: The escm2-train flagfile, or a shipped config's name.
    report: Also write the JSON here.
    markdown: Also write the tables as Markdown here (or, with
      --from_report, only that).
    previous_runs: JSON of {size: run} from an earlier rehearsal of the same
      code (as it prints each size); those sizes are not rerun.
    from_report: Write --markdown from this JSON report, run nothing.
    keep_data: Keep the data of every size (they are large).
  """
  work_dir: str = option("/tmp/escm2_rehearsal", group="data")
  sizes: tuple[int, ...] = option((1_000_000, 10_000_000), minimum=1,
                                  group="data")
  test_fraction: float = option(0.2, minimum=0.0, group="data")
  users_per_impression: float = option(0.009, minimum=0.0, group="data")
  items_per_impression: float = option(0.05, minimum=0.0, group="data")
  impressions_per_request: int = option(58, minimum=1, group="data")
  min_count: int = option(5, minimum=1)
  oov_sample: int = option(200_000, minimum=1)
  train_flagfile: str = option("bigdata", group="training")
  report: str = option("", group="output")
  markdown: str = option("", group="output")
  previous_runs: str = option("", group="input")
  from_report: str = option("", group="input")
  keep_data: bool = option(False, group="output")

  def __post_init__(self):
    options.check_declared(self)
    if self.from_report and not self.markdown:
      raise options.ConfigError("from_report", "needs --markdown")


_FLAGS = flagbind.Binding(flagbind.Section(RehearsalFlags, "benchmark"))

FULL_IMPRESSIONS = 85_000_000


def _run(name: str, command: list[str], outputs: list[str],
         log_path: str) -> dict:
  """Runs one stage; its wall, CPU, peak tree RSS, output bytes, log lines.

  Every stdout line is stamped with the seconds since the start, so a
  stage's phases (training's epoch, then its evaluation and export) can be
  told apart.
  """
  before = processes.children_cpu_seconds()
  start = time.perf_counter()
  child = subprocess.Popen(command, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, bufsize=1)
  sampler = processes.PeakRss(child)
  stamped = []
  with open(log_path, "w") as log:
    log.write(" ".join(command) + "\n")
    for line in child.stdout:
      stamp = time.perf_counter() - start
      stamped.append((stamp, line.rstrip("\n")))
      log.write(f"[{stamp:8.1f}s] {line}")
      log.flush()
  child.wait()
  wall = time.perf_counter() - start
  peak = sampler.join()
  cpu = processes.children_cpu_seconds() - before
  if child.returncode:
    tail = "\n".join(line for _, line in stamped[-20:])
    sys.exit(f"rehearsal: stage {name} failed ({child.returncode}):\n{tail}")
  result = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "peak_rss_mb": round(peak / 2**20),
            "written_mb": round(sum(
                processes.dir_bytes(p) if os.path.isdir(p)
                else os.path.getsize(p) for p in outputs
                if os.path.exists(p)) / 2**20, 1),
            "command": " ".join(command)}
  print(f"{name}: {json.dumps(result)}", flush=True)
  result["_lines"] = stamped
  return result


def _script(name: str) -> str:
  return os.path.join(os.path.dirname(sys.executable), name)


def _training_phases(lines: list[tuple[float, str]]) -> dict:
  """Start-up, the epoch, the final evaluation and the export, in seconds.

  ``escm2-train --verbose=2`` prints one line when the epoch (with its
  validation) ends, ``N/N - <seconds>s - loss: ...``, Keras' own count of
  it; TensorFlow logs the export's signatures as they are traced, and the
  trainer prints ``Exported SavedModel`` at the end.
  """
  def first(predicate, after=0.0):
    return next((stamp for stamp, line in lines
                 if stamp >= after and predicate(line)), None)

  epoch_end = first(lambda line: " - loss:" in line)
  if epoch_end is None:
    return {}
  line = next(line for stamp, line in lines if stamp == epoch_end
              and " - loss:" in line)
  match = re.search(r" - (\d+)s - loss:", line)
  keras_epoch = float(match.group(1)) if match else None
  export_start = first(lambda line: "signature_serialization" in line,
                       epoch_end)
  done = first(lambda line: line.startswith("Exported SavedModel"), epoch_end)
  phases = {"keras_epoch_s": keras_epoch,
            "start_up_s": None if keras_epoch is None else round(
                epoch_end - keras_epoch, 1)}
  if export_start is not None and done is not None:
    phases.update(evaluation_s=round(export_start - epoch_end, 1),
                  export_s=round(done - export_start, 1))
  return phases


def _vocabulary(data_dir: str, min_count: int, sample: int) -> dict:
  """Vocabulary sizes and OOV rates, per field and overall."""
  # escm2_tf first: it selects Keras 2 before TensorFlow loads.
  from escm2_tf import schema  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  vocab_dir = layout.training_vocab_dir(data_dir)
  kept, counts = {}, {}
  for field in schema.FIELD_NAMES:
    table = np.loadtxt(layout.vocabulary_file(vocab_dir, field),
                       dtype=np.int64, ndmin=2)
    counts[field] = table
    kept[field] = np.sort(table[table[:, 1] >= min_count, 0])
  test_total = {f: 0 for f in schema.FIELD_NAMES}
  test_unknown = {f: 0 for f in schema.FIELD_NAMES}
  test_absent = {f: 0 for f in schema.FIELD_NAMES}
  spec = {f: tf.io.RaggedFeature(tf.int64) for f in schema.FIELD_NAMES}
  files = tf.io.gfile.glob(layout.examples(data_dir, layout.TEST))
  dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").take(
      sample).batch(4096).map(lambda s: tf.io.parse_example(s, spec))
  all_ids = {f: np.sort(counts[f][:, 0]) for f in schema.FIELD_NAMES}
  for batch in dataset:
    for field in schema.FIELD_NAMES:
      ids = batch[field].flat_values.numpy()
      test_total[field] += ids.size
      test_unknown[field] += int((~_member(ids, kept[field])).sum())
      test_absent[field] += int((~_member(ids, all_ids[field])).sum())
  fields = {}
  for field in schema.FIELD_NAMES:
    table = counts[field]
    occurrences = int(table[:, 1].sum())
    rare = int(table[table[:, 1] < min_count, 1].sum())
    fields[field] = {
        "ids": int(len(table)), "ids_kept": int(len(kept[field])),
        "train_oov_rate": rare / max(occurrences, 1),
        "test_oov_rate": test_unknown[field] / max(test_total[field], 1),
        "test_unseen_rate": test_absent[field] / max(test_total[field], 1)}
  total_train = sum(int(counts[f][:, 1].sum()) for f in counts)
  total_test = sum(test_total.values())
  return {
      "min_count": min_count, "test_records_sampled": sample,
      "ids": sum(v["ids"] for v in fields.values()),
      "ids_kept": sum(v["ids_kept"] for v in fields.values()),
      "train_oov_rate": sum(int(counts[f][counts[f][:, 1] < min_count, 1].sum())
                            for f in counts) / max(total_train, 1),
      "test_oov_rate": sum(test_unknown.values()) / max(total_test, 1),
      "test_unseen_rate": sum(test_absent.values()) / max(total_test, 1),
      "fields": fields}


def _member(values: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
  if not sorted_ids.size:
    return np.zeros(values.shape, bool)
  positions = np.minimum(np.searchsorted(sorted_ids, values),
                         sorted_ids.size - 1)
  return sorted_ids[positions] == values


def _rehearse(size: int, settings: RehearsalFlags) -> dict:
  root = os.path.join(settings.work_dir, f"n{size}")
  shutil.rmtree(root, ignore_errors=True)
  os.makedirs(root)
  raw, data_dir, run_dir = (os.path.join(root, name)
                            for name in ("raw", "data", "run"))
  num_test = max(1, int(size * settings.test_fraction))
  logs = os.path.join(root, "logs")
  os.makedirs(logs)
  stages = {}
  stages["synth"] = _run("synth", [
      _script("escm2-synth"), f"--output_dir={raw}", f"--num_train={size}",
      f"--num_test={num_test}", "--seed=0",
      f"--num_users={max(1, round(size * settings.users_per_impression))}",
      f"--num_items={max(1000, round(size * settings.items_per_impression))}",
      f"--impressions_per_request={settings.impressions_per_request}"],
      [raw], os.path.join(logs, "synth.log"))
  for split in layout.SPLITS:
    names = layout.raw_file_names("aliccp", split)
    output_dir = layout.split_dir(data_dir, split)
    stages[f"convert_{split}"] = _run(f"convert_{split}", [
        _script("escm2-convert"), "--input_format=aliccp",
        f"--skeleton={os.path.join(raw, names['skeleton'])}",
        f"--common_features={os.path.join(raw, names['common'])}",
        f"--output_dir={output_dir}"],
        [output_dir], os.path.join(logs, f"convert_{split}.log"))
  export_dir = os.path.join(run_dir, "export")
  train = _run("train", [
      _script("escm2-train"),
      f"--flagfile={hparams_lib.flagfile_path(settings.train_flagfile)}",
      f"--train_data={data_dir}/train/*.tfrecord.gz",
      f"--eval_data={data_dir}/test/*.tfrecord.gz",
      f"--vocab_dir={data_dir}/train/vocab", f"--model_dir={run_dir}",
      f"--export_dir={export_dir}", "--verbose=2"],
      [run_dir], os.path.join(logs, "train.log"))
  train["phases"] = _training_phases(train["_lines"])
  stages["train"] = train
  stages["evaluate"] = _run("evaluate", [
      _script("escm2-evaluate"), f"--saved_model={export_dir}",
      f"--data={data_dir}/test/*.tfrecord.gz",
      f"--output={root}/evaluation.json"],
      [os.path.join(root, "evaluation.json")],
      os.path.join(logs, "evaluate.log"))
  stages["predict"] = _run("predict", [
      _script("escm2-predict"), f"--saved_model={export_dir}",
      f"--data={data_dir}/test/*.tfrecord.gz",
      f"--output={root}/scores.csv"],
      [os.path.join(root, "scores.csv")], os.path.join(logs, "predict.log"))
  for stage in stages.values():
    stage.pop("_lines")
  with open(layout.stats_file(layout.split_dir(data_dir, layout.TRAIN))) as f:
    train_stats = json.load(f)
  with open(os.path.join(run_dir, "metrics.json")) as f:
    metrics = json.load(f)
  result = {
      "train_impressions": size, "test_impressions": num_test,
      "stages": stages,
      "vocabulary": _vocabulary(data_dir, settings.min_count,
                                settings.oov_sample),
      "train_rows_written": train_stats.get("rows_written"),
      "metrics": {k: v for k, v in metrics.items()
                  if k.startswith(("auc", "logloss", "count"))},
      "disk_mb": round(processes.dir_bytes(root) / 2**20)}
  if not settings.keep_data:
    shutil.rmtree(raw, ignore_errors=True)
    shutil.rmtree(data_dir, ignore_errors=True)
  return result


# The release: 42.3M training and 43.0M test impressions (NOTES.md).
RELEASE = {"train": 42_300_135, "test": 43_016_840}
# What each stage reads: the training split, the test split, or both.
_STAGE_SPLITS = {"synth": layout.SPLITS, "convert_train": ("train",),
                 "convert_test": ("test",), "train": ("train",),
                 "evaluate": ("test",), "predict": ("test",)}


def _impressions(run: dict, stage: str, sizes: dict | None = None) -> float:
  counts = sizes or {"train": run["train_impressions"],
                     "test": run["test_impressions"]}
  return sum(counts[split] for split in _STAGE_SPLITS[stage])


def _project(small: dict, large: dict) -> dict:
  """Every stage at the release's size, and how linear it was.

  Each stage is fitted as ``fixed + slope * impressions`` through the two
  sizes, counting the impressions it reads (the training split, the test
  split or both), and evaluated at the release's. Wall times of a loaded
  machine do not project; CPU seconds, memory and bytes do.
  """
  projection = {}
  for name, stage in large["stages"].items():
    before = small["stages"][name]
    n_small, n_large = _impressions(small, name), _impressions(large, name)
    n_full = _impressions(None, name, RELEASE)
    result = {"impressions_at_release": n_full}
    for key in ("cpu_s", "peak_rss_mb", "written_mb"):
      slope = (stage[key] - before[key]) / (n_large - n_small)
      result[f"{key}_at_release"] = round(
          stage[key] + slope * (n_full - n_large), 1)
      # 1.0 is linear through zero: the per-impression cost did not change.
      result[f"{key}_linearity"] = round(
          (stage[key] / n_large) / max(before[key] / n_small, 1e-12), 2)
    projection[name] = result
  largest = max(projection, key=lambda n: projection[n]["cpu_s_at_release"])
  steepest = max(projection, key=lambda n: projection[n]["cpu_s_linearity"])
  return {"stages": projection, "largest_cpu_at_release": largest,
          "least_linear_cpu": steepest,
          "total_cpu_h_at_release": round(sum(
              p["cpu_s_at_release"] for p in projection.values()) / 3600, 2)}


def _markdown(report: dict) -> str:
  """The report's tables: stages per size, projection, vocabulary."""
  lines = []
  stage_names = list(next(iter(report["runs"].values()))["stages"])
  for size, run in report["runs"].items():
    lines += [f"### {int(size):,} training impressions, "
              f"{run['test_impressions']:,} test impressions", "",
              "| stage | wall s | CPU s | cores | peak RSS (tree) MB | "
              "written MB | impressions/s |", "|---|---|---|---|---|---|---|"]
    for name in stage_names:
      stage = run["stages"][name]
      count = (run["test_impressions"] if name in
               ("convert_test", "evaluate", "predict") else
               int(size) + run["test_impressions"] if name == "synth" else
               int(size))
      lines.append(
          f"| {name} | {stage['wall_s']} | {stage['cpu_s']} | "
          f"{stage['cpu_s'] / max(stage['wall_s'], 1e-9):.2f} | "
          f"{stage['peak_rss_mb']} | {stage['written_mb']} | "
          f"{count / max(stage['wall_s'], 1e-9):,.0f} |")
    phases = run["stages"]["train"].get("phases", {})
    lines += ["", f"Inside `train`: start-up and checks "
              f"{phases.get('start_up_s')} s, the epoch with its validation "
              f"{phases.get('keras_epoch_s')} s (Keras' count), the final "
              f"evaluation {phases.get('evaluation_s')} s, the export "
              f"{phases.get('export_s')} s. Test metrics "
              "(metrics.json): " + ", ".join(
                  f"{k} {v:.4f}" for k, v in run["metrics"].items()
                  if k.startswith("auc") and v is not None) + ".", ""]
    vocabulary = run["vocabulary"]
    lines += [f"Vocabulary with `--min_count={vocabulary['min_count']}`: "
              f"{vocabulary['ids_kept']:,} of {vocabulary['ids']:,} ids kept; "
              f"OOV rate {100 * vocabulary['train_oov_rate']:.2f} % of the "
              f"training ids, {100 * vocabulary['test_oov_rate']:.2f} % of the "
              f"test ids ({100 * vocabulary['test_unseen_rate']:.2f} % never "
              f"seen in training; first {vocabulary['test_records_sampled']:,}"
              " test records).", "",
              "| field | ids | kept | train OOV % | test OOV % |",
              "|---|---|---|---|---|"]
    for field, values in vocabulary["fields"].items():
      lines.append(f"| {field} | {values['ids']:,} | {values['ids_kept']:,} | "
                   f"{100 * values['train_oov_rate']:.2f} | "
                   f"{100 * values['test_oov_rate']:.2f} |")
    lines.append("")
  projection = report.get("projection")
  if projection:
    lines += ["### Projection to the release (42.3M training, 43.0M test "
              "impressions)", "",
              "Each stage fitted as fixed + slope x impressions through the two "
              "sizes, counting the impressions it reads, and evaluated at the "
              "release's. Linearity is (cost/impressions at the larger size) / "
              "(the same at the smaller): 1.00 is linear; below 1 a fixed cost "
              "(start-up) is being amortised; above 1 the cost per impression "
              "grows. CPU hours on 2 cores assume both busy.", "",
              "| stage | CPU s at release | h on 2 cores | peak RSS MB at release"
              " | written MB at release | CPU linearity | RSS linearity |",
              "|---|---|---|---|---|---|---|"]
    for name, values in projection["stages"].items():
      lines.append(
          f"| {name} | {values['cpu_s_at_release']:,.0f} | "
          f"{values['cpu_s_at_release'] / 7200:.2f} | "
          f"{values['peak_rss_mb_at_release']:,.0f} | "
          f"{values['written_mb_at_release']:,.0f} | "
          f"{values['cpu_s_linearity']} | {values['peak_rss_mb_linearity']} |")
    lines += ["", f"Largest stage at the release (CPU): "
              f"{projection['largest_cpu_at_release']}; least linear: "
              f"{projection['least_linear_cpu']}; all stages "
              f"{projection['total_cpu_h_at_release']} CPU hours.", ""]
  return "\n".join(lines)


def main(settings: RehearsalFlags) -> int:
  if settings.from_report:
    with open(settings.from_report) as f:
      report = json.load(f)
    with open(settings.markdown, "w") as f:
      f.write(_markdown(report))
    return 0
  sizes = sorted(settings.sizes)
  started = time.time()
  report = {"sizes": sizes, "started_utc": time.strftime(
      "%Y-%m-%d %H:%M:%S", time.gmtime(started)),
            "load_average_at_start": os.getloadavg(),
            "cpus": os.cpu_count(), "runs": {}}
  if settings.previous_runs:
    with open(settings.previous_runs) as f:
      report["runs"].update(json.load(f))
    sizes = sorted(set(sizes) | {int(size) for size in report["runs"]})
  for size in sizes:
    if str(size) in report["runs"]:
      continue
    report["runs"][str(size)] = _rehearse(size, settings)
    print(json.dumps(report["runs"][str(size)], indent=1), flush=True)
  if len(sizes) >= 2:
    report["projection"] = _project(report["runs"][str(sizes[-2])],
                                    report["runs"][str(sizes[-1])])
  report["runs"] = {str(size): report["runs"][str(size)] for size in sizes}
  report["total_wall_s"] = round(time.time() - started)
  text = json.dumps(report, indent=1)
  print(text)
  if settings.report:
    with open(settings.report, "w") as f:
      f.write(text + "\n")
  if settings.markdown:
    with open(settings.markdown, "w") as f:
      f.write(_markdown(report))
  return 0


TOOL = tool.Tool(_PROGRAM, __doc__, _FLAGS,
                 build=lambda binding: binding.build(RehearsalFlags), body=main)


if __name__ == "__main__":
  TOOL.run()
