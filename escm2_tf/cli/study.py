r"""escm2-study: estimators x seeds x simulator regimes, with the defaults.

Example (the committed study, docs/study/):

  escm2-study --work_dir=/tmp/study --output_dir=docs/study

simulates one dataset per (regime, seed), trains every estimator on it with
the library's default configuration, scores it against the simulator's truth
and writes ``study.json`` (every run and the summary), ``study.md`` (tables
of means and 95 % intervals over seeds, paired differences against ESMM and
naive, the verdict on the study's target) and PNG figures (with the optional
matplotlib). A line per finished run shows its numbers and the ETA. A study
that is interrupted resumes: runs already in ``study.json`` are skipped and
finished datasets in ``--work_dir`` are reused.

``--design=NAME`` picks regimes and estimators (escm2_tf.study.designs):
``default``, ``estimator_table`` (ESMM, naive, IPW and DR with the paper's
and PaddleRec's losses on 1M impressions), ``propensity_sweep`` (ESMM with
``min_count`` 1, 100 and 20). ``--regime=NAME:ctr=..,cvr=..,corr=..,train=..,
test=..[,users=..,items=..]`` (repeatable; the world's ids, the
simulator's defaults without) replaces the design's regimes,
``--estimators`` its estimators (an estimator ``<loss>_true``, for ipw, dr,
dr_jl and mrdr, weighs clicks by the simulator's true p_click); ``--arm=NAME:field=value,...`` (repeatable) adds an estimator
with ExperimentConfig settings of its own (by flag name). A grid that
cannot run exits with status 2 and one line, before writing anything.

  escm2-study --design=propensity_sweep --work_dir=/tmp/ps \
      --output_dir=/tmp/ps/out
"""

import dataclasses
import os

from escm2_tf import console
from escm2_tf import flagbind
from escm2_tf import layout
from escm2_tf import options
from escm2_tf import tool
from escm2_tf.options import ConfigError
from escm2_tf.options import option
from escm2_tf.study import designs
from escm2_tf.study import grid
from escm2_tf.study import regime as regime_lib

_PROGRAM = "escm2-study"
JSON_NAME = "study.json"
MARKDOWN_NAME = "study.md"


@dataclasses.dataclass(frozen=True)
class StudyFlags:
  """The grid to run and where its outputs go.

  Attributes:
    work_dir: Datasets and model directories (reused on resume).
    output_dir: Where study.json, study.md and the figures go.
    design: The regimes and estimators to run (escm2_tf.study.designs).
    regime: NAME:ctr=F,cvr=F,corr=F,train=N,test=N[,users=N,items=N];
      repeatable. Default: the design's.
    seeds: Seeds (simulator and training); at least 2.
    estimators: LossConfig.loss values, <loss>_true (weighted by the true
      p_click) or --arm names to compare. Default: the design's.
    arm: NAME:field=value,... of ExperimentConfig fields (flag names), an
      estimator of its own; repeatable.
    resume: Skip runs already in OUTPUT_DIR/study.json.
    keep_models: Keep each run's model directory (checkpoints, config.json,
      metrics.json) in WORK_DIR/models/REGIME/seedSEED/ESTIMATOR for later
      analysis, e.g. benchmarks/level_estimates.py; otherwise it is removed
      once the run is scored.
  """
  work_dir: str = option("", group="data")
  output_dir: str = option("", group="output")
  design: str = option("default", choices=tuple(designs.DESIGNS),
                       group="data")
  regime: tuple[str, ...] = option((), group="data", repeatable=True)
  seeds: tuple[int, ...] = option(grid.DEFAULT_SEEDS, group="data")
  estimators: tuple[str, ...] = option((), group="loss")
  arm: tuple[str, ...] = option((), group="loss", repeatable=True)
  resume: bool = option(True, group="output")
  keep_models: bool = option(False, group="output")

  def __post_init__(self):
    for name in ("work_dir", "output_dir"):
      if not getattr(self, name):
        raise ConfigError(name, "is required")
    options.check_declared(self)


def _config(settings: StudyFlags) -> grid.StudyConfig:
  design = designs.DESIGNS[settings.design]
  regimes = (tuple(regime_lib.parse_regime(spec) for spec in settings.regime)
             or design.regimes)
  arms = tuple(designs.parse_arm(spec) for spec in settings.arm)
  estimators = settings.estimators or (
      () if settings.arm else design.estimators)
  return grid.StudyConfig(
      regimes=regimes, seeds=tuple(settings.seeds),
      estimators=(*estimators, *(arm.name for arm in arms)),
      arms=(*arms, *design.arms))


def _settings(binding: flagbind.Binding
              ) -> tuple[StudyFlags, grid.StudyConfig]:
  settings = binding.build(StudyFlags)
  return settings, _config(settings)


def _study(settings: tuple[StudyFlags, grid.StudyConfig]) -> int:
  flag_settings, config = settings
  # TensorFlow and Beam load only for a grid that can run.
  from escm2_tf.study import report  # pylint: disable=import-outside-toplevel
  from escm2_tf.study import runner  # pylint: disable=import-outside-toplevel
  output_dir = flag_settings.output_dir
  with console.interruptible() as check:
    results = runner.run_study(
        config, flag_settings.work_dir, os.path.join(output_dir, JSON_NAME),
        progress=lambda line: print(line, flush=True),
        resume=flag_settings.resume, keep_models=flag_settings.keep_models,
        callbacks=[console.interrupt_callback(check)])
  markdown = os.path.join(output_dir, MARKDOWN_NAME)
  layout.atomic_write(markdown, report.markdown(results))
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


TOOL = tool.Tool(_PROGRAM, __doc__,
                 flagbind.Binding(flagbind.Section(StudyFlags, "data")),
                 build=_settings, body=_study,
                 interrupted="interrupted; rerun the same command to train the "
                 "runs that are not in --output_dir's study.json yet")


def run() -> None:
  TOOL.run()


if __name__ == "__main__":
  run()
