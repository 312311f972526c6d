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

import dataclasses
import os
import resource
import tempfile
import time

import numpy as np

from escm2_tf import config as config_lib
from escm2_tf import flagbind
from escm2_tf import tool
from escm2_tf import options
from escm2_tf import schema
from escm2_tf.options import option

_PROGRAM = "serving_latency"
_FEW_IDS = {"210": 4, "853": 4}
_PERCENTILES = (50, 90, 99)


@dataclasses.dataclass(frozen=True)
class LatencyFlags:
  """The model and the requests to time.

  Attributes:
    saved_model: A SavedModel (or export base directory) to time; by default
      a freshly built model is exported to a temporary directory.
    batch_sizes: Examples per request.
    requests: Timed requests per batch size.
    warmup: Untimed requests per batch size first.
    vocab_scale: Multiplies the per-field vocabulary sizes of the built model
      (1.0: about 740k rows).
    max_behaviour_ids: Most ids per user-behaviour field.
    loss: Estimator of the built model (dr adds a tower).
  """
  saved_model: str = option("", group="input")
  batch_sizes: tuple[int, ...] = option((1, 64, 1024), minimum=1)
  requests: int = option(200, minimum=1)
  warmup: int = option(20, minimum=0)
  vocab_scale: float = option(1.0, minimum=1e-6, group="model")
  max_behaviour_ids: int = option(50, minimum=1)
  loss: str = option("dr", choices=config_lib.LOSSES, group="model")

  def __post_init__(self):
    options.check_declared(self)


_FLAGS = flagbind.Binding(flagbind.Section(LatencyFlags, "benchmark"))


def _max_ids(field: str, settings: LatencyFlags) -> int:
  if field in schema.WEIGHTED_FIELDS:
    return settings.max_behaviour_ids
  return _FEW_IDS.get(field, 1)


def _rows(vocabularies, count: int, rng: np.random.Generator,
          settings: LatencyFlags) -> list[dict]:
  rows = []
  for _ in range(count):
    row = {}
    for field, ids in vocabularies.items():
      most = _max_ids(field, settings)
      size = int(rng.integers(0, most + 1)) if most > 1 else 1
      values = ids[rng.integers(0, ids.size, size)]
      values[rng.random(size) < 0.1] += 10**9  # Unknown ids: OOV rows.
      row[field] = values.tolist()
      if field in schema.WEIGHTED_FIELDS:
        row[schema.weight_name(field)] = rng.uniform(1, 10, size).tolist()
    rows.append(row)
  return rows


def _export_default_model(directory: str, settings: LatencyFlags) -> str:
  # pylint: disable=g-import-not-at-top
  from escm2_tf import export
  from escm2_tf import model as model_lib
  from escm2_tf.bench import synthetic
  # pylint: enable=g-import-not-at-top
  vocabularies = synthetic.vocabularies(settings.vocab_scale)
  model = model_lib.build_model(config_lib.ModelConfig(),
                                config_lib.LossConfig(loss=settings.loss),
                                vocabularies, seed=0)
  return export.export_saved_model(model, directory)


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _time_requests(signature, batches: list, settings: LatencyFlags
                   ) -> tuple[np.ndarray, float]:
  """Wall seconds of every request, and CPU seconds of them all."""
  for batch in batches[:settings.warmup]:
    signature(examples=batch)["ctcvr"].numpy()
  seconds = []
  cpu_start = _cpu_seconds()
  for index in range(settings.requests):
    batch = batches[index % len(batches)]
    start = time.perf_counter()
    signature(examples=batch)["ctcvr"].numpy()
    seconds.append(time.perf_counter() - start)
  return np.array(seconds), _cpu_seconds() - cpu_start


def main(settings: LatencyFlags) -> int:
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from escm2_tf import export
  from escm2_tf import serving
  from escm2_tf.bench import synthetic
  # pylint: enable=g-import-not-at-top
  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as directory:
    path, signature = export.load_serving_signature(
        settings.saved_model or _export_default_model(directory, settings))
    vocabularies = synthetic.vocabularies(settings.vocab_scale)
    print(f"SavedModel {path if settings.saved_model else '(built)'}; "
          f"{os.cpu_count()} CPUs; {settings.requests} requests per size")
    print("batch   p50 ms   p90 ms   p99 ms  CPU ms/req   examples/s")
    for batch_size in settings.batch_sizes:
      batches = [tf.constant(serving.signature_request(
          serving.EXAMPLES_SIGNATURE,
          _rows(vocabularies, batch_size, rng, settings))[
              serving.EXAMPLES_INPUT]) for _ in range(4)]
      seconds, cpu = _time_requests(signature, batches, settings)
      p50, p90, p99 = (1000 * np.percentile(seconds, _PERCENTILES))
      print(f"{batch_size:5d} {p50:8.2f} {p90:8.2f} {p99:8.2f} "
            f"{1000 * cpu / settings.requests:11.2f} "
            f"{batch_size / np.median(seconds):12,.0f}")
  return 0


TOOL = tool.Tool(_PROGRAM, __doc__, _FLAGS,
                 build=lambda binding: binding.build(LatencyFlags), body=main)


if __name__ == "__main__":
  TOOL.run()
