"""Training, evaluation and model-quality measurements for ``escm2-bench``.

The hyperparameters come from an ``escm2-train`` flagfile
(``escm2_tf.bench.hparams``).
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import dataclasses
import math

import tensorflow as tf
import tf_keras as keras

from escm2_tf import config as config_lib
from escm2_tf.bench import harness as benchmark
from escm2_tf.bench import hparams as hparams_lib
from escm2_tf import data
from escm2_tf import evaluation
from escm2_tf import export
from escm2_tf import layout
from escm2_tf import metrics as metrics_lib
from escm2_tf import model as model_lib
from escm2_tf import optimizers
from escm2_tf import threads
from escm2_tf import vocab

_QUALITY_METRICS = ("auc_ctr", "auc_cvr", "auc_ctcvr", "logloss_ctr",
                    "logloss_cvr", "logloss_ctcvr", "count")
HParams = hparams_lib.HParams
hparams_from_flagfile = hparams_lib.hparams_from_flagfile


@dataclasses.dataclass(frozen=True)
class TrainingRun:
  """One measured training run over ``data_dir``'s converted splits.

  Attributes:
    data_dir: Holds ``train/`` and ``test/`` as ``escm2-convert`` wrote them.
    hparams: Network, loss (its ``loss`` is replaced by ``loss`` here) and
      schedule.
    loss: ``esmm``, ``ipw``, ``dr`` or ``naive``.
    optimizer: One of ``config_lib.OPTIMIZERS``.
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
      vocab.load_vocabularies(layout.training_vocab_dir(data_dir)),
      seed=hparams.seed)
  model.compile(
      optimizer=optimizers.make_optimizer(optimizer, hparams.learning_rate),
      steps_per_execution=steps_per_execution)
  return model


def _dataset(data_dir: str, hparams: HParams,
             training: bool) -> tf.data.Dataset:
  split = layout.TRAIN if training else layout.TEST
  return data.make_dataset(
      layout.examples(data_dir, split), hparams.batch_size, training=training,
      num_epochs=None if training else 1, seed=hparams.seed,
      with_weights=hparams.model.use_weights)


def measure_training(run: TrainingRun) -> benchmark.Result:
  """Steady-state training (and evaluation) throughput and memory.

  Run in a fresh process (``harness.run_isolated``): it first gives the
  process escm2-train's default thread settings (``escm2_tf.threads``), so
  the figures are those of the trainer's defaults.
  """
  threads.apply_runtime(config_lib.RuntimeConfig())
  model = _compiled_model(run.hparams, run.loss, run.optimizer,
                          run.steps_per_execution, run.data_dir)
  timer = _EpochTimer()
  chunks = max(1, math.ceil(run.timed_steps / run.warmup_steps))
  model.fit(_dataset(run.data_dir, run.hparams, True),
            epochs=1 + chunks, steps_per_epoch=run.warmup_steps, verbose=0,
            callbacks=[timer])
  examples = chunks * run.warmup_steps * run.hparams.batch_size
  result = {"train": benchmark.rates(examples, sum(timer.wall[1:]),
                                     sum(timer.cpu[1:]), "examples")}
  result["train"].update(
      steps=chunks * run.warmup_steps, warmup_seconds=timer.wall[0],
      peak_rss_mb=benchmark.peak_rss_mb(),
      thread_spinning=threads.thread_spinning(),
      intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads())
  if run.num_test:
    steps = math.ceil(run.num_test / run.hparams.batch_size)
    model.evaluate(_dataset(run.data_dir, run.hparams, False), steps=steps,
                   verbose=0)
    stopwatch = benchmark.Stopwatch()
    model.evaluate(_dataset(run.data_dir, run.hparams, False), steps=steps,
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
  model.fit(_dataset(run.data_dir, run.hparams, True),
            epochs=1, steps_per_epoch=steps, verbose=0)
  wall, cpu = stopwatch.read()
  columns = evaluation.predict_keras_model(
      model, layout.examples(run.data_dir, layout.TEST),
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
