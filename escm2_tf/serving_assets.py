"""What an export writes beside the SavedModel, in ``assets.extra/``.

``write_assets_extra`` writes ``tf_serving_warmup_requests`` (replayed by TF
Serving before it serves: requests of synthetic rows to every signature),
``schema.json`` (fields and signature inputs) and one JSON file per
``extra_assets`` entry (the trainer passes its config and evaluation
metrics). ``input_table`` renders the signature inputs as Markdown for
``docs/serving.md``.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from escm2_tf import options
from escm2_tf import schema
from escm2_tf import serving

ASSETS_EXTRA = "assets.extra"
SCHEMA_ASSET = "schema"
WARMUP_FILE = "tf_serving_warmup_requests"
WARMUP_BATCH_SIZES = (1, 64)


def schema_asset() -> dict[str, Any]:
  """The fields and signature inputs, as written to ``schema.json``."""
  fields = []
  for field in schema.FIELDS:
    entry = dataclasses.asdict(field)
    entry["source"] = field.source.value
    entry["weight_name"] = (schema.weight_name(field.name)
                            if field.weighted else None)
    fields.append(entry)
  return {
      "fields": fields,
      "pad_id": schema.PAD_ID,
      "signatures": {
          name: {"inputs": inputs, "outputs": list(schema.OUTPUT_NAMES)}
          for name, inputs in serving.signature_inputs().items()},
  }


def synthetic_rows(count: int, seed: int = 0) -> list[serving.Row]:
  """Impressions with random raw ids, some fields absent, for warmup."""
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(count):
    row = {}
    for field in schema.FIELDS:
      size = int(rng.integers(0, 5)) if field.multi_valued else int(
          rng.random() < 0.9)
      # Ali-CCP ids are large integers; most of these fall into OOV.
      row[field.name] = rng.integers(1, 10**7, size=size).tolist()
      if field.weighted:
        row[schema.weight_name(field.name)] = np.round(
            rng.uniform(0.5, 5.0, size=size), 2).tolist()
    rows.append(row)
  return rows


def write_warmup_requests(
    path: str, batch_sizes: Sequence[int] = WARMUP_BATCH_SIZES) -> int:
  """Writes TF Serving's warmup file: requests for every signature.

  Each signature is its own graph function, so each one gets its requests.

  Returns:
    The number of ``PredictionLog`` records written.
  """
  count = 0
  with tf.io.TFRecordWriter(path) as writer:
    for batch_size in batch_sizes:
      rows = synthetic_rows(batch_size, seed=batch_size)
      for signature in serving.SIGNATURE_NAMES:
        request = serving.predict_request(
            signature, serving.signature_request(signature, rows))
        log = prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request))
        writer.write(log.SerializeToString())
        count += 1
  return count


def _table_row(*cells: str) -> str:
  return "| " + " | ".join(cells) + " |"


def input_table() -> str:
  """A Markdown table of the signature inputs and the Ali-CCP fields behind.

  ``docs/serving.md`` embeds it; a test keeps the two equal.
  """
  files = {schema.Source.COMMON: "common_features",
           schema.Source.SAMPLE: "sample_skeleton"}
  lines = [_table_row("input (feature or dense input name)", "dtype",
                      "Ali-CCP field", "raw file", "group",
                      "ids per impression", "meaning"),
           _table_row(*["---"] * 7).replace(" ", "")]
  for field in schema.FIELDS:
    lines.append(_table_row(
        f"`{field.name}`", "int64", field.name, files[field.source],
        field.group, "several" if field.multi_valued else "one",
        field.description))
  for field in schema.FIELDS:
    if field.weighted:
      lines.append(_table_row(
          f"`{schema.weight_name(field.name)}`", "float32",
          f"{field.name} (values)", files[field.source], field.group,
          f"one per id of `{field.name}`",
          f"weights of `{field.name}` (pooling weights when the model uses "
          "them); 1.0 when absent"))
  return "\n".join(lines) + "\n"


def check_asset_names(extra_assets: Mapping[str, Any]) -> None:
  """Refuses ``extra_assets`` names that are not plain JSON file stems.

  Raises:
    ValueError: on an empty, hidden or path-like name, or one that would
      overwrite ``schema.json``.
  """
  for name in extra_assets:
    if (not name or name == SCHEMA_ASSET or os.sep in name
        or name.startswith(".")):
      raise ValueError(
          f"extra_assets name {name!r} is not allowed: it must be a plain "
          f"file stem other than {SCHEMA_ASSET!r}.")


def write_assets_extra(saved_model_dir: str,
                       extra_assets: Mapping[str, Any]) -> None:
  """Writes ``saved_model_dir/assets.extra/``: warmup, schema and extras.

  Args:
    saved_model_dir: A SavedModel directory.
    extra_assets: Name to JSON-ready value, each written to
      ``<name>.json``; names as ``check_asset_names`` accepts.
  """
  directory = os.path.join(saved_model_dir, ASSETS_EXTRA)
  os.makedirs(directory, exist_ok=True)
  write_warmup_requests(os.path.join(directory, WARMUP_FILE))
  assets = {SCHEMA_ASSET: schema_asset(), **extra_assets}
  for name, value in assets.items():
    with open(os.path.join(directory, f"{name}.json"), "w",
              encoding="utf-8") as f:
      json.dump(options.json_ready(value), f, indent=2, sort_keys=True)
      f.write("\n")
