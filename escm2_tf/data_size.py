"""The size of the input files: their records, and their memory once parsed.

A run reads its files once up front to count the records (on each side of a
``data.HashSplit``) when Keras must know an epoch's steps, and estimates from
the files' sizes alone whether their parsed batches fit the input cache.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

from typing import Sequence

import numpy as np
import tensorflow as tf

from escm2_tf import data

_PARSED_BYTES_PER_GZIP_BYTE = 16


def count_records(file_pattern: str | Sequence[str],
                  split: data.HashSplit | None = None) -> int:
  """The records of the files (on one side of ``split``), read once."""
  if split is not None:
    training, validation = count_split_records(file_pattern, split.fraction)
    return validation if split.validation else training
  records = tf.data.TFRecordDataset(data.list_files(file_pattern),
                                    compression_type=data.GZIP)
  # Counted a block at a time: a reduce function called per record costs
  # ten times the reading (10 against 0.8 CPU-s for 400k records).
  return int(records.batch(data.SPLIT_BLOCK).reduce(
      np.int64(0), _add_block_size))


def _add_block_size(count: tf.Tensor, block: tf.Tensor) -> tf.Tensor:
  return count + tf.size(block, out_type=tf.int64)


def count_split_records(file_pattern: str | Sequence[str],
                        fraction: float) -> tuple[int, int]:
  """The records on each side of a ``HashSplit``, in one read of the files.

  Returns:
    ``(training, validation)``: the records outside and inside the held-out
    ``fraction`` (``count_records`` with a split returns one of them).
  """
  held_out = data.HashSplit(fraction, validation=True)

  def add(counts, serialized):
    ids = data.parse_sample_ids(serialized)
    inside = tf.reduce_sum(tf.cast(held_out.selects(ids), tf.int64))
    return counts + tf.stack([tf.size(ids, out_type=tf.int64) - inside,
                              inside])

  counts = tf.data.TFRecordDataset(
      data.list_files(file_pattern), compression_type=data.GZIP).batch(
          data.SPLIT_BLOCK).reduce(tf.zeros([2], tf.int64), add).numpy()
  return int(counts[0]), int(counts[1])


def parsed_bytes_estimate(file_pattern: str | Sequence[str]) -> int:
  """A generous estimate of the memory that the parsed files take.

  Parsed ids are 8-byte integers; in the converter's GZIP records they take
  about a byte each (measured: 13.8 and 14.8 bytes parsed per byte of the
  converted test and training files of ``docs/benchmarks.md``'s 500k
  simulated rows, weights left out).
  """
  return _PARSED_BYTES_PER_GZIP_BYTE * sum(
      tf.io.gfile.stat(path).length for path in data.list_files(file_pattern))
