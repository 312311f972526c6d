"""The tf.data input: GZIP TFRecords of tf.Example -> (features, labels).

Records are batched before parsing, so ``tf.io.parse_example`` runs once per
batch (vectorised) instead of once per record. A ``HashSplit`` keeps only the
records of one side of a split decided by a hash of ``sample_id``: the
trainer's validation slice of the training data. Features are ragged int64 ids
per schema field, plus the float32 weights of the weighted fields; labels are
float32, as ``escm2_tf.losses.compute_losses`` expects them.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import dataclasses
from typing import Sequence

import numpy as np
import tensorflow as tf

from escm2_tf import schema

# Records held in the shuffle buffer: a few batches of Ali-CCP-sized examples,
# enough to break up the skeleton's per-user ordering within a file.
DEFAULT_SHUFFLE_BUFFER = 16_384
# The compression of the input's TFRecord files.
GZIP = "GZIP"
# Cached parsed batches reshuffled per pass: the order, not the contents.
_CACHED_BATCHES_SHUFFLE = 1024

Features = dict[str, tf.RaggedTensor | tf.Tensor]
Labels = dict[str, tf.Tensor]
# Hash buckets of the split: a fraction is honoured to 1e-6.
_SPLIT_BUCKETS = 1_000_000
# Records whose sample_id is parsed at once to decide the split.
SPLIT_BLOCK = 4096


def parse_sample_ids(serialized: tf.Tensor) -> tf.Tensor:
  """The ``sample_id`` of each serialized tf.Example of a block, string [N]."""
  return tf.io.parse_example(
      serialized, {schema.SAMPLE_ID: tf.io.FixedLenFeature([], tf.string)}
  )[schema.SAMPLE_ID]


@dataclasses.dataclass(frozen=True)
class HashSplit:
  """One side of a split of the records by a hash of their ``sample_id``.

  A record is in the validation slice when the FarmHash fingerprint of its
  ``sample_id`` (``tf.strings.to_hash_bucket_fast``, stable across runs,
  processes and machines) falls in the first ``fraction`` of the buckets.
  The slice depends on the ids only: not on file order, shuffling, sharding
  or the worker, so every run and every worker holds out the same records,
  and the two sides are disjoint and together cover the data.

  Attributes:
    fraction: Share of the records in the validation slice, in (0, 1).
    validation: Keep the validation slice (True) or the rest (False).
  """
  fraction: float
  validation: bool

  def __post_init__(self):
    if not 0.0 < self.fraction < 1.0:
      raise ValueError(f"HashSplit.fraction must be in (0, 1), got "
                       f"{self.fraction!r}.")

  def selects(self, sample_ids: tf.Tensor) -> tf.Tensor:
    """Whether each id is on this side, bool with the shape of the ids."""
    held_out = (tf.strings.to_hash_bucket_fast(sample_ids, _SPLIT_BUCKETS)
                < round(self.fraction * _SPLIT_BUCKETS))
    return held_out if self.validation else tf.logical_not(held_out)

  def apply(self, records: tf.data.Dataset) -> tf.data.Dataset:
    """Keeps the serialized tf.Examples of this side, in their order."""

    def keep(serialized):
      return tf.boolean_mask(serialized,
                             self.selects(parse_sample_ids(serialized)))

    # Parsing the ids of a block at once costs a fraction of parsing them
    # record by record in a filter.
    return records.batch(SPLIT_BLOCK).map(keep).unbatch()


def list_files(file_pattern: str | Sequence[str]) -> list[str]:
  """The sorted files matching a glob (or any of several globs).

  Raises:
    FileNotFoundError: Nothing matches, naming the pattern.
  """
  patterns = [file_pattern] if isinstance(file_pattern, str) else list(
      file_pattern)
  files = []
  for pattern in patterns:
    matches = tf.io.gfile.glob(pattern)
    if not matches:
      raise FileNotFoundError(f"No input files match {pattern!r}.")
    files.extend(matches)
  return sorted(set(files))


def _shard_files(files: list[str], input_context: tf.distribute.InputContext
                 | None) -> tuple[list[str], bool]:
  """This pipeline's files, and whether records still need sharding."""
  if input_context is None or input_context.num_input_pipelines == 1:
    return files, False
  num, index = (input_context.num_input_pipelines,
                input_context.input_pipeline_id)
  if len(files) >= num:
    return files[index::num], False
  # Too few files to give each pipeline its own: every pipeline reads all of
  # them in the same order and keeps every num-th record.
  return files, True


