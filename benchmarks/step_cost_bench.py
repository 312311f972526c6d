r"""CPU milliseconds per training step, the input pipeline left out.

Parses 64 batches of the converter's training records once, keeps them in
memory, and times ``model.fit`` over them (after a warm-up) for each
optimizer, ``steps_per_execution`` and with or without the streaming AUCs
of ``train_step``. The network, loss and batch size come from an escm2-train
flagfile. CPU seconds count all threads of this process, so other processes
on a shared machine do not inflate them as they do wall time.

  .venv/bin/python benchmarks/step_cost_bench.py --data_dir=/tmp/pr \
      --runs=adam:1:auc,sparse_adam:32:auc,sparse_adam:32:none
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import dataclasses
import json
import re
import time

from escm2_tf import config as config_lib
from escm2_tf import flagbind
from escm2_tf import tool
from escm2_tf import layout
from escm2_tf import options
from escm2_tf.bench import hparams as hparams_lib
from escm2_tf.options import ConfigError
from escm2_tf.options import option

_PROGRAM = "step_cost_bench"
_RUN = re.compile(rf"^({'|'.join(config_lib.OPTIMIZERS)}):([1-9][0-9]*):"
                  r"(auc|none)$")


@dataclasses.dataclass(frozen=True)
class StepCostFlags:
  """The data and the timed runs.

  Attributes:
    data_dir: Converted train/ (as escm2-convert writes it).
    train_flagfile: The escm2-train flagfile, or a shipped config's name.
    runs: optimizer:steps_per_execution:auc|none for each timed run.
    steps: Timed steps per run.
  """
  data_dir: str = option("", group="data")
  train_flagfile: str = option("paddlerec", group="training")
  runs: tuple[str, ...] = ("adam:1:auc", "adam:32:auc", "lazy_adam:32:auc",
                           "sparse_adam:32:auc", "sparse_adam:32:none")
  steps: int = option(256, minimum=1)

  def __post_init__(self):
    if not self.data_dir:
      raise ConfigError("data_dir", "is required")
    for run in self.runs:
      if not _RUN.match(run):
        raise ConfigError("runs", f"{run!r} is not optimizer:"
                          "steps_per_execution:auc|none")
    options.check_declared(self)


_FLAGS = flagbind.Binding(flagbind.Section(StepCostFlags, "benchmark"))


def main(settings: StepCostFlags) -> int:
  try:
    hparams = hparams_lib.hparams_from_flagfile(settings.train_flagfile)
  except ConfigError:
    raise
  except (OSError, ValueError) as e:
    raise ConfigError("train_flagfile", str(e)) from None
  # pylint: disable=g-import-not-at-top
  import tf_keras as keras
  from escm2_tf import data
  from escm2_tf import model as model_lib
  from escm2_tf import optimizers
  from escm2_tf import vocab
  # pylint: enable=g-import-not-at-top
  vocabularies = vocab.load_vocabularies(
      layout.training_vocab_dir(settings.data_dir))
  batches = data.make_dataset(
      layout.examples(settings.data_dir, layout.TRAIN), hparams.batch_size,
      training=True, seed=1, with_weights=hparams.model.use_weights
  ).take(64).cache().repeat()
  for _ in batches.take(64):
    pass
  for run in settings.runs:
    optimizer, steps_per_execution, metrics = run.split(":")
    keras.utils.set_random_seed(1)
    model = model_lib.build_model(hparams.model, hparams.loss, vocabularies)
    if metrics == "none":
      model.task.task_metrics = []
    model.compile(optimizer=optimizers.make_optimizer(
        optimizer, hparams.learning_rate),
                  steps_per_execution=int(steps_per_execution))
    model.fit(batches, steps_per_epoch=64, epochs=1, verbose=0)
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(batches, steps_per_epoch=settings.steps, epochs=1, verbose=0)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({
        "optimizer": optimizer, "steps_per_execution": int(steps_per_execution),
        "streaming_aucs": metrics != "none",
        "cpu_ms_per_step": round(1000 * cpu / settings.steps, 2),
        "wall_ms_per_step": round(1000 * wall / settings.steps, 2),
        "table_rows": int(model.network.get_layer("embedding").num_rows)}),
          flush=True)
  return 0


TOOL = tool.Tool(_PROGRAM, __doc__, _FLAGS,
                 build=lambda binding: binding.build(StepCostFlags), body=main)


if __name__ == "__main__":
  TOOL.run()
