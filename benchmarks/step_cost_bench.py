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

import json
import time

from absl import app
from absl import flags
import tf_keras as keras

from escm2_tf import data
from escm2_tf import layout
from escm2_tf import model as model_lib
from escm2_tf import optimizers
from escm2_tf import vocab
from escm2_tf.bench import training as training_bench

_FLAGFILE = flags.DEFINE_string("train_flagfile", "configs/paddlerec.flags",
                                "The escm2-train flagfile.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Converted train/.")
_RUNS = flags.DEFINE_list(
    "runs", ["adam:1:auc", "adam:32:auc", "lazy_adam:32:auc",
             "sparse_adam:32:auc", "sparse_adam:32:none"],
    "optimizer:steps_per_execution:auc|none for each timed run.")
_STEPS = flags.DEFINE_integer("steps", 256, "Timed steps per run.")


def main(argv):
  del argv
  hparams = training_bench.hparams_from_flagfile(_FLAGFILE.value)
  vocabularies = vocab.load_vocabularies(
      layout.training_vocab_dir(_DATA_DIR.value))
  batches = data.make_dataset(
      layout.examples(_DATA_DIR.value, layout.TRAIN), hparams.batch_size,
      training=True, seed=1, with_weights=hparams.model.use_weights
  ).take(64).cache().repeat()
  for _ in batches.take(64):
    pass
  for run in _RUNS.value:
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
    model.fit(batches, steps_per_epoch=_STEPS.value, epochs=1, verbose=0)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({
        "optimizer": optimizer, "steps_per_execution": int(steps_per_execution),
        "streaming_aucs": metrics != "none",
        "cpu_ms_per_step": round(1000 * cpu / _STEPS.value, 2),
        "wall_ms_per_step": round(1000 * wall / _STEPS.value, 2),
        "table_rows": int(model.network.get_layer("embedding").num_rows)}),
          flush=True)


if __name__ == "__main__":
  app.run(main)
