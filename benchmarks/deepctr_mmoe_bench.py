r"""DeepCTR's MMOE on the same rows as escm2-train, for comparison.

DeepCTR is not a dependency of escm2-tf: run this with the Python of an
environment of its own, where it reads the converter's TFRecords itself:

  python3 -m venv /work/deepctr_venv
  /work/deepctr_venv/bin/pip install deepctr==0.9.4 tensorflow==2.21.0 \
      tf-keras==2.21.0
  TF_USE_LEGACY_KERAS=1 /work/deepctr_venv/bin/python \
      benchmarks/deepctr_mmoe_bench.py --data_dir=/tmp/pr/train --max_len=20

The rows are loaded once into numpy arrays (each field's raw ids mapped to
1..n, 0 padding; multi-valued fields padded to ``--max_len`` ids, sum
pooled), then DeepCTR's MMOE (8 experts of 16, towers of 8, embeddings of
12, two binary tasks: click and click-and-conversion) trains ``--epochs``
epochs at batch 1024 with Adam. It prints one JSON line: the wall and CPU
seconds (all threads of the process) of every epoch and of the whole ``fit``,
so that runs of two lengths give the whole-run cost of an epoch
(``benchmarks/speed_table.py``). It keeps argparse rather than the
project's flag binding: its environment has DeepCTR, not escm2_tf.
"""

import argparse
import glob
import json
import os
import time

from typing import Any

import numpy as np

# The Ali-CCP fields as escm2_tf.schema names them, multi-valued ones last.
_SINGLE = ("101", "121", "122", "124", "125", "126", "127", "128", "129",
           "205", "206", "207", "216", "508", "509", "702", "301")
_MULTI = ("109_14", "110_14", "127_14", "150_14", "210", "853")


def _load(data_dir: str, max_len: int) -> tuple[dict, np.ndarray, np.ndarray,
                                                 dict]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  spec = {name: tf.io.RaggedFeature(tf.int64) for name in _SINGLE + _MULTI}
  spec.update(click=tf.io.FixedLenFeature([], tf.int64),
              conversion=tf.io.FixedLenFeature([], tf.int64))
  files = sorted(glob.glob(os.path.join(data_dir, "*.tfrecord.gz")))
  dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(
      8192).map(lambda s: tf.io.parse_example(s, spec))
  columns = {name: [] for name in spec}
  for batch in dataset:
    for name in _SINGLE:
      columns[name].append(batch[name][:, :1].to_tensor(0).numpy()[:, 0])
    for name in _MULTI:
      columns[name].append(batch[name][:, :max_len].to_tensor(
          0, shape=[None, max_len]).numpy())
    for name in ("click", "conversion"):
      columns[name].append(batch[name].numpy())
  arrays = {name: np.concatenate(parts) for name, parts in columns.items()}
  inputs, sizes = {}, {}
  for name in _SINGLE + _MULTI:
    raw = arrays[name]
    ids, index = np.unique(raw, return_inverse=True)
    # Raw id 0 is padding (absent): it keeps index 0.
    shift = 0 if ids[0] == 0 else 1
    inputs[name] = (index.reshape(raw.shape) + shift).astype(np.int32)
    sizes[name] = len(ids) + shift
  click = arrays["click"].astype(np.float32)
  ctcvr = (arrays["click"] * arrays["conversion"]).astype(np.float32)
  return inputs, click, ctcvr, sizes


def _epoch_timer() -> Any:
  """A callback keeping the wall and CPU seconds of every epoch."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  class EpochTimer(tf.keras.callbacks.Callback):

    def __init__(self):
      super().__init__()
      self.wall, self.cpu = [], []

    def on_epoch_begin(self, epoch, logs=None):
      self._start = (time.perf_counter(), time.process_time())

    def on_epoch_end(self, epoch, logs=None):
      self.wall.append(time.perf_counter() - self._start[0])
      self.cpu.append(time.process_time() - self._start[1])

  return EpochTimer()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_dir", required=True,
                      help="Directory of the converter's *.tfrecord.gz.")
  parser.add_argument("--max_len", type=int, default=20,
                      help="Ids kept per multi-valued field.")
  parser.add_argument("--batch_size", type=int, default=1024)
  parser.add_argument("--epochs", type=int, default=2,
                      help="Epochs of the timed fit.")
  args = parser.parse_args()
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from deepctr.feature_column import SparseFeat, VarLenSparseFeat
  from deepctr.models import MMOE
  inputs, click, ctcvr, sizes = _load(args.data_dir, args.max_len)
  columns = [SparseFeat(name, sizes[name], embedding_dim=12)
             for name in _SINGLE]
  columns += [VarLenSparseFeat(SparseFeat(name, sizes[name], embedding_dim=12),
                               maxlen=args.max_len, combiner="sum")
              for name in _MULTI]
  tf.keras.utils.set_random_seed(42)
  model = MMOE(columns, num_experts=8, expert_dnn_hidden_units=(16,),
               tower_dnn_hidden_units=(8,), task_types=("binary", "binary"),
               task_names=("ctr", "ctcvr"))
  model.compile("adam", loss=["binary_crossentropy", "binary_crossentropy"])
  timer = _epoch_timer()
  fit_start = (time.perf_counter(), time.process_time())
  model.fit(inputs, [click, ctcvr], batch_size=args.batch_size,
            epochs=args.epochs, verbose=0, callbacks=[timer])
  fit_s = time.perf_counter() - fit_start[0]
  fit_cpu_s = time.process_time() - fit_start[1]
  rows = len(click)
  later = 1 if args.epochs > 1 else 0
  print(json.dumps({
      "rows": rows, "max_len": args.max_len,
      "ids_per_row": float(sum((inputs[n] > 0).sum() for n in inputs) / rows),
      "vocabulary": int(sum(sizes.values())),
      "epochs": args.epochs, "epoch_s": timer.wall,
      "epoch_cpu_s": timer.cpu, "fit_s": fit_s, "fit_cpu_s": fit_cpu_s,
      "second_epoch_examples_per_s": rows / timer.wall[later],
      "second_epoch_examples_per_cpu_s": rows / timer.cpu[later]}))


if __name__ == "__main__":
  main()
