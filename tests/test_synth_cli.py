"""Tests of the escm2-synth command line (escm2_tf/cli/synth.py)."""

import dataclasses
import filecmp
import functools
import json
import os
import sys

from absl import flags
from absl.testing import absltest
from absl.testing import parameterized

import testing
from escm2_tf import simulator
from escm2_tf.cli import synth

FLAGS = flags.FLAGS

# A small world, as flags; every name is also a SimulatorConfig field.
_SMALL = dict(num_train=600, num_test=300, seed=5, num_users=80,
              num_items=200, num_categories=12, num_shops=40, num_brands=30,
              num_intentions=60, behaviour_length=30,
              impressions_per_request=8)


# Runs main in-process with the flags as set; returns (code, stdout, stderr).
_run_main = functools.partial(testing.run_main, synth.TOOL)


class SynthMainTest(parameterized.TestCase):

  def test_every_setting_has_a_flag_with_its_default(self):
    # Also guards --seed, which escm2-train defines with the same default.
    defaults = simulator.SimulatorConfig()
    with testing.tool_flags(synth.TOOL):
      for field in dataclasses.fields(simulator.SimulatorConfig):
        self.assertIn(field.name, FLAGS)
        self.assertEqual(FLAGS[field.name].default,
                         getattr(defaults, field.name), field.name)

  def test_writes_what_the_library_writes(self):
    cli_dir, library_dir = testing.new_dir(), testing.new_dir()
    code, stdout, stderr = _run_main(output_dir=cli_dir, json=True, **_SMALL)
    self.assertEqual(code, 0)
    # What it is doing, step by step, on stderr.
    self.assertEqual(stderr.splitlines(), [
        "escm2-synth: building a world of 80 users and 200 items",
        "escm2-synth: simulating the train split (600 impressions)",
        "escm2-synth: simulating the test split (300 impressions)"])
    summary = json.loads(stdout)
    self.assertEqual(summary["train"]["rows"], _SMALL["num_train"])
    self.assertEqual(summary["test"]["rows"], _SMALL["num_test"])
    simulator.simulate(simulator.SimulatorConfig(**_SMALL), library_dir)
    names = sorted(os.listdir(library_dir))
    self.assertLen(names, 6)
    self.assertEqual(sorted(os.listdir(cli_dir)), names)
    self.assertEqual(summary["files"],
                     [os.path.join(cli_dir, name) for name in names])
    _, mismatch, errors = filecmp.cmpfiles(cli_dir, library_dir, names,
                                           shallow=False)
    self.assertEqual((mismatch, errors), ([], []))

  def test_paddlerec_format(self):
    out = testing.new_dir()
    code, stdout, _ = _run_main(output_dir=out, format="paddlerec", **_SMALL)
    self.assertEqual(code, 0)
    # The text summary: where the files went, then one line per split.
    lines = stdout.splitlines()
    self.assertEqual(lines[0], f"escm2-synth: wrote 4 files to {out}")
    self.assertStartsWith(lines[1], f"  train: {_SMALL['num_train']:,} "
                          "impressions, ")
    self.assertCountEqual(os.listdir(out), [
        "paddlerec_train.txt", "paddlerec_test.txt", "ground_truth_train.csv",
        "ground_truth_test.csv"])

  @parameterized.parameters(
      ("num_train", 0), ("num_test", -3), ("ctr", 1.5), ("cvr", 0.0),
      ("seed", -1), ("num_shops", 5), ("unclicked_conversion_rate", 2.0),
      ("impressions_per_request", 0))
  def test_impossible_flag_fails_with_one_line_naming_it(self, flag, value):
    out = os.path.join(testing.new_dir(), "out")
    code, stdout, stderr = _run_main(output_dir=out, **{**_SMALL, flag: value})
    self.assertEqual(code, 2)
    self.assertEqual(stdout, "")
    self.assertLen(stderr.splitlines(), 1)
    self.assertStartsWith(stderr, f"escm2-synth: error: --{flag}: ")
    self.assertFalse(os.path.exists(out))

  def test_unwritable_output_dir(self):
    blocker = os.path.join(testing.new_dir(), "file")
    with open(blocker, "w", encoding="utf-8"):
      pass
    code, _, stderr = _run_main(output_dir=os.path.join(blocker, "out"),
                                **_SMALL)
    self.assertEqual(code, 2)
    self.assertStartsWith(stderr, "escm2-synth: error: --output_dir: ")
    self.assertLen(stderr.splitlines(), 1)

  def test_missing_output_dir(self):
    code, _, stderr = _run_main(output_dir=None)
    self.assertEqual(code, 2)
    self.assertIn("--output_dir", stderr)


class EntryPointTest(absltest.TestCase):
  """The module as a program: absl parses the flags, the exit code carries."""

  def _run(self, *args):
    return testing.run_subprocess(
        [sys.executable, "-m", "escm2_tf.cli.synth", *args], tf_log_level=None)

  def test_success_and_failure(self):
    out = testing.new_dir()
    flags_ = [f"--{name}={value}" for name, value in _SMALL.items()]
    done = self._run(f"--output_dir={out}", "--json", *flags_)
    self.assertEqual(done.returncode, 0, done.stderr)
    self.assertEqual(json.loads(done.stdout)["train"]["rows"],
                     _SMALL["num_train"])
    failed = self._run(f"--output_dir={out}/bad", *flags_, "--ctr=0")
    self.assertEqual(failed.returncode, 2)
    errors = [line for line in failed.stderr.splitlines()
              if line.startswith("escm2-synth:")]
    self.assertLen(errors, 1)
    self.assertEqual(errors[0],
                     "escm2-synth: error: --ctr: must lie in (0, 1), got 0.0")
    self.assertFalse(os.path.exists(f"{out}/bad"))

  def test_unknown_format_is_refused_by_the_flag_parser(self):
    done = self._run("--output_dir=/nonexistent/never", "--format=csv")
    self.assertEqual(done.returncode, 2)
    self.assertEqual(done.stderr, "escm2-synth: error: --format=csv: value "
                     "should be one of <aliccp|paddlerec>\n")
    self.assertFalse(os.path.exists("/nonexistent/never"))


if __name__ == "__main__":
  absltest.main()
