"""Latency of the exported SavedModel's ``serving_default`` signature on CPU.

Loads a SavedModel with ``tf.saved_model.load`` (by default it first builds
and exports a PaddleRec-sized model: embedding 12, MMoE 8x16, about 740k
vocabulary rows) and times single requests of serialized tf.Examples, one
after another, for each batch size: parsing, the vocabulary lookup, the
network and the outputs' copy to numpy. Requests carry Ali-CCP-shaped
impressions: up to ``--max_behaviour_ids`` ids in each user-behaviour field
(escm2-convert keeps 50), a few item intentions, one id elsewhere, 10 % of
the ids unknown.

  .venv/bin/python benchmarks/serving_latency.py
  .venv/bin/python benchmarks/serving_latency.py --saved_model=serving/escm2

Wall-clock percentiles include whatever else the machine runs; the CPU time
per request (all of this process's threads) does not.
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

from escm2_tf import config as config_lib
from escm2_tf import export
from escm2_tf import model as model_lib
from escm2_tf import schema
from escm2_tf import serving
from escm2_tf.bench import synthetic

_SAVED_MODEL = flags.DEFINE_string(
    "saved_model", "", "A SavedModel (or export base directory) to time; by "
    "default a freshly built model is exported to a temporary directory.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "64", "1024"],
                                 "Examples per request.")
_REQUESTS = flags.DEFINE_integer("requests", 200,
                                 "Timed requests per batch size.")
_WARMUP = flags.DEFINE_integer("warmup", 20,
                               "Untimed requests per batch size first.")
_VOCAB_SCALE = flags.DEFINE_float(
    "vocab_scale", 1.0, "Multiplies the per-field vocabulary sizes of the "
    "built model (1.0: about 740k rows).")
_MAX_BEHAVIOUR_IDS = flags.DEFINE_integer(
    "max_behaviour_ids", 50, "Most ids per user-behaviour field.")
_LOSS = flags.DEFINE_enum("loss", "dr", list(config_lib.LOSSES),
                          "Estimator of the built model (dr adds a tower).")

_FEW_IDS = {"210": 4, "853": 4}
_PERCENTILES = (50, 90, 99)


def _max_ids(field: str) -> int:
  if field in schema.WEIGHTED_FIELDS:
    return _MAX_BEHAVIOUR_IDS.value
  return _FEW_IDS.get(field, 1)


def _rows(vocabularies, count: int, rng: np.random.Generator) -> list[dict]:
  rows = []
  for _ in range(count):
    row = {}
    for field, ids in vocabularies.items():
      size = int(rng.integers(0, _max_ids(field) + 1)) if _max_ids(
          field) > 1 else 1
      values = ids[rng.integers(0, ids.size, size)]
      values[rng.random(size) < 0.1] += 10**9  # Unknown ids: OOV rows.
      row[field] = values.tolist()
      if field in schema.WEIGHTED_FIELDS:
        row[schema.weight_name(field)] = rng.uniform(1, 10, size).tolist()
    rows.append(row)
  return rows


def _export_default_model(directory: str) -> str:
  vocabularies = synthetic.vocabularies(_VOCAB_SCALE.value)
  model = model_lib.build_model(config_lib.ModelConfig(),
                                config_lib.LossConfig(loss=_LOSS.value),
                                vocabularies, seed=0)
  return export.export_saved_model(model, directory)


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _time_requests(signature, batches: list[tf.Tensor]) -> tuple[np.ndarray,
                                                                  float]:
  """Wall seconds of every request, and CPU seconds of them all."""
  for batch in batches[:_WARMUP.value]:
    signature(examples=batch)["ctcvr"].numpy()
  seconds = []
  cpu_start = _cpu_seconds()
  for index in range(_REQUESTS.value):
    batch = batches[index % len(batches)]
    start = time.perf_counter()
    signature(examples=batch)["ctcvr"].numpy()
    seconds.append(time.perf_counter() - start)
  return np.array(seconds), _cpu_seconds() - cpu_start


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as directory:
    path, signature = export.load_serving_signature(
        _SAVED_MODEL.value or _export_default_model(directory))
    vocabularies = synthetic.vocabularies(_VOCAB_SCALE.value)
    print(f"SavedModel {path if _SAVED_MODEL.value else '(built)'}; "
          f"{os.cpu_count()} CPUs; {_REQUESTS.value} requests per size")
    print("batch   p50 ms   p90 ms   p99 ms  CPU ms/req   examples/s")
    for batch_size in map(int, _BATCH_SIZES.value):
      batches = [tf.constant(serving.signature_request(
          serving.EXAMPLES_SIGNATURE, _rows(vocabularies, batch_size, rng))[
              serving.EXAMPLES_INPUT]) for _ in range(4)]
      seconds, cpu = _time_requests(signature, batches)
      p50, p90, p99 = (1000 * np.percentile(seconds, _PERCENTILES))
      print(f"{batch_size:5d} {p50:8.2f} {p90:8.2f} {p99:8.2f} "
            f"{1000 * cpu / _REQUESTS.value:11.2f} "
            f"{batch_size / np.median(seconds):12,.0f}")


if __name__ == "__main__":
  app.run(main)
