"""Tests of escm2_tf.serving_assets: what an export writes in assets.extra."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import os

import tensorflow as tf

from escm2_tf import serving_assets


class InputTableTest(tf.test.TestCase):

  def test_docs_show_the_generated_input_table(self):
    docs = os.path.join(os.path.dirname(__file__), "..", "docs", "serving.md")
    with open(docs, encoding="utf-8") as f:
      self.assertIn(serving_assets.input_table(), f.read())


if __name__ == "__main__":
  tf.test.main()
