"""Composite PTransforms of the converter.

``ConvertAliCcp`` and ``ConvertPaddleRec`` take ``(source file, line)``
pairs, the line as undecoded bytes (see ``dofns``), and return a dict of
PCollections:

* ``examples``: lists of serialized tf.train.Example records.
* ``rejected``: ``reason<TAB>source<TAB>line`` strings.
* ``tallies``: ``collections.Counter`` objects to sum (see ``tally``).
* ``vocab``: ``(field, {id: count})`` chunks to sum per field.

The join of skeleton rows with their user's common row is the hot spot: a
user's ~500 behaviour ids recur in each of their impressions. Both joins
encode a common row once, to bytes, and concatenate those bytes with each
impression's encoded features (see ``escm2_tf.examples``).
"""

import collections

import apache_beam as beam

from escm2_tf import schema
from escm2_pipelines import dofns
from escm2_pipelines import tally as tally_lib

_OUTPUTS = (dofns.REJECTED, dofns.TALLY, dofns.VOCAB)
# Lines per batch: large enough that the runner's per-element cost vanishes,
# small enough to keep a batch of examples (~2 kB each) in memory.
BATCH_SIZE = 1024


def _batches(label: str):
  return label >> beam.BatchElements(min_batch_size=BATCH_SIZE,
                                     max_batch_size=BATCH_SIZE)


class MergeCountsFn(beam.CombineFn):
  """Sums ``Counter``-like mappings."""

  def create_accumulator(self):
    return collections.Counter()

  def add_input(self, accumulator, counts):
    accumulator.update(counts)
    return accumulator

  def merge_accumulators(self, accumulators):
    merged = collections.Counter()
    for accumulator in accumulators:
      merged.update(accumulator)
    return merged

  def extract_output(self, accumulator):
    return accumulator


def _count_as(count: int, name: str) -> collections.Counter:
  return collections.Counter({name: count})


def _outputs(examples, *results, extra_tallies=()) -> dict:
  """The module's output dict from DoFn results with the ``_OUTPUTS`` tags."""
  def flatten(tag, label):
    return [r[tag] for r in results] | label >> beam.Flatten()
  return {
      "examples": examples,
      "rejected": flatten(dofns.REJECTED, "FlattenRejected"),
      "tallies": ([r[dofns.TALLY] for r in results] + list(extra_tallies)
                  | "FlattenTallies" >> beam.Flatten()),
      "vocab": flatten(dofns.VOCAB, "FlattenVocab"),
  }


class ConvertPaddleRec(beam.PTransform):
  """PaddleRec lines, each a whole impression, to Examples."""

  def __init__(self, max_values: int, keep_unclicked_conversions: bool):
    super().__init__()
    self._fn = dofns.EncodePaddleRecFn(max_values, keep_unclicked_conversions)

  def expand(self, lines):
    result = (lines | _batches("Batch")
              | "EncodeRows" >> beam.ParDo(self._fn).with_outputs(
                  *_OUTPUTS, main="examples"))
    return _outputs(result.examples, result)


class ConvertAliCcp(beam.PTransform):
  """Skeleton and common lines of the Tianchi release to Examples.

  The input is ``{"skeleton": pcoll, "common": pcoll}`` of ``(source, line)``
  pairs.

  ``join="side_input"`` hands every worker a dict from common_feature_index
  to the user's encoded entries and streams the impressions past it: no
  impression is shuffled, which keeps the local runner (whose shuffle lives in
  memory) within a few GB for the full release, but the dict must fit each
  worker. ``join="cogroup"`` shuffles impressions to their common row with
  CoGroupByKey instead, for runners with a disk-backed shuffle and common
  rows too large to copy to every worker.
  """

  def __init__(self, max_values: int, keep_unclicked_conversions: bool,
               join: str):
    super().__init__()
    self._max_values = max_values
    self._keep_unclicked = keep_unclicked_conversions
    self._join = join

  def expand(self, inputs):
    commons = inputs["common"] | "EncodeCommonRows" >> beam.ParDo(
        dofns.EncodeCommonFn(self._max_values)).with_outputs(
            *_OUTPUTS, main="encoded")
    if self._join == "cogroup":
      return self._cogroup(commons, inputs["skeleton"])
    return self._side_input(commons, inputs["skeleton"])

  def _cogroup(self, commons, skeleton) -> dict:
    keyed = skeleton | "KeyImpressions" >> beam.ParDo(
        dofns.KeySkeletonFn()).with_outputs(*_OUTPUTS, main="keyed")
    join_fn = dofns.CoGroupJoinFn(self._max_values, self._keep_unclicked)
    joined = ({"common": commons.encoded, "skeleton": keyed.keyed}
              | "GroupByCommonIndex" >> beam.CoGroupByKey()
              | "JoinImpressions" >> beam.ParDo(join_fn).with_outputs(
                  *_OUTPUTS, main="examples"))
    return _outputs(joined.examples, commons, keyed, joined)

  def _side_input(self, commons, skeleton) -> dict:
    duplicates = (commons.encoded
                  | "CommonIndexes" >> beam.Keys()
                  | "CountCommonIndexes" >> beam.combiners.Count.PerElement()
                  | "KeepDuplicates" >> beam.Filter(lambda kv: kv[1] > 1))
    join_fn = dofns.SideInputJoinFn(self._max_values, self._keep_unclicked)
    joined = (
        skeleton | _batches("BatchImpressions")
        | "JoinImpressions" >> beam.ParDo(
            join_fn, commons=beam.pvalue.AsDict(commons.encoded),
            duplicates=beam.pvalue.AsList(
                duplicates | "DuplicateIndexes" >> beam.Keys())
        ).with_outputs(*_OUTPUTS, dofns.USED, main="examples"))
    duplicate_rows = (duplicates
                      | "DuplicateRows" >> beam.Values()
                      | "SumDuplicateRows" >> beam.CombineGlobally(sum)
                      | "DuplicateTally" >> beam.Map(
                          _count_as, tally_lib.COMMON_ROWS_DUPLICATE))
    used_rows = (joined[dofns.USED]
                 | "SumKeptPerCommonRow" >> beam.CombinePerKey(sum)
                 | "CountUsedCommonRows" >> beam.combiners.Count.Globally()
                 | "UsedTally" >> beam.Map(_count_as,
                                           tally_lib.COMMON_ROWS_USED))
    return _outputs(joined.examples, commons, joined,
                    extra_tallies=(duplicate_rows, used_rows))


class SumTallies(beam.PTransform):
  """All tallies to one ``Counter``; empty input gives an empty one."""

  def expand(self, tallies):
    return tallies | "Sum" >> beam.CombineGlobally(MergeCountsFn())


class SumVocabularies(beam.PTransform):
  """Vocabulary chunks to ``(field, Counter)``, one per schema field."""

  def expand(self, chunks):
    every_field = chunks.pipeline | "EveryField" >> beam.Create(
        [(field, {}) for field in schema.FIELD_NAMES])
    return ((chunks, every_field) | "WithEveryField" >> beam.Flatten()
            | "SumPerField" >> beam.CombinePerKey(MergeCountsFn()))
