"""Tests of the escm2-convert command line."""

import contextlib
import io
import json
import os
from unittest import mock

from absl import flags
from absl.testing import absltest

import testing
from escm2_tf import layout
from escm2_tf import simulator
from escm2_pipelines import cli
from escm2_pipelines import resources

_DEMO = os.path.join(os.path.dirname(__file__), "testdata", "paddlerec_demo",
                     "train", "small.txt")
_SCRIPT = testing.console_script("escm2-convert")


def _write_paddlerec_with_bad_rows(directory):
  with open(_DEMO) as f:
    lines = f.read().splitlines()
  lines += ["99,0,0", "100,7,0,205:1"]  # column_count, bad_label
  path = os.path.join(directory, "mixed.txt")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path


class ParseFlagsTest(absltest.TestCase):

  def test_beam_options_pass_through(self):
    with testing.tool_flags(cli.TOOL):
      rest = cli.TOOL.parse([
          "escm2-convert", "--input_format=paddlerec", "--input=a.txt",
          "--runner=FnApiRunner", "--output_dir=out",
          "--direct_running_mode=multi_processing", "--direct_num_workers=2",
          "--max_values_per_field=7"])
      self.assertEqual(flags.FLAGS.output_dir, "out")
      self.assertEqual(flags.FLAGS.max_values_per_field, 7)
    self.assertEqual(rest, ["escm2-convert", "--runner=FnApiRunner",
                            "--direct_running_mode=multi_processing",
                            "--direct_num_workers=2"])

  def test_bad_flag_value_exits_with_one_line(self):
    stderr = io.StringIO()
    with self.assertRaises(SystemExit) as e, contextlib.redirect_stderr(
        stderr), testing.tool_flags(cli.TOOL):
      cli.TOOL.parse(["escm2-convert", "--max_values_per_field=x"])
    self.assertEqual(e.exception.code, 2)
    self.assertEqual(stderr.getvalue(), "escm2-convert: error: "
                     "--max_values_per_field=x: expected an integer\n")


class MainTest(absltest.TestCase):

  def test_converts_and_reports(self):
    output_dir = os.path.join(testing.new_dir(), "out")
    stdout = io.StringIO()
    with testing.tool_flags(cli.TOOL, input_format="paddlerec", input=_DEMO,
                            output_dir=output_dir, max_values_per_field=0):
      with contextlib.redirect_stdout(stdout):
        cli.TOOL.main(["escm2-convert", "--direct_num_workers=1"])
    self.assertIn(f"10 of 10 rows written to {output_dir}", stdout.getvalue())
    with open(layout.stats_file(output_dir)) as f:
      stats = json.load(f)
    self.assertEqual(stats["settings"]["max_values_per_field"], 0)
    self.assertEqual(stats["rows_written"], 10)

  def _failing_main(self, *args: str, **flag_values) -> str:
    stderr = io.StringIO()
    with testing.tool_flags(cli.TOOL, **flag_values), \
        contextlib.redirect_stderr(stderr):
      self.assertEqual(cli.TOOL.main(["escm2-convert", *args]), 2)
    return stderr.getvalue()

  def test_missing_output_dir_names_the_flag(self):
    stderr = self._failing_main(input_format="paddlerec", input=_DEMO,
                                output_dir=None)
    self.assertEqual(stderr, "escm2-convert: error: --output_dir: is "
                     "required\n")

  def test_unknown_flag_names_the_flag(self):
    output_dir = os.path.join(testing.new_dir(), "out")
    stderr = self._failing_main("--max_value_per_feild=3",
                                input_format="paddlerec", input=_DEMO,
                                output_dir=output_dir)
    self.assertStartsWith(stderr.splitlines()[-1], "escm2-convert: error: "
                          "--max_value_per_feild: unknown flag")
    self.assertFalse(os.path.exists(output_dir))

  def test_common_features_too_large_exit_before_any_work(self):
    raw_dir = testing.new_dir()
    simulator.simulate(simulator.SimulatorConfig(
        num_train=200, num_test=1, num_users=20, num_items=400, seed=1),
        raw_dir)
    output_dir = os.path.join(testing.new_dir(), "out")
    with testing.tool_flags(
        cli.TOOL, input_format="aliccp", output_dir=output_dir,
        skeleton=os.path.join(raw_dir, "sample_skeleton_train.csv"),
        common_features=os.path.join(raw_dir, "common_features_train.csv")):
      with mock.patch.object(resources, "available_memory_bytes",
                             return_value=1000):
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
          # Beam's local runner holds the side input in memory; the
          # project's own (without Beam options) keeps it on disk.
          self.assertEqual(cli.TOOL.main(["escm2-convert",
                                          "--runner=FnApiRunner"]), 2)
    # One error line, after the line saying what the run was to do.
    errors = [line for line in stderr.getvalue().splitlines()
              if line.startswith("escm2-convert: error:")]
    self.assertLen(errors, 1)
    message = errors[0]
    self.assertStartsWith(message,
                          "escm2-convert: error: --common_features: ")
    self.assertIn("--join=cogroup", message)
    self.assertIn("--runner=DataflowRunner", message)
    self.assertNotIn("\n", message)
    self.assertFalse(os.path.exists(output_dir))


class ConsoleScriptTest(absltest.TestCase):

  def _run(self, *args):
    self.assertTrue(os.path.exists(_SCRIPT), _SCRIPT)
    return testing.run_subprocess([_SCRIPT, *args], tf_log_level=None)

  def test_too_many_bad_rows_exits_non_zero_keeping_the_rejected_rows(self):
    directory = testing.new_dir()
    output_dir = os.path.join(directory, "out")
    result = self._run(
        "--input_format=paddlerec",
        f"--input={_write_paddlerec_with_bad_rows(directory)}",
        f"--output_dir={output_dir}", "--max_bad_fraction=0.1",
        "--direct_running_mode=in_memory")
    self.assertEqual(result.returncode, 1, result.stderr)
    last_line = result.stderr.strip().splitlines()[-1]
    self.assertRegex(last_line, r"^escm2-convert: error: 2 of 12 rows "
                     r"rejected "
                     r"\(16\.6667%\), more than --max_bad_fraction=0\.1")
    self.assertEqual(sorted(os.listdir(output_dir)),
                     [layout.FAILED_FILE, layout.REJECTED_DIR])
    rejected = os.path.join(output_dir, layout.REJECTED_DIR)
    lines = []
    for name in os.listdir(rejected):
      with open(os.path.join(rejected, name)) as f:
        lines += f.read().splitlines()
    self.assertCountEqual([line.split("\t")[0] for line in lines],
                          ["column_count", "bad_label"])
    with open(layout.failed_file(output_dir)) as f:
      failed = json.load(f)
    self.assertEqual(failed["error"],
                     last_line.removeprefix("escm2-convert: error: "))
    self.assertEqual(failed["stats"]["rejected_by_reason"],
                     {"bad_label": 1, "column_count": 1})
    self.assertEqual(failed["stats"]["rows_written"], 10)

  def test_succeeds_below_the_threshold(self):
    directory = testing.new_dir()
    output_dir = os.path.join(directory, "out")
    result = self._run(
        "--input_format=paddlerec",
        f"--input={_write_paddlerec_with_bad_rows(directory)}",
        f"--output_dir={output_dir}", "--max_bad_fraction=0.2")
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn("10 of 12 rows written", result.stdout)


if __name__ == "__main__":
  absltest.main()
