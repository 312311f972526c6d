"""Tests of escm2_tf.bench.synthetic."""

from absl.testing import absltest
import numpy as np

from escm2_tf import schema
from escm2_tf.bench import synthetic


class VocabulariesTest(absltest.TestCase):

  def test_full_scale_sizes_and_disjoint_ranges(self):
    vocabularies = synthetic.vocabularies(1.0)
    self.assertEqual(list(vocabularies), list(schema.FIELD_NAMES))
    for field, ids in vocabularies.items():
      self.assertEqual(ids.dtype, np.int64)
      self.assertLen(ids, synthetic.ALICCP_VOCABULARY_SIZES.get(field, 100))
    every = np.concatenate(list(vocabularies.values()))
    self.assertEqual(every.min(), 1)
    self.assertLen(np.unique(every), len(every))
    self.assertEqual(every.max(), len(every))

  def test_scale_keeps_at_least_one_id(self):
    vocabularies = synthetic.vocabularies(1e-4)
    self.assertLen(vocabularies["205"], 25)
    self.assertLen(vocabularies["101"], 20)
    self.assertLen(vocabularies["853"], 1)


if __name__ == "__main__":
  absltest.main()
