"""The report of ``escm2-bench``: a JSON-ready dict and its text table."""

import platform
from typing import Any, Mapping

from escm2_tf import options

Report = dict[str, Any]


def cpu_model() -> str:
  """The CPU's model name (what ``lscpu`` prints), or the platform's guess."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"




def _summary(results: Mapping[str, Any]) -> dict[str, Any]:
  """Training throughput as a share of the parse ceiling of the same run."""
  summary = {}
  ceiling = results.get("parse", {}).get("ceiling", {}).get("examples_per_s")
  for loss, run in results.get("training", {}).items():
    if "train" in run and ceiling:
      summary[f"train_{loss}_over_parse_ceiling"] = (
          run["train"]["examples_per_s"] / ceiling)
  return summary


def build(machine: Mapping[str, Any], settings: Mapping[str, Any],
          results: Mapping[str, Any]) -> Report:
  """Everything measured, with the machine and settings, JSON-ready."""
  return options.json_ready({"machine": machine, "settings": settings,
                      "results": results, "summary": _summary(results)})


def _rate(values: Mapping[str, Any], unit: str) -> str:
  return (f"{values[f'{unit}_per_s']:,.0f}/s "
          f"({values[f'{unit}_per_cpu_s']:,.0f} per CPU-s, "
          f"{values['cores_busy']:.2f} cores)")


def _rows(report: Report) -> list[tuple[str, str, str]]:
  results, settings = report["results"], report["settings"]
  rows = []
  if "simulate" in results:
    rows.append(("simulate", "rows", _rate(results["simulate"], "rows")))
    rows.append(("simulate", "format, ids per field",
                 f"{settings['raw_format']}, at most "
                 f"{settings['max_ids_per_field']}"))
  if "convert" in results:
    convert = results["convert"]
    rows.append(("convert", "rows", _rate(convert, "rows")))
    rows.append(("convert", "peak RSS",
                 f"{convert['process_peak_rss_mb']:,.0f} MB"))
  if "parse" in results:
    parse = results["parse"]
    rows.append(("parse ceiling", "examples", _rate(parse["ceiling"],
                                                    "examples")))
    rows.append(("parse w/o weights", "examples",
                 _rate(parse["without_weights"], "examples")))
    rows.append(("parse", "ids per example",
                 f"{parse['ids_per_example']:.1f}"))
  summary = report["summary"]
  for loss, run in results.get("training", {}).items():
    if "train" in run:
      train = run["train"]
      rows.append((f"train {loss}", "examples", _rate(train, "examples")))
      ratio = summary.get(f"train_{loss}_over_parse_ceiling")
      if ratio is not None:
        rows.append((f"train {loss}", "of parse ceiling", f"{ratio:.2f}"))
      rows.append((f"train {loss}", "peak RSS",
                   f"{train['peak_rss_mb']:,.0f} MB"))
    if "eval" in run:
      rows.append((f"eval {loss}", "examples", _rate(run["eval"], "examples")))
  for batch, serve in results.get("serve", {}).items():
    if batch.startswith("batch_"):
      rows.append((f"serve {batch.replace('_', ' ')}", "p50 / p99",
                   f"{serve['p50_ms']:.2f} / {serve['p99_ms']:.2f} ms "
                   f"({serve['cpu_ms_per_request']:.2f} CPU-ms/request)"))
  for optimizer, quality in results.get("quality", {}).items():
    if not isinstance(quality, Mapping):
      continue  # The process's own figures.
    rows.append((f"quality {optimizer}", "AUC ctr / cvr / ctcvr",
                 f"{quality['auc_ctr']:.4f} / {quality['auc_cvr']:.4f} / "
                 f"{quality['auc_ctcvr']:.4f}"))
  return rows


def format_table(report: Report) -> str:
  """A plain-text table of the report, headed by the machine and settings."""
  machine, settings = report["machine"], report["settings"]
  hparams = settings["hparams"]
  model = hparams["model"]
  lines = [
      f"{machine['cpu']}, {machine['cpus']} CPUs, load average "
      f"{machine['load_average_start']:.1f} at start, "
      f"{machine['load_average_end']:.1f} at end",
      f"{report['results']['data']['train_records']:,} training / "
      f"{report['results']['data']['test_records']:,} test records in "
      f"{report['results']['data']['dir']}; "
      f"{settings['hparams_file']}: batch {hparams['batch_size']}, embedding "
      f"{model['embedding_dim']}, {model['backbone']} {model['num_experts']}x"
      f"{','.join(map(str, model['expert_units']))}, towers "
      f"{','.join(map(str, model['tower_units']))}, lr "
      f"{hparams['learning_rate']}, compat {hparams['loss']['compat']}; "
      f"{settings['optimizer']}, steps_per_execution "
      f"{settings['train_steps_per_execution']}",
  ]
  rows = _rows(report)
  widths = [max(len(row[i]) for row in rows + [("part", "metric", "")])
            for i in range(2)]
  lines.append(f"{'part':{widths[0]}}  {'metric':{widths[1]}}  value")
  for part, metric, value in rows:
    lines.append(f"{part:{widths[0]}}  {metric:{widths[1]}}  {value}")
  return "\n".join(lines)
