"""Training, evaluation and model-quality measurements for ``escm2-bench``.

The hyperparameters come from an ``escm2-train`` flagfile (by default
``configs/paddlerec.flags``): its model and loss flags carry the names of the
``ModelConfig`` and ``LossConfig`` fields, and ``batch_size``,
``learning_rate`` and ``seed`` those of the trainer. Data and output flags
of the flagfile are ignored; the benchmark brings its own data.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import dataclasses
import math
import os
from typing import Any, Mapping

import tensorflow as tf
import tf_keras as keras

from escm2_tf.bench import harness as benchmark
from escm2_tf import config as config_lib
from escm2_tf import data
from escm2_tf import evaluation
from escm2_tf import export
from escm2_tf import losses
from escm2_tf import metrics as metrics_lib
from escm2_tf import model as model_lib
from escm2_tf import optimizers
from escm2_tf import vocab

_SCHEDULE = {"batch_size": int, "learning_rate": float, "seed": int}
_QUALITY_METRICS = ("auc_ctr", "auc_cvr", "auc_ctcvr", "logloss_ctr",
                    "logloss_cvr", "logloss_ctcvr", "count")


@dataclasses.dataclass(frozen=True)
class HParams:
  """What a flagfile fixes: the network, the loss and the schedule."""
  model: config_lib.ModelConfig
  loss: losses.LossConfig
  batch_size: int
  learning_rate: float
  seed: int
  ignored: tuple[str, ...] = ()


def read_flagfile(path: str) -> dict[str, tuple[str, int]]:
  """``--name=value`` lines -> ``{name: (value, line number)}``.

  ``--name`` alone is ``true`` and ``--noname`` ``false``, as absl reads
  booleans; blank lines and ``#`` comments are skipped.

  Raises:
    ValueError: A line that is not a flag, naming the file and line.
  """
  flags = {}
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      if not line.startswith("--"):
        raise ValueError(f"{path}:{number}: expected --name=value, got "
                         f"{line[:60]!r}.")
      name, has_value, value = line[2:].partition("=")
      if not has_value:
        name, value = ((name[2:], "false") if name.startswith("no")
                       else (name, "true"))
      flags[name] = (value, number)
  return flags


def _parse_value(default: Any, text: str) -> Any:
  """``text`` as the type of a dataclass field's ``default``."""
  if isinstance(default, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise ValueError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1")
  if isinstance(default, tuple):
    return tuple(int(unit) for unit in text.split(",") if unit)
  if isinstance(default, (int, float, str)):
    return type(default)(text)
  # Optional fields (default None) hold numbers in these configs.
  try:
    return int(text)
  except ValueError:
    return float(text)


def _fields_from(flags: Mapping[str, tuple[str, int]], config_type: type,
                 path: str) -> dict[str, Any]:
  defaults = config_type()
  values = {}
  for field in dataclasses.fields(config_type):
    if field.name in flags:
      text, number = flags[field.name]
      try:
        values[field.name] = _parse_value(getattr(defaults, field.name), text)
      except ValueError as e:
        raise ValueError(f"{path}:{number}: --{field.name}: {e}") from None
  return values


def hparams_from_flagfile(path: str) -> HParams:
  """The network, loss and schedule of an ``escm2-train`` flagfile.

  Raises:
    FileNotFoundError: The flagfile does not exist.
    ValueError: A value that does not parse or that the configs refuse; the
      message names the file (and line or field).
  """
  flags = read_flagfile(path)
  model_values = _fields_from(flags, config_lib.ModelConfig, path)
  loss_values = _fields_from(flags, losses.LossConfig, path)
  schedule = {"batch_size": 1024, "learning_rate": 1e-3, "seed": 42}
  for name, kind in _SCHEDULE.items():
    if name in flags:
      text, number = flags[name]
      try:
        schedule[name] = kind(text)
      except ValueError:
        raise ValueError(f"{path}:{number}: --{name}: expected a number, got "
                         f"{text!r}.") from None
  # The trainer seeds the network with its --seed.
  model_values.setdefault("seed", schedule["seed"])
  used = set(model_values) | set(loss_values) | set(schedule)
  try:
    return HParams(config_lib.ModelConfig(**model_values),
                   losses.LossConfig(**loss_values), **schedule,
                   ignored=tuple(sorted(set(flags) - used)))
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None


@dataclasses.dataclass(frozen=True)
class TrainingRun:
  """One measured training run over ``data_dir``'s converted splits.

  Attributes:
    data_dir: Holds ``train/`` and ``test/`` as ``escm2-convert`` wrote them.
    hparams: Network, loss (its ``loss`` is replaced by ``loss`` here) and
      schedule.
    loss: ``esmm``, ``ipw``, ``dr`` or ``naive``.
    optimizer: One of ``optimizers.OPTIMIZERS``.
    steps_per_execution: Keras' training steps per call into the graph.
    warmup_steps: Steps run before timing starts (tracing, first steps).
    timed_steps: Steps timed, rounded up to whole ``warmup_steps`` chunks.
    num_test: Records in ``test/``; 0 skips the evaluation measurement.
    export_dir: Where to export the trained model for serving; empty for
      no export.
  """
  data_dir: str
  hparams: HParams
  loss: str
  optimizer: str
  steps_per_execution: int
  warmup_steps: int
  timed_steps: int
  num_test: int = 0
  export_dir: str = ""


class _EpochTimer(keras.callbacks.Callback):
  """Wall and CPU seconds of every epoch."""

  def __init__(self):
    super().__init__()
    self.wall, self.cpu = [], []

  def on_epoch_begin(self, epoch, logs=None):
    self._stopwatch = benchmark.Stopwatch()

  def on_epoch_end(self, epoch, logs=None):
    wall, cpu = self._stopwatch.read()
    self.wall.append(wall)
    self.cpu.append(cpu)


def _compiled_model(hparams: HParams, loss: str, optimizer: str,
                    steps_per_execution: int, data_dir: str) -> keras.Model:
  keras.utils.set_random_seed(hparams.seed)
  model = model_lib.build_model(
      hparams.model, dataclasses.replace(hparams.loss, loss=loss),
      vocab.load_vocabularies(os.path.join(data_dir, "train", "vocab")))
  model.compile(
      optimizer=optimizers.make_optimizer(optimizer, hparams.learning_rate),
      steps_per_execution=steps_per_execution)
  return model


def _dataset(split_dir: str, hparams: HParams,
             training: bool) -> tf.data.Dataset:
  return data.make_dataset(
      benchmark.record_files(split_dir), hparams.batch_size, training=training,
      num_epochs=None if training else 1, seed=hparams.seed,
      with_weights=hparams.model.use_weights)


def measure_training(run: TrainingRun) -> benchmark.Result:
  """Steady-state training (and evaluation) throughput and memory."""
  model = _compiled_model(run.hparams, run.loss, run.optimizer,
                          run.steps_per_execution, run.data_dir)
  timer = _EpochTimer()
  chunks = max(1, math.ceil(run.timed_steps / run.warmup_steps))
  model.fit(_dataset(os.path.join(run.data_dir, "train"), run.hparams, True),
            epochs=1 + chunks, steps_per_epoch=run.warmup_steps, verbose=0,
            callbacks=[timer])
  examples = chunks * run.warmup_steps * run.hparams.batch_size
  result = {"train": benchmark.rates(examples, sum(timer.wall[1:]),
                                     sum(timer.cpu[1:]), "examples")}
  result["train"].update(steps=chunks * run.warmup_steps,
                         warmup_seconds=timer.wall[0],
                         peak_rss_mb=benchmark.peak_rss_mb())
  if run.num_test:
    test_dir = os.path.join(run.data_dir, "test")
    steps = math.ceil(run.num_test / run.hparams.batch_size)
    model.evaluate(_dataset(test_dir, run.hparams, False), steps=steps,
                   verbose=0)
    stopwatch = benchmark.Stopwatch()
    model.evaluate(_dataset(test_dir, run.hparams, False), steps=steps,
                   verbose=0)
    result["eval"] = benchmark.rates(run.num_test, *stopwatch.read(),
                                     "examples")
  if run.export_dir:
    result["saved_model"] = export.export_saved_model(model, run.export_dir)
  return result


def _quality(run: TrainingRun, num_train: int) -> benchmark.Result:
  model = _compiled_model(run.hparams, run.loss, run.optimizer,
                          run.steps_per_execution, run.data_dir)
  steps = run.timed_steps or math.ceil(num_train / run.hparams.batch_size)
  stopwatch = benchmark.Stopwatch()
  model.fit(_dataset(os.path.join(run.data_dir, "train"), run.hparams, True),
            epochs=1, steps_per_epoch=steps, verbose=0)
  wall, cpu = stopwatch.read()
  columns = evaluation.predict_keras_model(
      model, benchmark.record_files(os.path.join(run.data_dir, "test")),
      run.hparams.batch_size)
  values = metrics_lib.evaluate_predictions(
      columns["click"], columns["conversion"], columns["ctr"],
      columns["cvr"], columns["ctcvr"])
  result = {name: values[name] for name in _QUALITY_METRICS}
  result.update(optimizer=run.optimizer, loss=run.loss, train_steps=steps,
                train_seconds=wall, train_cpu_seconds=cpu)
  return result


def measure_quality(runs: list[TrainingRun],
                    num_train: int) -> benchmark.Result:
  """Exact test metrics of each run's optimizer after the same training.

  Every run trains ``timed_steps`` steps (one pass over the ``num_train``
  examples when 0) from the same initial weights on the same batches, so
  their metrics differ by the optimizer alone.
  """
  return {run.optimizer: _quality(run, num_train) for run in runs}
