r"""escm2-study: estimators x seeds x simulator regimes, with the defaults.

Example (the committed study, docs/study/):

  escm2-study --work_dir=/tmp/study --output_dir=docs/study

simulates one dataset per (regime, seed), trains every estimator on it with
the library's default configuration, scores it against the simulator's truth
and writes ``study.json`` (every run and the summary), ``study.md`` (tables
of means and 95 % intervals over seeds, paired differences against ESMM and
naive, the verdict on issue 11's target) and PNG figures (with the optional
matplotlib). A line per finished run shows its numbers and the ETA. A study
that is interrupted resumes: runs already in ``study.json`` are skipped and
finished datasets in ``--work_dir`` are reused.

Regimes are ``--regime=NAME:ctr=..,cvr=..,corr=..,train=..,test=..``
(repeatable); without, the default design (``escm2_tf.study.grid``). A grid
that cannot run exits with status 2 and one line, before writing anything.
"""

import os
import sys
from typing import Sequence

from absl import app
from absl import flags

from escm2_tf.study import grid

_USAGE_ERROR = 2
# Other CLIs define some of these names too (--work_dir, --output_dir): all
# allow override, so that the CLIs load into one process (the test suite).
_WORK_DIR = flags.DEFINE_string(
    "work_dir", "", "Datasets and model directories (reused on resume).",
    allow_override=True)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where study.json, study.md and the figures go.",
    allow_override=True)
_REGIMES = flags.DEFINE_multi_string(
    "regime", [], "NAME:ctr=F,cvr=F,corr=F,train=N,test=N; repeatable. "
    "Default: the design of escm2_tf.study.grid.DEFAULT_REGIMES.",
    allow_override=True)
_SEEDS = flags.DEFINE_list(
    "seeds", [str(s) for s in grid.DEFAULT_SEEDS],
    "Seeds (simulator and training); at least 2.", allow_override=True)
_ESTIMATORS = flags.DEFINE_list("estimators", list(grid.ESTIMATORS),
                                "LossConfig.loss values to compare.",
                                allow_override=True)
_RESUME = flags.DEFINE_boolean(
    "resume", True, "Skip runs already in OUTPUT_DIR/study.json.",
    allow_override=True)

JSON_NAME = "study.json"
MARKDOWN_NAME = "study.md"


def _fail(message: str) -> int:
  print(f"escm2-study: error: {message}", file=sys.stderr)
  return _USAGE_ERROR


def _config() -> grid.StudyConfig:
  seeds = []
  for text in _SEEDS.value:
    try:
      seeds.append(int(text))
    except ValueError:
      raise grid.StudyError(f"--seeds: {text!r} is not an integer") from None
  regimes = (tuple(grid.parse_regime(spec) for spec in _REGIMES.value)
             or grid.DEFAULT_REGIMES)
  return grid.StudyConfig(regimes=regimes, seeds=tuple(seeds),
                          estimators=tuple(_ESTIMATORS.value))


def _write_text(path: str, text: str) -> None:
  temporary = f"{path}.tmp"
  with open(temporary, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(temporary, path)


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    return _fail(f"unexpected arguments {' '.join(argv[1:])!r}")
  for holder in (_WORK_DIR, _OUTPUT_DIR):
    if not holder.value:
      return _fail(f"--{holder.name} is required")
  try:
    config = _config()
  except grid.StudyError as error:
    return _fail(str(error))
  # TensorFlow and Beam load only for a grid that can run.
  from escm2_tf.study import report  # pylint: disable=import-outside-toplevel
  from escm2_tf.study import runner  # pylint: disable=import-outside-toplevel
  output_dir = _OUTPUT_DIR.value
  try:
    results = runner.run_study(
        config, _WORK_DIR.value, os.path.join(output_dir, JSON_NAME),
        progress=lambda line: print(line, flush=True),
        resume=_RESUME.value)
  except grid.StudyError as error:
    return _fail(str(error))
  markdown = os.path.join(output_dir, MARKDOWN_NAME)
  _write_text(markdown, report.markdown(results))
  print(f"escm2-study: wrote {os.path.join(output_dir, JSON_NAME)} and "
        f"{markdown}")
  try:
    paths = report.write_figures(results, output_dir)
  except ImportError:
    print("escm2-study: matplotlib is not installed, so no figures were "
          "drawn (pip install 'escm2-tf[plot]'); the JSON and Markdown are "
          "complete")
  else:
    print(f"escm2-study: wrote {len(paths)} figures: "
          f"{', '.join(os.path.basename(p) for p in paths)}")
  return 0


def run() -> None:
  app.run(main)


if __name__ == "__main__":
  run()
