r"""Training throughput of escm2-train against the parse ceiling, per epoch.

Runs the trainer (``escm2_tf.training.train``, what ``escm2-train`` runs)
with a flagfile's settings, once for ``--short_epochs`` and once for
``--long_epochs`` epochs, each in a fresh process, and measures in the same
sitting the tf.data parse ceiling of the same training files. It prints:

- Keras' own count of an epoch: from the epoch's start to its last training
  step (what the progress bar times), per epoch, and the validation pass;
- the whole-run epoch: (long run - short run) / (long - short epochs) of the
  trainer's wall time, start-up and the one-time work (checks, final
  evaluation, export) cancelling out;
- examples/s of both, and their ratio to the parse ceiling.

  .venv/bin/python benchmarks/epoch_time_bench.py \
      --train_flagfile=configs/paddlerec.flags --data_dir=/tmp/pr \
      -- --optimizer=adam --steps_per_execution=1

``--data_dir`` holds ``train/`` and ``test/`` as escm2-convert writes them;
arguments after ``--`` are escm2-train flags that override the flagfile.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import dataclasses
import json
import shutil
import tempfile
import time
from typing import Any

from escm2_tf import flagbind
from escm2_tf import tool
from escm2_tf import layout
from escm2_tf import options
from escm2_tf.bench import hparams as hparams_lib
from escm2_tf.options import ConfigError
from escm2_tf.options import option

_PROGRAM = "epoch_time_bench"


@dataclasses.dataclass(frozen=True)
class EpochTimeFlags:
  """The data, the trainer's settings and the two run lengths.

  Attributes:
    data_dir: Converted train/ and test/ (as escm2-convert writes them).
    train_flagfile: The escm2-train flagfile, or a shipped config's name.
    short_epochs: Epochs of the short run.
    long_epochs: Epochs of the long run.
    parse_batches: Batches timed for the parse ceiling.
  """
  data_dir: str = option("", group="data")
  train_flagfile: str = option("paddlerec", group="training")
  short_epochs: int = option(1, minimum=1)
  long_epochs: int = option(3, minimum=2)
  parse_batches: int = option(200, minimum=1)

  def __post_init__(self):
    if not self.data_dir:
      raise ConfigError("data_dir", "is required")
    options.check_declared(self)
    if self.long_epochs <= self.short_epochs:
      raise ConfigError("long_epochs", "must be more than --short_epochs")


_FLAGS = flagbind.Binding(flagbind.Section(EpochTimeFlags, "benchmark"))


def _timeline() -> Any:
  """A callback keeping the wall and CPU seconds of every epoch's training
  loop and validation.

  ``epoch`` runs from the epoch's start to its ``on_epoch_end``, which runs
  after the trainer's own callbacks (checkpoints, backup).
  """
  import tf_keras as keras  # pylint: disable=g-import-not-at-top

  class Timeline(keras.callbacks.Callback):

    def __init__(self):
      super().__init__()
      self.train, self.validation, self.epoch, self.steps = [], [], [], []
      self.train_cpu, self.epoch_cpu = [], []

    def on_epoch_begin(self, epoch, logs=None):
      self._start = self._last = time.perf_counter()
      self._start_cpu = self._last_cpu = time.process_time()
      self._steps = 0

    def on_train_batch_end(self, batch, logs=None):
      self._last, self._last_cpu = time.perf_counter(), time.process_time()
      self._steps = batch + 1

    def on_test_begin(self, logs=None):
      self._test_start = time.perf_counter()

    def on_test_end(self, logs=None):
      self.validation.append(time.perf_counter() - self._test_start)

    def on_epoch_end(self, epoch, logs=None):
      self.train.append(self._last - self._start)
      self.train_cpu.append(self._last_cpu - self._start_cpu)
      self.epoch.append(time.perf_counter() - self._start)
      self.epoch_cpu.append(time.process_time() - self._start_cpu)
      self.steps.append(self._steps)

  return Timeline()


def _train(args: list[str], epochs: int) -> dict[str, Any]:
  """One trainer run in this (fresh) process; its wall time and timeline."""
  from escm2_tf import training  # pylint: disable=g-import-not-at-top
  model_dir = tempfile.mkdtemp(prefix="escm2_epoch_bench_")
  config = hparams_lib.experiment_config(
      [*args, f"--epochs={epochs}", f"--model_dir={model_dir}",
       f"--export_dir={model_dir}/export"])
  timeline = _timeline()
  start, start_cpu = time.perf_counter(), time.process_time()
  result = training.train(config, callbacks=[timeline], verbose=0)
  wall = time.perf_counter() - start
  cpu = time.process_time() - start_cpu
  shutil.rmtree(model_dir, ignore_errors=True)
  return {"wall_s": wall, "cpu_s": cpu, "train_loop_s": timeline.train,
          "train_loop_cpu_s": timeline.train_cpu,
          "validation_s": timeline.validation, "epoch_s": timeline.epoch,
          "epoch_cpu_s": timeline.epoch_cpu, "steps": timeline.steps,
          "epochs": result["epochs"],
          "auc": {k: v for k, v in result["metrics"].items()
                  if k.startswith("auc")}}


def main(settings: EpochTimeFlags, args: list[str]) -> int:
  # Imports TensorFlow, which the tool's quiet start-up filters.
  from escm2_tf.bench import harness  # pylint: disable=g-import-not-at-top
  overrides = args
  data_dir = settings.data_dir
  short_epochs, long_epochs = settings.short_epochs, settings.long_epochs
  train_files = layout.examples(data_dir, layout.TRAIN)
  trainer_argv = [
      f"--flagfile={hparams_lib.flagfile_path(settings.train_flagfile)}",
      f"--train_data={train_files}",
      f"--eval_data={layout.examples(data_dir, layout.TEST)}",
      f"--vocab_dir={layout.training_vocab_dir(data_dir)}", *overrides]
  num_train = sum(1 for _ in _records(train_files))
  parse = harness.run_isolated(harness.measure_parse, file_pattern=train_files,
                               batch_size=1024,
                               num_examples=settings.parse_batches * 1024)
  runs = {epochs: harness.run_isolated(_train, args=trainer_argv,
                                       epochs=epochs)
          for epochs in (short_epochs, long_epochs)}
  short, long = runs[short_epochs], runs[long_epochs]
  whole_run_epoch = (long["wall_s"] - short["wall_s"]) / (
      long_epochs - short_epochs)
  # Later epochs: the first one also traces the graph.
  keras_epoch = sum(long["train_loop_s"][1:]) / (len(long["train_loop_s"]) - 1)
  keras_epoch_cpu = sum(long["train_loop_cpu_s"][1:]) / (
      len(long["train_loop_cpu_s"]) - 1)
  whole_run_epoch_cpu = (long["cpu_s"] - short["cpu_s"]) / (
      long_epochs - short_epochs)
  ceiling = parse["ceiling"]["examples_per_s"]
  ceiling_cpu = parse["ceiling"]["examples_per_cpu_s"]
  report = {
      "overrides": overrides, "train_examples": num_train,
      "parse_ceiling_per_s": ceiling,
      "parse_without_weights_per_s":
          parse["without_weights"]["examples_per_s"],
      "keras_epoch_s": keras_epoch,
      "keras_examples_per_s": num_train / keras_epoch,
      "keras_fraction_of_ceiling": num_train / keras_epoch / ceiling,
      "whole_run_epoch_s": whole_run_epoch,
      "whole_run_examples_per_s": num_train / whole_run_epoch,
      "whole_run_fraction_of_ceiling": num_train / whole_run_epoch / ceiling,
      "whole_run_over_keras": whole_run_epoch / keras_epoch,
      "keras_epoch_cpu_s": keras_epoch_cpu,
      "whole_run_epoch_cpu_s": whole_run_epoch_cpu,
      "whole_run_over_keras_cpu": whole_run_epoch_cpu / keras_epoch_cpu,
      # Per CPU-second: what other processes on the machine do not change.
      "parse_ceiling_per_cpu_s": ceiling_cpu,
      "keras_examples_per_cpu_s": num_train / keras_epoch_cpu,
      "whole_run_examples_per_cpu_s": num_train / whole_run_epoch_cpu,
      "whole_run_cpu_fraction_of_ceiling":
          num_train / whole_run_epoch_cpu / ceiling_cpu,
      "runs": {str(k): v for k, v in runs.items()},
  }
  print(json.dumps(report, indent=1))
  return 0


def _records(pattern):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from escm2_tf import data  # pylint: disable=g-import-not-at-top
  return tf.data.TFRecordDataset(data.list_files(pattern),
                                 compression_type="GZIP")


TOOL = tool.Tool(_PROGRAM, __doc__, _FLAGS,
                 build=lambda binding: binding.build(EpochTimeFlags), body=main,
                 passes_args=True)


if __name__ == "__main__":
  TOOL.run()
