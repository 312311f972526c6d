"""Shared test utilities: temporary directories, tiny configs, CLI runs.

Data helpers (simulated, converted datasets) are in ``datasets.py``, the
Keras layer checks in ``layer_testing.py``.

    import testing

    status, stdout, stderr = testing.run_main(train_cli.TOOL,
                                              model_dir=testing.new_dir())
    result = testing.run_subprocess([testing.console_script("escm2-export"),
                                     "--model_dir=..."])
"""

import atexit
import contextlib
import dataclasses
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, Mapping, Sequence
from unittest import mock

from absl.testing import flagsaver

# Imports neither TensorFlow nor Keras, so that tests of the tools that start
# without them (escm2-synth, escm2-convert) stay that way.
from escm2_tf import config as config_lib
from escm2_tf import tool as tool_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Far above any healthy run of a test's subprocess on two shared cores, far
# below CI's own limit: a hang fails one test instead of stalling the suite.
SUBPROCESS_TIMEOUT_S = 300
# The metrics that need the simulator's ground truth (escm2-evaluate and
# escm2-train report them only with --ground_truth).
GROUND_TRUTH_METRICS = frozenset({
    "cvr_bias", "cvr_bias_clicked", "auc_cvr_truth", "true_cvr_mean",
    "calibration_ctr_truth", "calibration_cvr_truth",
    "calibration_ctcvr_truth", "auc_ctr_oracle", "ctr_calibration_error",
    "ips_true_cvr", "ips_true_cvr_oracle"})
# A network small enough to fit in seconds; tests override what they study.
TINY_MODEL = config_lib.ModelConfig(embedding_dim=4, num_experts=2,
                                    expert_units=(8,), tower_units=(4,))
# Two seeds of a tiny, high-rate regime: every metric is defined, and the
# whole study takes seconds per run. A small world (the simulator's default
# has 10,000 users) takes little of them to build.
TINY_REGIME_RATES = "tiny:ctr=0.25,cvr=0.3,corr=0.9,train=2000,test=1000"
TINY_REGIME = TINY_REGIME_RATES + ",users=400,items=1000"


@contextlib.contextmanager
def tool_flags(tool: tool_lib.Tool, **flag_values: Any) -> Iterator[None]:
  """A tool's flags, defined and set for the block only (``flagsaver``)."""
  with flagsaver.flagsaver():
    tool.binding.define()
    with flagsaver.flagsaver(**flag_values):
      yield


_root: list[str] = []


def new_dir() -> str:
  """A new empty directory, removed when the test process exits."""
  if not _root:
    _root.append(tempfile.mkdtemp(prefix="escm2-test-"))
    atexit.register(shutil.rmtree, _root[0], ignore_errors=True)
  return tempfile.mkdtemp(dir=_root[0])


def tiny_model_config(**overrides: Any) -> config_lib.ModelConfig:
  """``TINY_MODEL`` with ``overrides``."""
  return dataclasses.replace(TINY_MODEL, **overrides)


def tiny_config(data: Mapping[str, str], model_dir: str, *,
                model: config_lib.ModelConfig = TINY_MODEL,
                **overrides: Any) -> config_lib.ExperimentConfig:
  """A one-epoch run on ``datasets.make_synthetic_data``'s ``data``.

  Args:
    data: The data's paths.
    model_dir: The run's directory.
    model: The network.
    **overrides: Other fields, by their flag names (``epochs=2``, ``seed=3``,
      ``loss="dr"``).

  Op determinism is left off: it is process-wide, the CPU kernels here are
  deterministic without it, and other tests share the process.
  """
  values = dict(train_data=data["train"], eval_data=data["test"],
                vocab_dir=data["vocab_dir"], model_dir=model_dir, epochs=1,
                batch_size=256, deterministic=False,
                # Every id of the tiny data is rarer than the default.
                min_count=1)
  config = config_lib.ExperimentConfig.create(**values)
  return dataclasses.replace(config, model=model).replace(**overrides)


def run_main(tool: tool_lib.Tool, *, argv: Sequence[str] = (),
             environ: Mapping[str, str] | None = None,
             **flag_values: Any) -> tuple[int, str, str]:
  """Runs a CLI's opening and body in this process with these flag values.

  Args:
    tool: The CLI's ``TOOL``.
    argv: Further positional arguments.
    environ: Environment variables set for the run only.
    **flag_values: Flags set for the run only (``tool_flags``).

  Returns:
    The exit status, and what it wrote to stdout and to stderr.
  """
  stdout, stderr = io.StringIO(), io.StringIO()
  with contextlib.ExitStack() as stack:
    stack.enter_context(mock.patch.dict(os.environ, environ or {}))
    stack.enter_context(tool_flags(tool, **flag_values))
    stack.enter_context(contextlib.redirect_stdout(stdout))
    stack.enter_context(contextlib.redirect_stderr(stderr))
    status = tool.main([tool.program, *argv])
  return status, stdout.getvalue(), stderr.getvalue()


def console_script(name: str) -> str:
  """The path of an installed console script of this environment."""
  return os.path.join(os.path.dirname(sys.executable), name)


def python_command(code: str, *arguments: str) -> list[str]:
  """The command that runs ``code`` in a fresh interpreter of this venv."""
  return [sys.executable, "-c", code, *arguments]


def run_subprocess(command: Sequence[str], *,
                   timeout: float = SUBPROCESS_TIMEOUT_S,
                   env: Mapping[str, str] | None = None, cwd: str = REPO,
                   tf_log_level: str | None = "2"
                   ) -> subprocess.CompletedProcess:
  """Runs ``command`` to completion, its output captured as text.

  Args:
    command: The program and its arguments.
    timeout: Seconds before it is killed and ``subprocess.TimeoutExpired``
      fails the test.
    env: Variables added to this process's environment.
    cwd: Its working directory.
    tf_log_level: ``TF_CPP_MIN_LOG_LEVEL`` for it, or None to leave the
      variable as this process has it.

  Returns:
    The completed process; a non-zero exit status does not raise.
  """
  environment = dict(os.environ)
  if tf_log_level is not None:
    environment["TF_CPP_MIN_LOG_LEVEL"] = tf_log_level
  environment.update(env or {})
  return subprocess.run(list(command), capture_output=True, text=True,
                        timeout=timeout, check=False, cwd=cwd,
                        env=environment)


def wait_until(reached: Callable[[], Any], what: str,
               processes: Sequence[subprocess.Popen] = (),
               timeout: float = SUBPROCESS_TIMEOUT_S) -> None:
  """Returns once ``reached()`` holds: a point the processes report.

  A process reports the point itself (a line it prints, a file it writes),
  so how fast the machine is changes only how long this waits.

  Args:
    reached: Whether the point has come.
    what: The point, for the failure message.
    processes: Those that must not end before it.
    timeout: Seconds; a guard against a hang, never the trigger.

  Raises:
    AssertionError: when one of ``processes`` ends first, or at the timeout.
  """
  deadline = time.monotonic() + timeout
  while not reached():
    for process in processes:
      if process.poll() is not None:
        raise AssertionError(
            f"{process.args[0]} exited {process.returncode} before {what}")
    if time.monotonic() > deadline:
      raise AssertionError(f"no {what} after {timeout:.0f}s")
    time.sleep(0.01)
