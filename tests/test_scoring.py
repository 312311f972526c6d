"""Tests of escm2_tf.scoring: raw rows become the converter's very records."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import errno
import glob
import os
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import tensorflow as tf

import testing
from escm2_tf import layout
from escm2_tf import scoring
from escm2_tf import simulator
from escm2_tf.formats import common_store
from escm2_tf.options import ConfigError
from escm2_pipelines import convert

_DEMO = os.path.join(os.path.dirname(__file__), "testdata", "paddlerec_demo",
                     "train", "small.txt")


def _simulate(input_format: str) -> dict[str, str]:
  """Small raw files of ``input_format``; the converter's inputs."""
  raw_dir = testing.new_dir()
  simulator.simulate(simulator.SimulatorConfig(
      num_train=400, num_test=1, num_users=30, num_items=300, seed=4,
      behaviour_length=40, format=input_format), raw_dir)
  names = {role: os.path.join(raw_dir, name) for role, name in
           layout.raw_file_names(input_format, layout.TRAIN).items()}
  if input_format == "paddlerec":
    return {"input": names["paddlerec"]}
  return {"skeleton": names["skeleton"], "common_features": names["common"]}


def _converted(input_format: str, inputs: dict[str, str],
               max_values: int) -> list[bytes]:
  output_dir = os.path.join(testing.new_dir(), "converted")
  convert.convert(output_dir, input_format=input_format,
                  max_values_per_field=max_values,
                  keep_unclicked_conversions=True, num_workers=1, **inputs)
  files = sorted(glob.glob(layout.examples_glob(output_dir)))
  return [record.numpy() for record in tf.data.TFRecordDataset(
      files, compression_type="GZIP")]


def _scored(input_format: str, inputs: dict[str, str],
            max_values: int) -> tuple[list[str], list[bytes]]:
  data = inputs.get("input") or inputs["skeleton"]
  common = [inputs["common_features"]] if "common_features" in inputs else []
  ids, records = [], []
  for batch_ids, serialized, _ in scoring.read_batches(
      [data], input_format, batch_size=64, common_files=common,
      max_values=max_values):
    ids += batch_ids
    records += serialized
  return ids, records


class RawRowsTest(parameterized.TestCase):

  @parameterized.product(input_format=("aliccp", "paddlerec"),
                         max_values=(0, 3))
  def test_encoded_as_the_converter_writes_them(self, input_format,
                                                max_values):
    inputs = _simulate(input_format)
    ids, records = _scored(input_format, inputs, max_values)
    with open(inputs.get("input") or inputs["skeleton"]) as f:
      self.assertEqual(ids, [line.split(",", 1)[0] for line in f])
    # The converter's shards need not keep the input's order.
    self.assertEqual(sorted(records),
                     sorted(_converted(input_format, inputs, max_values)))

  def test_paddlerec_demo(self):
    inputs = {"input": _DEMO}
    self.assertEqual(sorted(_scored("paddlerec", inputs, 20)[1]),
                     sorted(_converted("paddlerec", inputs, 20)))


class CommonTableTest(absltest.TestCase):

  def test_a_full_disk_names_the_flag_and_the_table(self):
    inputs = _simulate("aliccp")
    directory = testing.new_dir()
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with mock.patch.object(common_store.PartWriter, "_flush",
                           side_effect=full):
      with self.assertRaisesRegex(
          ConfigError, rf"^common_features: cannot write their table "
          rf"{directory}/commons.sqlite: No space left on device$"):
        scoring.common_table([inputs["common_features"]], 20, directory)


class LoadSignatureTest(absltest.TestCase):

  def test_a_saved_model_that_does_not_load(self):
    directory = testing.new_dir()
    with open(os.path.join(directory, "saved_model.pb"), "wb") as f:
      f.write(b"not a SavedModel")
    with self.assertRaisesRegex(
        ConfigError, rf"^saved_model: cannot load {directory}: [^\n]+$"):
      scoring.load_signature(directory)

  def test_no_saved_model(self):
    with self.assertRaisesRegex(
        ConfigError, "^saved_model: /nonexistent is neither a "
        "SavedModel directory"):
      scoring.load_signature("/nonexistent")


if __name__ == "__main__":
  absltest.main()
