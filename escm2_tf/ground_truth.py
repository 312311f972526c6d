"""The simulator's ground truth: read from its CSV, joined to the examples.

The ground truth (``ground_truth_*.csv``) is joined by ``sample_id``; every
scored example must have exactly one ground-truth row, which logs the
example's labels. ``evaluation.compute_metrics`` joins it to the scored
columns; checks that run before any work join it to ``evaluation.read_labels``.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import csv
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from escm2_tf import layout
from escm2_tf import schema


class GroundTruthError(ValueError):
  """A ground-truth file that is malformed or does not match the data."""


def read_ground_truth(path: str) -> dict[str, np.ndarray]:
  """Reads a ground-truth CSV of ``layout.GROUND_TRUTH_HEADER``.

  Raises:
    GroundTruthError: Missing file, wrong header or a bad line (the message
      names the file and line).
  """
  if not tf.io.gfile.exists(path):
    raise GroundTruthError(f"{path}: ground-truth file not found")
  expected = layout.GROUND_TRUTH_HEADER
  columns: dict[str, list[Any]] = {name: [] for name in expected}
  with tf.io.gfile.GFile(path, "r") as f:
    reader = csv.reader(f)
    header = tuple(next(reader, ()))
    if header != expected:
      raise GroundTruthError(f"{path}:1: header is {','.join(header)!r}, "
                             f"expected {','.join(expected)!r}")
    for line_number, row in enumerate(reader, start=2):
      if len(row) != len(expected):
        raise GroundTruthError(f"{path}:{line_number}: {len(row)} columns, "
                               f"expected {len(expected)}")
      try:
        values = [float(value) for value in row[1:]]
      except ValueError:
        raise GroundTruthError(
            f"{path}:{line_number}: non-numeric value in {row!r}") from None
      for name, value in zip(expected, [row[0]] + values):
        columns[name].append(value)
  return {name: np.asarray(values, dtype=str if name == schema.SAMPLE_ID
                           else np.float64)
          for name, values in columns.items()}


def align_ground_truth(ground_truth: dict[str, np.ndarray],
                       examples: Mapping[str, np.ndarray], path: str,
                       data_source: str = "the data") -> dict[str, np.ndarray]:
  """Reorders the ground truth to follow the examples, checking it is theirs.

  Ground-truth rows of examples absent from the data (e.g. rows the converter
  rejected) are left out; a scored example without a row, a sample_id that
  appears twice, or a joined row whose logged click or conversion differs
  from the example's is an error: the ground truth then belongs to other data
  (another split, seed or simulation).

  Args:
    ground_truth: From ``read_ground_truth``.
    examples: ``sample_id``, ``click`` and ``conversion`` of the examples,
      e.g. the columns of ``evaluation.predict_keras_model`` or
      ``evaluation.read_labels``.
    path: Names the ground truth in errors.
    data_source: Names the examples' files in errors.

  Returns:
    ``layout.GROUND_TRUTH_COLUMNS``, one row per example, in their order.

  Raises:
    GroundTruthError: The ground truth is not that of the examples (the
      message names both files).
  """
  sample_ids = examples[schema.SAMPLE_ID]
  truth_ids = ground_truth[schema.SAMPLE_ID]
  order = np.argsort(truth_ids, kind="stable")
  sorted_ids = truth_ids[order]
  if len(sorted_ids) > 1 and np.any(sorted_ids[1:] == sorted_ids[:-1]):
    raise GroundTruthError(f"{path}: sample_id values repeat")
  if len(np.unique(sample_ids)) != len(sample_ids):
    raise GroundTruthError(f"{data_source} repeats sample_id values, so it "
                           f"cannot be joined with {path}")
  position = np.searchsorted(sorted_ids, sample_ids)
  position = np.minimum(position, max(len(sorted_ids) - 1, 0))
  found = (sorted_ids[position] == sample_ids if len(sorted_ids)
           else np.zeros(len(sample_ids), bool))
  mismatch = f"{path} is not the ground truth of {data_source}"
  if not np.all(found):
    missing = sample_ids[~found]
    raise GroundTruthError(
        f"{mismatch}: {len(missing)} of {len(sample_ids)} examples have no "
        f"row in it (first sample_id {str(missing[0])!r})")
  rows = order[position]
  _check_labels(ground_truth, rows, examples, mismatch)
  return {name: ground_truth[name][rows]
          for name in layout.GROUND_TRUTH_COLUMNS}


def _check_labels(ground_truth: dict[str, np.ndarray], rows: np.ndarray,
                  examples: Mapping[str, np.ndarray], mismatch: str) -> None:
  """Every joined row logs the example's click and conversion."""
  differs = np.zeros(len(rows), bool)
  for name in schema.LABELS:
    differs |= ground_truth[name][rows] != examples[name]
  if np.any(differs):
    first = np.flatnonzero(differs)[0]
    raise GroundTruthError(
        f"{mismatch}: {int(differs.sum())} of {len(rows)} joined rows log "
        f"other labels (first sample_id "
        f"{str(examples[schema.SAMPLE_ID][first])!r}: click/conversion "
        f"{_logged(examples, first)} in the data, "
        f"{_logged(ground_truth, rows[first])} in the ground truth)")


def _logged(columns: Mapping[str, np.ndarray], row: int) -> str:
  return "/".join(str(int(columns[name][row])) for name in schema.LABELS)

