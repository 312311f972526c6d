"""The console scripts as a user meets them: help, bad flags, quiet, Ctrl-C.

Every test runs the installed console script in a subprocess, with a timeout.
"""

import os
import re
import signal
import subprocess
import sys
import tempfile
from typing import Any, Callable

from absl.testing import absltest
from absl.testing import parameterized

import datasets
import testing

_TIMEOUT = testing.SUBPROCESS_TIMEOUT_S
# Each tool's key flags, which its --help must list.
_KEY_FLAGS = {
    "escm2-synth": ("output_dir", "num_train", "num_test", "seed", "ctr",
                    "format"),
    "escm2-convert": ("input_format", "skeleton", "common_features", "input",
                      "output_dir", "max_values_per_field"),
    "escm2-train": ("train_data", "eval_data", "vocab_dir", "model_dir",
                    "export_dir", "loss", "backbone", "epochs", "batch_size",
                    "learning_rate", "embedding_dim", "distribution_strategy"),
    "escm2-evaluate": ("data", "saved_model", "ground_truth", "output"),
    "escm2-export": ("model_dir", "export_dir", "version", "overwrite"),
    "escm2-predict": ("saved_model", "data", "input_format", "output"),
    "escm2-bench": ("parts", "hparams", "train_examples", "output_json"),
    "escm2-study": ("work_dir", "output_dir", "regime", "seeds", "estimators"),
}
# What TensorFlow prints on a CPU-only machine unless asked.
_NOISE = re.compile(r"oneDNN|cuda|cuInit|InitializeLog|^[IWE]\d{4} |"
                    r"not a valid tf\.function parameter|apitools|"
                    r"BatchElements statistics|Traceback")


def _tempdir(test: absltest.TestCase) -> str:
  return test.enterContext(tempfile.TemporaryDirectory())