def parse_batch(serialized: tf.Tensor, with_sample_id: bool = False,
                with_weights: bool = True) -> tuple[Features, Labels]:
  """Parses a batch of serialized tf.Examples into ``(features, labels)``."""
  parsed = tf.io.parse_example(
      serialized, schema.feature_spec(with_weights=with_weights,
                                      with_sample_id=with_sample_id))
  labels = {name: tf.cast(parsed.pop(name), tf.float32)
            for name in schema.LABELS}
  return parsed, labels


class LabelTable:
  """A label known outside the records, looked up by ``sample_id``.

  The simulator's true ``p_click`` is one: the study trains estimators with
  it as their propensity. A record without a row gets NaN, which stops
  training rather than weighting it by a made-up value.

  The ids are kept as sorted 64-bit fingerprints and found by binary
  search, not in a hash table: under op determinism (the trainer's default)
  a stateful op anywhere in an input pipeline, such as a table lookup, makes
  tf.data run every map of it sequentially and without prefetching.

  Raises:
    ValueError: Two rows of one ``sample_id`` (or of one fingerprint), no
      row, or ids and values of different lengths.
  """

  def __init__(self, name: str, sample_ids: np.ndarray, values: np.ndarray):
    sample_ids = np.asarray(sample_ids).astype(str)
    values = np.asarray(values, np.float32)
    if (sample_ids.ndim != 1 or sample_ids.shape != values.shape
        or not sample_ids.size):
      raise ValueError(f"LabelTable {name!r}: needs one value per id and at "
                       f"least one id, got {sample_ids.shape} ids and "
                       f"{values.shape} values.")
    keys = _fingerprints(tf.constant(sample_ids)).numpy()
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    repeated = np.flatnonzero(keys[1:] == keys[:-1])
    if repeated.size:
      first, second = (str(sample_ids[order[i]])
                       for i in (repeated[0], repeated[0] + 1))
      raise ValueError(
          f"LabelTable {name!r}: sample_id {first!r} has two rows."
          if first == second else f"LabelTable {name!r}: sample_ids "
          f"{first!r} and {second!r} share a fingerprint.")
    self.name = name
    self._keys = tf.constant(keys)
    self._values = tf.constant(values[order])

  def lookup(self, sample_ids: tf.Tensor) -> tf.Tensor:
    """The values of string ``sample_ids`` (any shape), NaN where unknown."""
    wanted = _fingerprints(sample_ids)
    flat = tf.reshape(wanted, [-1])
    position = tf.minimum(tf.searchsorted(self._keys, flat),
                          tf.size(self._keys, out_type=tf.int32) - 1)
    found = tf.where(tf.gather(self._keys, position) == flat,
                     tf.gather(self._values, position), float("nan"))
    return tf.reshape(found, tf.shape(wanted))

  def add(self, features: Features, labels: Labels,
          keep_sample_id: bool) -> tuple[Features, Labels]:
    features = dict(features)
    sample_ids = (features[schema.SAMPLE_ID] if keep_sample_id
                  else features.pop(schema.SAMPLE_ID))
    return features, dict(labels, **{self.name: self.lookup(sample_ids)})


def _fingerprints(strings: tf.Tensor) -> tf.Tensor:
  """A stateless 64-bit FarmHash of each string, int64 >= 0."""
  return tf.strings.to_hash_bucket_fast(strings, np.iinfo(np.int64).max)


