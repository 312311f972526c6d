"""Tests of the local runner's worker pool."""

import os

from absl.testing import absltest

from escm2_pipelines import config as config_lib
from escm2_pipelines import pool


class NumWorkersTest(absltest.TestCase):

  def test_workers_default_to_one_per_core(self):
    config = config_lib.ConvertConfig(
        output_dir="o", input_format="paddlerec", input="x")
    self.assertEqual(pool.num_workers(config),
                     len(os.sched_getaffinity(0)))
    self.assertEqual(pool.num_workers(
        config_lib.ConvertConfig(
            output_dir="o", input_format="paddlerec", input="x",
            num_workers=3)), 3)


if __name__ == "__main__":
  absltest.main()