def _run(script: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
  return subprocess.run([testing.console_script(script), *args],
                        capture_output=True, text=True, timeout=_TIMEOUT,
                        check=False, **kwargs)


class HelpTest(parameterized.TestCase):

  @parameterized.product(script=sorted(_KEY_FLAGS),
                         help_flag=("--help", "--helpshort"))
  def test_help_lists_the_tools_flags(self, script, help_flag):
    result = _run(script, help_flag)
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertEqual(result.stderr, "")
    self.assertStartsWith(result.stdout, f"{script}: ")
    self.assertRegex(result.stdout, r"(?m)^[A-Z]\w* flags:$")
    for name in _KEY_FLAGS[script]:
      # The flag, its default when it has one, and a line of help.
      self.assertRegex(result.stdout, rf"(?m)^  --{name}(=\S*)?\s+\S",
                       f"{script} --{name}")
    self.assertNotIn("Try --helpfull", result.stdout)

  def test_helpfull_still_lists_absl_flags(self):
    result = _run("escm2-export", "--helpfull")
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn("--verbosity", result.stdout)
    self.assertIn("--export_dir", result.stdout)

  def test_cli_modules_load_neither_tensorflow_nor_beam(self):
    # What keeps --help and flag errors fast.
    code = ("import sys\n"
            "from escm2_tf.cli import bench, evaluate, export, predict, "
            "study, synth, train\n"
            "from escm2_pipelines import cli\n"
            "print(sorted(m for m in ('tensorflow', 'apache_beam') "
            "if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, timeout=_TIMEOUT, check=False)
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertEqual(result.stdout, "[]\n")


class BadFlagTest(parameterized.TestCase):

  @parameterized.parameters(sorted(_KEY_FLAGS))
  def test_unknown_flag_is_one_line_and_exit_2(self, script):
    result = _run(script, "--no_such_flag=1")
    self.assertEqual(result.returncode, 2, result.stderr)
    self.assertEqual(result.stdout, "")
    lines = [line for line in result.stderr.splitlines()
             if not line.startswith(f"{script}: converting")]
    self.assertLen(lines, 1, result.stderr)
    self.assertStartsWith(lines[0],
                          f"{script}: error: --no_such_flag: unknown flag")

  @parameterized.parameters(
      ("escm2-train", "--loss=esmm2",
       "--loss=esmm2: value should be one of "
       "<naive|esmm|ipw|dr|dr_jl|mrdr>"),
      ("escm2-train", "--epochs=two", "--epochs=two: expected an integer"),
      ("escm2-synth", "--ctr=2", "--output_dir: is required"),
      ("escm2-predict", "--input_format=csv",
       "--input_format=csv: value should be one of "
       "<tfrecord|paddlerec|aliccp>"),
      ("escm2-study", "--seeds=0,x",
       "--seeds: expected comma-separated integers, got '0,x'"),
      ("escm2-bench", "--parts=train,fly",
       "--parts: must be one of convert, parse, train, eval, serve, "
       "quality; got 'fly'"))
  def test_bad_value_names_the_flag_and_the_accepted_values(
      self, script, flag, message):
    result = _run(script, flag)
    self.assertEqual(result.returncode, 2, result.stderr)
    self.assertEqual(result.stderr, f"{script}: error: {message}\n")


# The tools must be quiet by themselves, not because the environment is.
_WITHOUT_TF_LOG_LEVEL = {k: v for k, v in os.environ.items()
                         if k != "TF_CPP_MIN_LOG_LEVEL"}


class QuietTest(absltest.TestCase):

  def assert_quiet(self, result: subprocess.CompletedProcess):
    self.assertEqual(result.returncode, 0, result.stderr)
    noise = [line for line in (result.stdout + result.stderr).splitlines()
             if _NOISE.search(line)]
    self.assertEmpty(noise)

  def test_cpu_run_prints_no_banner_or_cuda_errors(self):
    directory = _tempdir(self)
    data = datasets.make_synthetic_data(os.path.join(directory, "data"),
                                        num_train=600, num_test=300)
    result = _run(
        "escm2-train", f"--train_data={data['train']}",
        f"--eval_data={data['test']}", f"--vocab_dir={data['vocab_dir']}",
        f"--model_dir={directory}/model", f"--export_dir={directory}/export",
        "--epochs=1", "--batch_size=128", "--embedding_dim=4",
        "--num_experts=2", "--verbose=0",
        env=_WITHOUT_TF_LOG_LEVEL)
    self.assert_quiet(result)
    self.assertIn("Exported SavedModel:", result.stdout)

  def test_study_prints_no_banner_or_cuda_errors(self):
    # The study imports TensorFlow in its own modules, not through a CLI.
    # The true-propensity arm adds a label to the input by sample id, and
    # tf.data logs an error when a stateful op in the pipeline makes it
    # rewrite its parallel maps as sequential ones.
    directory = _tempdir(self)
    result = _run(
        "escm2-study", f"--work_dir={directory}/work",
        f"--output_dir={directory}/out", "--seeds=0,1",
        "--estimators=ipw_true",
        "--regime=tiny:ctr=0.2,cvr=0.3,corr=0.5,train=600,test=300,users=200,"
        "items=400",
        env=_WITHOUT_TF_LOG_LEVEL)
    self.assert_quiet(result)
    self.assertIn("[2/2] tiny seed 1 ipw_true", result.stdout)


def _read(path: str) -> str:
  with open(path) as f:
    return f.read()


class InterruptTest(absltest.TestCase):

  def _interrupt(self, args: list[str], reached: Callable[[str], Any],
                 what: str) -> tuple[int, str]:
    """Sends SIGINT once ``reached(stdout so far)`` holds.

    Returns:
      The exit status and stderr.
    """
    directory = _tempdir(self)
    stdout, stderr = (os.path.join(directory, name) for name in ("out", "err"))
    with open(stdout, "w") as out, open(stderr, "w") as err, subprocess.Popen(
        args, stdout=out, stderr=err) as process:
      try:
        testing.wait_until(lambda: reached(_read(stdout)), what, [process])
        process.send_signal(signal.SIGINT)
        process.wait(timeout=_TIMEOUT)
      finally:
        if process.poll() is None:
          process.kill()
    if process.returncode == 0:
      self.fail(f"the run ended before SIGINT reached it, {what} being too "
                f"close to its end:\n{_read(stdout)}")
    return process.returncode, _read(stderr)

  def test_ctrl_c_during_conversion(self):
    directory = _tempdir(self)
    raw = os.path.join(directory, "raw")
    subprocess.run([testing.console_script("escm2-synth"),
                    f"--output_dir={raw}", "--num_train=40000",
                    "--num_test=10"], check=True,
                   capture_output=True, timeout=_TIMEOUT)
    out = os.path.join(directory, "out")
    # One worker converts the eight shards one after the other: the signal
    # comes when the first one's file appears in the run's temporary
    # directory inside --output_dir, with most of the input still to go.
    status, stderr = self._interrupt(
        [testing.console_script("escm2-convert"),
         f"--skeleton={raw}/sample_skeleton_train.csv",
         f"--common_features={raw}/common_features_train.csv",
         f"--output_dir={out}", "--num_workers=1", "--num_shards=8"],
        reached=lambda _: any(files for _, _, files in os.walk(out)),
        what="the first shard's file")
    self.assertEqual(status, 130, stderr)
    self.assertNotIn("Traceback", stderr)
    self.assertEqual(stderr.splitlines()[-1], "escm2-convert: error: "
                     "interrupted; nothing was left in --output_dir")
    self.assertFalse(os.path.exists(out))

  def test_ctrl_c_during_training(self):
    directory = _tempdir(self)
    data = datasets.make_synthetic_data(os.path.join(directory, "data"),
                                        num_train=2000, num_test=300)
    model_dir = os.path.join(directory, "model")
    # The line the trainer prints after the first epoch's checkpoint. Early
    # stopping is off, so 999 epochs remain when the signal comes.
    status, stderr = self._interrupt(
        [testing.console_script("escm2-train"), f"--train_data={data['train']}",
         f"--eval_data={data['test']}", f"--vocab_dir={data['vocab_dir']}",
         f"--model_dir={model_dir}", f"--export_dir={directory}/export",
         "--epochs=1000", "--early_stopping_patience=0", "--batch_size=64",
         "--verbose=1"],
        reached=lambda stdout: re.search(r"(?m)^Epoch 1/1000: ", stdout),
        what="the first epoch's line")
    self.assertEqual(status, 130, stderr)
    self.assertNotIn("Traceback", stderr)
    self.assertEqual(stderr.splitlines()[-1], "escm2-train: error: "
                     "interrupted; rerun the same command to resume from "
                     "the last completed epoch")
    # Neither the export nor the metrics of an unfinished run.
    self.assertFalse(os.path.exists(os.path.join(directory, "export")))
    self.assertFalse(os.path.exists(os.path.join(model_dir, "metrics.json")))


if __name__ == "__main__":
  absltest.main()
