"""Training throughput of the ESCM2 model on synthetic Ali-CCP-shaped batches.

Measures examples per second of ``model.fit`` (train_step: lookup, pooling,
MMoE, towers, loss, Adam) after a warm-up epoch. ``--input=memory`` feeds
pre-built ragged batches (the model alone); ``--input=tfrecord`` writes GZIP
TFRecords and reads them through ``data.make_dataset`` (the whole pipeline).

  .venv/bin/python benchmarks/train_step_bench.py --loss=dr --batch_size=1024

The whole path, from raw logs to serving, is measured by ``escm2-bench``
(docs/benchmarks.md).
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import dataclasses
import os
import resource
import tempfile
import time
from typing import Any

import numpy as np

from escm2_tf import config as config_lib
from escm2_tf import flagbind
from escm2_tf import tool
from escm2_tf import options
from escm2_tf import schema
from escm2_tf.options import option

_PROGRAM = "train_step_bench"
# Keras' Adam without XLA, its legacy Adam and Adagrad, besides the library's.
_OPTIMIZERS = (*config_lib.OPTIMIZERS, "adam_no_xla", "legacy_adam",
               "adagrad")


@dataclasses.dataclass(frozen=True)
class StepFlags:
  """The network, the batches and the optimizer timed.

  Attributes:
    batch_size: Examples per step.
    steps: Timed steps (after warm-up).
    loss: Estimator.
    backbone: Backbone.
    embedding_dim: Embedding width.
    num_experts: MMoE experts.
    expert_units: Expert width.
    steps_per_execution: Keras steps_per_execution.
    use_weights: Weighted pooling.
    input: Where batches come from.
    optimizer: Optimizer; Keras' Adam updates the whole embedding table every
      step, LazyAdam only the rows of the batch.
    vocab_scale: Multiplies the per-field vocabulary sizes (1.0 gives about
      740k rows, PaddleRec's table).
  """
  batch_size: int = option(1024, minimum=1)
  steps: int = option(200, minimum=1)
  loss: str = option("dr", choices=config_lib.LOSSES, group="model")
  backbone: str = option("mmoe", choices=config_lib.BACKBONES, group="model")
  embedding_dim: int = option(12, minimum=1, group="model")
  num_experts: int = option(8, minimum=1, group="model")
  expert_units: int = option(16, minimum=1, group="model")
  steps_per_execution: int = option(16, minimum=1)
  use_weights: bool = option(False, group="model")
  input: str = option("memory", choices=("memory", "tfrecord"))
  optimizer: str = option("lazy_adam", choices=_OPTIMIZERS)
  vocab_scale: float = option(1.0, minimum=1e-6, group="model")

  def __post_init__(self):
    options.check_declared(self)


_FLAGS = flagbind.Binding(flagbind.Section(StepFlags, "benchmark"))

# Rough Ali-CCP shape: ids per impression of each field (behaviour fields
# truncated to 10 ids, as a converter would).
_MAX_IDS = {"109_14": 10, "110_14": 10, "127_14": 10, "150_14": 10,
            "210": 4, "853": 4}


def _columns(vocabularies, batch_size, rng):
  """Ids (10 % unknown), weights and labels of one batch, as numpy columns."""
  columns = {}
  for field, ids in vocabularies.items():
    lengths = (rng.integers(0, _MAX_IDS[field] + 1, batch_size)
               if field in _MAX_IDS else np.ones(batch_size, np.int64))
    values = ids[rng.integers(0, ids.size, lengths.sum())]
    values[rng.random(values.size) < 0.1] += 10**9
    columns[field] = (values, lengths)
    if field in schema.WEIGHTED_FIELDS:
      columns[schema.weight_name(field)] = (
          rng.random(values.size).astype(np.float32), lengths)
  click = (rng.random(batch_size) < 0.04).astype(np.float32)
  conversion = click * (rng.random(batch_size) < 0.3)
  return columns, {schema.CLICK: click, schema.CONVERSION: conversion}


def _memory_dataset(vocabularies, batch_size, rng):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  batches = []
  for _ in range(8):
    columns, labels = _columns(vocabularies, batch_size, rng)
    features = {name: tf.RaggedTensor.from_row_lengths(values, lengths)
                for name, (values, lengths) in columns.items()}
    batches.append((features, {k: tf.constant(v) for k, v in labels.items()}))
  return _cycle(batches)


def _cycle(batches):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  dataset = tf.data.Dataset.from_tensors(batches[0])
  for batch in batches[1:]:
    dataset = dataset.concatenate(tf.data.Dataset.from_tensors(batch))
  return dataset.cache().repeat()


def _tfrecord_dataset(vocabularies, batch_size, rng, directory,
                      use_weights):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from escm2_tf import data  # pylint: disable=g-import-not-at-top
  for shard in range(4):
    path = os.path.join(directory, f"part-{shard}.tfrecord.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
      columns, labels = _columns(vocabularies, batch_size * 4, rng)
      splits = {n: np.concatenate([[0], np.cumsum(l)])
                for n, (_, l) in columns.items()}
      for i in range(batch_size * 4):
        feature = {n: tf.train.Feature(int64_list=tf.train.Int64List(
            value=[int(labels[n][i])])) for n in schema.LABELS}
        for name, (values, _) in columns.items():
          row = values[splits[name][i]:splits[name][i + 1]]
          feature[name] = (
              tf.train.Feature(float_list=tf.train.FloatList(value=row))
              if row.dtype == np.float32 else
              tf.train.Feature(int64_list=tf.train.Int64List(value=row)))
        writer.write(tf.train.Example(features=tf.train.Features(
            feature=feature)).SerializeToString())
  return data.make_dataset(os.path.join(directory, "*.tfrecord.gz"),
                           batch_size, training=True, num_epochs=None, seed=1,
                           with_weights=use_weights)


def _make_optimizer(name: str) -> Any:
  import tf_keras as keras  # pylint: disable=g-import-not-at-top
  from escm2_tf import optimizers  # pylint: disable=g-import-not-at-top
  if name in optimizers.OPTIMIZERS:
    return optimizers.make_optimizer(name, 1e-3)
  if name == "adam_no_xla":
    return keras.optimizers.Adam(1e-3, jit_compile=False)
  if name == "legacy_adam":
    return keras.optimizers.legacy.Adam(1e-3)
  return keras.optimizers.Adagrad(0.05)


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _epoch_timer() -> Any:
  """A callback keeping the wall and CPU seconds of every epoch.

  On a shared machine the wall time also counts other processes; the CPU
  time (all threads of this process) does not.
  """
  import tf_keras as keras  # pylint: disable=g-import-not-at-top

  class EpochTimer(keras.callbacks.Callback):

    def __init__(self):
      super().__init__()
      self.seconds, self.cpu_seconds = [], []

    def on_epoch_begin(self, epoch, logs=None):
      self._start, self._cpu_start = time.perf_counter(), _cpu_seconds()

    def on_epoch_end(self, epoch, logs=None):
      self.seconds.append(time.perf_counter() - self._start)
      self.cpu_seconds.append(_cpu_seconds() - self._cpu_start)

  return EpochTimer()


def main(settings: StepFlags) -> int:
  # pylint: disable=g-import-not-at-top
  from escm2_tf import model as model_lib
  from escm2_tf.bench import synthetic
  # pylint: enable=g-import-not-at-top
  rng = np.random.default_rng(0)
  vocabularies = synthetic.vocabularies(settings.vocab_scale)
  model_config = config_lib.ModelConfig(
      embedding_dim=settings.embedding_dim, backbone=settings.backbone,
      num_experts=settings.num_experts, expert_units=(settings.expert_units,),
      use_weights=settings.use_weights)
  model = model_lib.build_model(model_config, config_lib.LossConfig(
      loss=settings.loss), vocabularies, seed=0)
  model.compile(optimizer=_make_optimizer(settings.optimizer),
                steps_per_execution=settings.steps_per_execution)
  with tempfile.TemporaryDirectory() as directory:
    dataset = (_memory_dataset(vocabularies, settings.batch_size, rng)
               if settings.input == "memory" else
               _tfrecord_dataset(vocabularies, settings.batch_size, rng,
                                 directory, settings.use_weights))
    timer = _epoch_timer()
    model.fit(dataset, epochs=2, steps_per_epoch=settings.steps, verbose=0,
              callbacks=[timer])
  rows = sum(v.size for v in vocabularies.values())
  seconds = timer.seconds[-1]
  print(f"input={settings.input} loss={settings.loss} backbone={settings.backbone} "
        f"batch={settings.batch_size} embedding={settings.embedding_dim} "
        f"experts={settings.num_experts}x{settings.expert_units} "
        f"optimizer={settings.optimizer} "
        f"vocabulary_rows={rows} threads={os.cpu_count()}")
  cpu_seconds = timer.cpu_seconds[-1]
  print(f"{settings.steps} steps in {seconds:.2f} s: "
        f"{1000 * seconds / settings.steps:.2f} ms/step, "
        f"{settings.steps * settings.batch_size / seconds:,.0f} examples/s; "
        f"CPU {1000 * cpu_seconds / settings.steps:.2f} ms/step "
        f"({cpu_seconds / seconds:.2f} cores busy)")
  return 0


TOOL = tool.Tool(_PROGRAM, __doc__, _FLAGS,
                 build=lambda binding: binding.build(StepFlags), body=main)


if __name__ == "__main__":
  TOOL.run()
