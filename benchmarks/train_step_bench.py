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

import os
import resource
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf
import tf_keras as keras

from escm2_tf import config as config_lib
from escm2_tf import data
from escm2_tf import model as model_lib
from escm2_tf import optimizers
from escm2_tf import schema
from escm2_tf.bench import synthetic

_BATCH_SIZE = flags.DEFINE_integer("batch_size", 1024, "Examples per step.")
_STEPS = flags.DEFINE_integer("steps", 200, "Timed steps (after warm-up).")
_LOSS = flags.DEFINE_enum("loss", "dr", list(config_lib.LOSSES), "Estimator.")
_BACKBONE = flags.DEFINE_enum("backbone", "mmoe", ["mmoe", "shared_bottom",
                                                   "dcn"], "Backbone.")
_EMBEDDING_DIM = flags.DEFINE_integer("embedding_dim", 12, "Embedding width.")
_NUM_EXPERTS = flags.DEFINE_integer("num_experts", 8, "MMoE experts.")
_EXPERT_UNITS = flags.DEFINE_integer("expert_units", 16, "Expert width.")
_STEPS_PER_EXECUTION = flags.DEFINE_integer("steps_per_execution", 16,
                                            "Keras steps_per_execution.")
_USE_WEIGHTS = flags.DEFINE_bool("use_weights", False, "Weighted pooling.")
_INPUT = flags.DEFINE_enum("input", "memory", ["memory", "tfrecord"],
                           "Where batches come from.")
_OPTIMIZER = flags.DEFINE_enum(
    "optimizer", "lazy_adam",
    ["lazy_adam", "sparse_adam", "adam", "adam_no_xla", "legacy_adam",
     "adagrad"],
    "Optimizer; Keras' Adam updates the whole embedding table every step, "
    "LazyAdam only the rows of the batch.")
_VOCAB_SCALE = flags.DEFINE_float(
    "vocab_scale", 1.0, "Multiplies the per-field vocabulary sizes "
    "(1.0 gives about 740k rows, PaddleRec's table).")

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
  batches = []
  for _ in range(8):
    columns, labels = _columns(vocabularies, batch_size, rng)
    features = {name: tf.RaggedTensor.from_row_lengths(values, lengths)
                for name, (values, lengths) in columns.items()}
    batches.append((features, {k: tf.constant(v) for k, v in labels.items()}))
  return _cycle(batches)


def _cycle(batches):
  dataset = tf.data.Dataset.from_tensors(batches[0])
  for batch in batches[1:]:
    dataset = dataset.concatenate(tf.data.Dataset.from_tensors(batch))
  return dataset.cache().repeat()


def _tfrecord_dataset(vocabularies, batch_size, rng, directory):
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
                           with_weights=_USE_WEIGHTS.value)


def _make_optimizer(name: str) -> keras.optimizers.Optimizer:
  if name in config_lib.OPTIMIZERS:
    return optimizers.make_optimizer(name, 1e-3)
  if name == "adam_no_xla":
    return keras.optimizers.Adam(1e-3, jit_compile=False)
  if name == "legacy_adam":
    return keras.optimizers.legacy.Adam(1e-3)
  return keras.optimizers.Adagrad(0.05)


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


class _EpochTimer(keras.callbacks.Callback):
  """Wall and CPU seconds of every epoch.

  On a shared machine the wall time also counts other processes; the CPU
  time (all threads of this process) does not.
  """

  def __init__(self):
    super().__init__()
    self.seconds, self.cpu_seconds = [], []

  def on_epoch_begin(self, epoch, logs=None):
    self._start, self._cpu_start = time.perf_counter(), _cpu_seconds()

  def on_epoch_end(self, epoch, logs=None):
    self.seconds.append(time.perf_counter() - self._start)
    self.cpu_seconds.append(_cpu_seconds() - self._cpu_start)


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  vocabularies = synthetic.vocabularies(_VOCAB_SCALE.value)
  model_config = config_lib.ModelConfig(
      embedding_dim=_EMBEDDING_DIM.value, backbone=_BACKBONE.value,
      num_experts=_NUM_EXPERTS.value, expert_units=(_EXPERT_UNITS.value,),
      use_weights=_USE_WEIGHTS.value)
  model = model_lib.build_model(model_config, config_lib.LossConfig(
      loss=_LOSS.value), vocabularies, seed=0)
  model.compile(optimizer=_make_optimizer(_OPTIMIZER.value),
                steps_per_execution=_STEPS_PER_EXECUTION.value)
  with tempfile.TemporaryDirectory() as directory:
    dataset = (_memory_dataset(vocabularies, _BATCH_SIZE.value, rng)
               if _INPUT.value == "memory" else
               _tfrecord_dataset(vocabularies, _BATCH_SIZE.value, rng,
                                 directory))
    timer = _EpochTimer()
    model.fit(dataset, epochs=2, steps_per_epoch=_STEPS.value, verbose=0,
              callbacks=[timer])
  rows = sum(v.size for v in vocabularies.values())
  seconds = timer.seconds[-1]
  print(f"input={_INPUT.value} loss={_LOSS.value} backbone={_BACKBONE.value} "
        f"batch={_BATCH_SIZE.value} embedding={_EMBEDDING_DIM.value} "
        f"experts={_NUM_EXPERTS.value}x{_EXPERT_UNITS.value} "
        f"optimizer={_OPTIMIZER.value} "
        f"vocabulary_rows={rows} threads={os.cpu_count()}")
  cpu_seconds = timer.cpu_seconds[-1]
  print(f"{_STEPS.value} steps in {seconds:.2f} s: "
        f"{1000 * seconds / _STEPS.value:.2f} ms/step, "
        f"{_STEPS.value * _BATCH_SIZE.value / seconds:,.0f} examples/s; "
        f"CPU {1000 * cpu_seconds / _STEPS.value:.2f} ms/step "
        f"({cpu_seconds / seconds:.2f} cores busy)")


if __name__ == "__main__":
  app.run(main)
