"""Ali-CCP-shaped vocabularies for benchmarks that need no converted data.

Used by ``benchmarks/train_step_bench.py`` and ``benchmarks/serving_latency.py``
to build a model of the full release's size without reading it.
"""

import numpy as np

from escm2_tf import schema

# Rough Ali-CCP vocabulary sizes; fields not listed get 100 ids.
ALICCP_VOCABULARY_SIZES = {
    "101": 200_000, "205": 250_000, "207": 80_000, "216": 60_000,
    "110_14": 50_000, "127_14": 40_000, "210": 20_000, "150_14": 10_000,
    "508": 5_000, "509": 5_000, "702": 5_000, "853": 5_000, "109_14": 3_000,
    "206": 3_000}


def vocabularies(scale: float) -> dict[str, np.ndarray]:
  """Every field's ids, ``scale`` times Ali-CCP's counts (at least one).

  Fields take consecutive, disjoint id ranges starting at 1, in
  ``schema.FIELD_NAMES`` order.
  """
  result, start = {}, 1
  for field in schema.FIELD_NAMES:
    size = max(1, int(ALICCP_VOCABULARY_SIZES.get(field, 100) * scale))
    result[field] = np.arange(start, start + size, dtype=np.int64)
    start += size
  return result