def make_dataset(file_pattern: str | Sequence[str], batch_size: int, *,
                 training: bool, num_epochs: int | None = 1,
                 seed: int | None = None,
                 input_context: tf.distribute.InputContext | None = None,
                 with_sample_id: bool = False,
                 shuffle_buffer_size: int = DEFAULT_SHUFFLE_BUFFER,
                 drop_remainder: bool = False,
                 with_weights: bool = True,
                 split: HashSplit | None = None,
                 cache: bool = False,
                 label_table: LabelTable | None = None,
                 read_ahead: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
  """A dataset of ``(features, labels)`` batches over GZIP TFRecord files.

  Args:
    file_pattern: A glob (or list of globs) of ``*.tfrecord.gz`` files.
    batch_size: The global batch size; with ``input_context`` each pipeline
      yields its per-replica share.
    training: Shuffle files and records (seeded by ``seed``). Evaluation
      (``False``) reads in one deterministic order.
    num_epochs: Passes over the data; ``None`` repeats forever.
    seed: Seeds the shuffles and keeps the parsed batches in order, so equal
      seeds give equal batches. ``None`` trades that for parallel speed.
    input_context: From ``distribute_datasets_from_function``; shards files
      (or, with fewer files than pipelines, records) so the pipelines read
      disjoint parts that together cover the data.
    with_sample_id: Also return ``features["sample_id"]`` (tf.string [B]).
    shuffle_buffer_size: Records in the shuffle buffer when training.
    drop_remainder: Drop the last, smaller batch of every pass.
    with_weights: Parse the behaviour weights. A model without
      ``use_weights`` ignores them; leaving them out saves about a seventh
      of the parsing time of converted Ali-CCP records.
    split: Keep only one side of this split of the records (before any
      shuffling, so the other arguments do not change which records).
    cache: Keep the parsed batches in memory after the first pass and read
      every later pass from there, saving the reading and parsing. The
      memory is about that of the parsed data
      (``data_size.parsed_bytes_estimate``). When training, later passes
      keep the first pass's batches and only reshuffle their order.
    label_table: Adds its label to every batch.
    read_ahead: Batches parsed ahead of the consumer; ``AUTOTUNE`` lets
      tf.data size the buffer, which may grow over a long pass.

  Returns:
    A ``tf.data.Dataset`` of ``(features, labels)``: features maps every
    schema field to an int64 ``tf.RaggedTensor`` [B, None] and, with
    ``with_weights``, every weight feature to a float32 one; labels maps
    ``click`` and ``conversion`` (and ``label_table``'s) to float32 [B].

  Raises:
    FileNotFoundError: The pattern matches nothing.
    ValueError: A non-positive batch size or epoch count.
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  if num_epochs is not None and num_epochs <= 0:
    raise ValueError(f"num_epochs must be positive or None, got {num_epochs}.")
  files, shard_records = _shard_files(list_files(file_pattern), input_context)
  if input_context is not None:
    batch_size = input_context.get_per_replica_batch_size(batch_size)
  # Record sharding needs every pipeline to see the records in one order.
  deterministic = not training or seed is not None or shard_records

  dataset = tf.data.Dataset.from_tensor_slices(files)
  if training and not shard_records:
    dataset = dataset.shuffle(len(files), seed=seed,
                              reshuffle_each_iteration=True)
  # A parallel interleave hands every record from thread to thread: on two
  # cores that costs more CPU than parsing the record. One reader
  # decompresses ~350k records/s per core, more than training consumes.
  dataset = dataset.interleave(
      lambda path: tf.data.TFRecordDataset(path, compression_type=GZIP),
      cycle_length=min(len(files), 8), block_length=1)
  if shard_records:
    dataset = dataset.shard(input_context.num_input_pipelines,
                            input_context.input_pipeline_id)
  if split is not None:
    dataset = split.apply(dataset)
  if training:
    dataset = dataset.shuffle(shuffle_buffer_size, seed=seed,
                              reshuffle_each_iteration=True)
  if not cache:
    # Batches may span passes: no short batch at every pass's end.
    dataset = dataset.repeat(num_epochs)
  dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
  def parse(serialized):
    parsed = parse_batch(serialized, with_sample_id or bool(label_table),
                         with_weights)
    return label_table.add(*parsed, with_sample_id) if label_table else parsed

  dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=deterministic)
  if cache:
    dataset = dataset.cache()
    if training:
      dataset = dataset.shuffle(_CACHED_BATCHES_SHUFFLE, seed=seed,
                                reshuffle_each_iteration=True)
    dataset = dataset.repeat(num_epochs)
  return dataset.prefetch(read_ahead)
