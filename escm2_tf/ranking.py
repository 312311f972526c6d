"""Exact ROC AUC of large score columns, in little memory beyond them.

The AUC is the share of (positive, negative) pairs whose scores are ordered
right, a tie counting one half. After one argsort of the scores (8 bytes per
example, the only full-size allocation) the sorted order is walked in chunks
of ``CHUNK`` examples: each run of equal scores adds
``positives * (2 * negatives_below + negatives_in_run)``, twice its share of
pairs, to an integer sum. The sum is exact (Python ints), so the AUC is the
one correctly rounded quotient of two integers whatever the size or the
number of ties, and a run of ties may span any number of chunks.

Scores are never widened: a float32 column is sorted as float32, which orders
and ties its values exactly as their float64 copies would.
"""

import math
from typing import Iterator

import numpy as np

# Examples per step of the walk: bounds its temporaries to a few tens of MB.
CHUNK = 1 << 20


def _runs(scores: np.ndarray, positive: np.ndarray
          ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Runs of equal scores in increasing order, chunk by chunk.

  Yields:
    ``(first score, positives, negatives)`` of each run within a chunk, as
    arrays; a run cut by a chunk boundary comes in two pieces, in order.
  """
  order = np.argsort(scores)
  for start in range(0, order.size, CHUNK):
    rows = order[start:start + CHUNK]
    values = scores[rows]
    firsts = np.flatnonzero(np.concatenate(([True],
                                            values[1:] != values[:-1])))
    sizes = np.diff(np.append(firsts, values.size))
    positives = np.add.reduceat(positive[rows].astype(np.int64), firsts)
    yield values[firsts], positives, sizes - positives


def _merged_runs(scores: np.ndarray, positive: np.ndarray
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """``(positives, negatives)`` of whole runs, pieces across chunks joined."""
  open_value, open_pos, open_neg = None, 0, 0
  for values, positives, negatives in _runs(scores, positive):
    if open_value is not None and values[0] == open_value:
      positives[0] += open_pos
      negatives[0] += open_neg
    elif open_value is not None:
      yield np.array([open_pos]), np.array([open_neg])
    # The last run may go on in the next chunk: held back until then.
    yield positives[:-1], negatives[:-1]
    open_value = values[-1]
    open_pos, open_neg = int(positives[-1]), int(negatives[-1])
  if open_value is not None:
    yield np.array([open_pos]), np.array([open_neg])


def sorted_auc(positive: np.ndarray, scores: np.ndarray) -> float:
  """The exact AUC of ``scores`` against the boolean ``positive``.

  Args:
    positive: Booleans, one per example, flat.
    scores: Finite scores of the same size, flat, any real dtype; equal
      values (``-0.0`` and ``0.0`` included) tie.

  Returns:
    The AUC, or NaN when only one class (or nothing) is present.
  """
  num_pos = int(np.count_nonzero(positive))
  num_neg = positive.size - num_pos
  if num_pos == 0 or num_neg == 0:
    return math.nan
  twice_right = 0
  negatives_below = 0
  for positives, negatives in _merged_runs(scores, positive):
    below = negatives_below + np.cumsum(negatives) - negatives
    # A chunk's sum is at most 2 * num_pos * num_neg: int64 up to 4e9 rows.
    twice_right += int(np.sum(positives * (2 * below + negatives)))
    negatives_below += int(negatives.sum())
  return twice_right / (2 * num_pos * num_neg)
