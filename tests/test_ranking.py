"""Tests of escm2_tf.ranking: the chunked AUC against rank sums and pairs."""

import math
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from escm2_tf import ranking


def rank_sum_auc(positive, scores):
  """Mann-Whitney U from average ranks, all in memory (independent of sort)."""
  scores = np.asarray(scores, np.float64)
  _, inverse, counts = np.unique(scores, return_inverse=True,
                                 return_counts=True)
  average_ranks = np.cumsum(counts) - (counts - 1) / 2.0
  num_pos = positive.sum()
  num_neg = positive.size - num_pos
  rank_sum = average_ranks[inverse][positive].sum()
  return (rank_sum - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg)


def pairwise_auc(positive, scores):
  """O(n^2): the share of (positive, negative) pairs ranked right."""
  pos = np.asarray(scores, np.float64)[positive]
  neg = np.asarray(scores, np.float64)[~positive]
  wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (
      pos[:, None] == neg[None, :]).sum()
  return wins / (pos.size * neg.size)


def tied_data(seed, n, levels, dtype=np.float32):
  """Scores on a few levels, so runs of ties cross every chunk boundary."""
  rng = np.random.default_rng(seed)
  scores = (rng.integers(0, levels, n) / levels).astype(dtype)
  positive = rng.random(n) < 0.1 + 0.6 * scores
  return positive, scores


class SortedAucTest(parameterized.TestCase):

  @parameterized.product(chunk=(1, 2, 7, 64, 1 << 20),
                         levels=(1, 3, 50, 100_000))
  def test_equals_rank_sum_across_chunk_boundaries(self, chunk, levels):
    positive, scores = tied_data(chunk + levels, 3001, levels)
    if positive.all() or not positive.any():
      positive[:2] = (True, False)
    with mock.patch.object(ranking, "CHUNK", chunk):
      got = ranking.sorted_auc(positive, scores)
    self.assertAlmostEqual(got, rank_sum_auc(positive, scores), delta=1e-12)

  @parameterized.parameters(3, 11, 1 << 20)
  def test_equals_pairwise_count(self, chunk):
    positive, scores = tied_data(4, 700, 9)
    with mock.patch.object(ranking, "CHUNK", chunk):
      got = ranking.sorted_auc(positive, scores)
    self.assertAlmostEqual(got, pairwise_auc(positive, scores), delta=1e-12)

  def test_float32_and_its_float64_copy_agree(self):
    rng = np.random.default_rng(7)
    scores = rng.random(200_000).astype(np.float32) ** 4
    positive = rng.random(scores.size) < scores
    with mock.patch.object(ranking, "CHUNK", 4096):
      narrow = ranking.sorted_auc(positive, scores)
      wide = ranking.sorted_auc(positive, scores.astype(np.float64))
    self.assertEqual(narrow, wide)
    self.assertAlmostEqual(narrow, rank_sum_auc(positive, scores),
                           delta=1e-12)

  def test_one_run_of_ties_over_many_chunks(self):
    # 0.5 for every pair in the tie; the low negative and the high positive
    # are ranked right against everything.
    scores = np.array([0.0] + [0.5] * 40 + [1.0], np.float32)
    positive = np.array([False] + [True, False] * 20 + [True])
    with mock.patch.object(ranking, "CHUNK", 3):
      got = ranking.sorted_auc(positive, scores)
    self.assertEqual(got, pairwise_auc(positive, scores))
    self.assertGreater(got, 0.5)

  def test_signed_zeros_tie(self):
    self.assertEqual(ranking.sorted_auc(
        np.array([True, False]), np.array([-0.0, 0.0], np.float32)), 0.5)

  @parameterized.parameters(([True, True],), ([False],), ([],))
  def test_one_class_is_nan(self, positive):
    self.assertTrue(math.isnan(ranking.sorted_auc(
        np.array(positive, bool), np.zeros(len(positive), np.float32))))


if __name__ == "__main__":
  absltest.main()
