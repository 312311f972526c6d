"""What the tools print: their own lines, not the libraries' start-up noise.

TensorFlow prints a C++ banner on import (oneDNN, "Could not find cuda
drivers") and an error line for the CUDA probe of every CPU-only machine; Beam
and TensorFlow log warnings and statistics through Python's logging. By
default (``--verbosity=0``) ``configure`` raises those libraries' log levels
and makes the first import of TensorFlow, wherever a tool does it, run with
the known banner lines filtered out (it also probes the devices then, so the
CUDA probe's lines are filtered too); ``--verbosity=1`` shows everything. A
``TF_CPP_MIN_LOG_LEVEL`` the user set is kept. ``Progress`` prints a periodic
progress line.
"""

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterator

import escm2_tf

if TYPE_CHECKING:
  import tf_keras as keras

# Lines TensorFlow writes to stderr at import and at its first device probe
# that say nothing about this run.
_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|\] oneDNN custom operations are on"
    r"|\] Could not find cuda drivers on your machine"
    r"|\] failed call to cuInit"
    r"|\] Unable to register cu(DNN|FFT|BLAS) factory"
    r"|\] TF-TRT Warning: Could not find TensorRT"
    r"|computation placer already registered")
# TensorFlow logs through "tensorflow" and, in places, absl's logger (whose
# level absl resets when --verbosity is set); the tools print, not log.
# matplotlib warns when a font it cached is gone and it draws with another.
_LIBRARY_LOGGERS = ("tensorflow", "absl", "apache_beam", "h5py", "matplotlib")
# Warnings libraries log through the root logger, which has no name to mute.
_ROOT_NOISE = ("apitools not found",)
# Set by a quiet tool for the Python processes it starts.
QUIET_ENV = "ESCM2_QUIET_TENSORFLOW"


def _wanted(record: logging.LogRecord) -> bool:
  """Errors, and what the libraries' records are not."""
  if record.levelno >= logging.ERROR:
    return True
  if record.name.split(".")[0] in _LIBRARY_LOGGERS:
    return False
  return not str(record.msg).startswith(_ROOT_NOISE)


def configure(verbosity: int) -> None:
  """Sets the libraries' log levels for ``verbosity``, before they load."""
  if not escm2_tf.USER_TF_LOG_LEVEL:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if verbosity >= 1 else "2"
  if verbosity < 1:
    # On the handlers, which every record reaches whatever its logger's level.
    for handler in logging.getLogger().handlers:
      handler.addFilter(_wanted)
    # Processes the tool spawns (the benchmarks' parts) inherit it, and
    # escm2_tf's import installs the filter there before they load anything.
    os.environ[QUIET_ENV] = "1"
    quiet_tensorflow_import()
  else:
    # A verbose tool started by a quiet one shows everything too.
    os.environ.pop(QUIET_ENV, None)
    sys.meta_path[:] = [finder for finder in sys.meta_path
                        if not isinstance(finder, _QuietTensorFlowFinder)]


@contextlib.contextmanager
def _filtered_stderr() -> Iterator[None]:
  """Holds back what is written to file descriptor 2, then replays it less
  the noise lines (C++ libraries write there directly, not to sys.stderr)."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode="w+b") as held:
    os.dup2(held.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      held.seek(0)
      for line in held.read().decode("utf-8", "replace").splitlines():
        if not _NOISE.search(line):
          print(line, file=sys.stderr)


class _QuietLoader(importlib.abc.Loader):
  """Runs TensorFlow's own loader, then its device probe, under the filter."""

  def __init__(self, loader: importlib.abc.Loader):
    self._loader = loader

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module) -> None:
    # The module keeps its real loader for whoever asks it for resources.
    module.__loader__ = module.__spec__.loader = self._loader
    with _filtered_stderr():
      self._loader.exec_module(module)
      module.config.list_physical_devices()


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
  """Finds ``tensorflow`` as the other finders do, with ``_QuietLoader``."""

  def find_spec(self, name, path=None, target=None):
    del path, target  # A top-level package; the other finders search.
    if name != "tensorflow":
      return None
    sys.meta_path.remove(self)
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.loader is not None:
      spec.loader = _QuietLoader(spec.loader)
    return spec


def quiet_child() -> None:
  """In a process a quiet tool started: its libraries' noise hidden too.

  Runs at escm2_tf's import, before the process sets up any log handler, so
  the filters go on the loggers: the root one, which libraries call directly
  (``logging.warning``), and the libraries' own.
  """
  logging.getLogger().addFilter(_wanted)
  for name in _LIBRARY_LOGGERS:
    logging.getLogger(name).setLevel(logging.ERROR)
  quiet_tensorflow_import()


def quiet_tensorflow_import() -> None:
  """The next ``import tensorflow`` (by anyone) drops the noise lines.

  A tool's code imports TensorFlow wherever it first needs it (after its
  flags are checked, so that a usage error comes fast); catching the import
  itself leaves no tool that forgets to hide the banner.
  """
  if "tensorflow" in sys.modules or any(
      isinstance(finder, _QuietTensorFlowFinder) for finder in sys.meta_path):
    return
  sys.meta_path.insert(0, _QuietTensorFlowFinder())


@contextlib.contextmanager
def interruptible() -> Iterator[Callable[[], None]]:
  """Ctrl-C stays a ``KeyboardInterrupt``, even where a library wraps it.

  Beam's in-process runner catches the interrupt inside a DoFn, logs it with
  a traceback and re-raises it as a ``RuntimeError``; here the signal is
  remembered, the libraries' loggers are muted, and whatever escapes is
  turned back into a ``KeyboardInterrupt``. Where the interrupt lands in
  code that ignores exceptions (a ``__del__``, such as that of the dataset
  iterator Keras drops between epochs), nothing escapes: a loop calls the
  yielded function at its steps, which raises the remembered interrupt.

  Yields:
    A function that raises ``KeyboardInterrupt`` once Ctrl-C was pressed.
  """
  interrupted = []

  def check() -> None:
    if interrupted:
      raise KeyboardInterrupt

  if threading.current_thread() is not threading.main_thread():
    yield check
    return

  def handler(signum, frame):
    del frame  # Unused.
    interrupted.append(signum)
    for name in _LIBRARY_LOGGERS:
      logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    raise KeyboardInterrupt

  previous = signal.signal(signal.SIGINT, handler)
  try:
    yield check
  except BaseException:
    if interrupted:
      raise KeyboardInterrupt from None
    raise
  finally:
    signal.signal(signal.SIGINT, previous)


def interrupt_callback(check: Callable[[], None], every_batch: bool = True
                       ) -> "keras.callbacks.Callback":
  """A Keras callback calling ``check`` (``interruptible``'s) at each step.

  So a Ctrl-C that landed where an exception is ignored still ends training
  at the next batch (``every_batch``) or epoch boundary. Keras refuses
  batch-level callbacks under ParameterServerStrategy.
  """
  # Imported when called: the tools load TensorFlow after their flags.
  import tf_keras as keras  # pylint: disable=g-import-not-at-top

  class EpochCheck(keras.callbacks.Callback):

    def on_epoch_begin(self, epoch, logs=None):
      check()

    def on_epoch_end(self, epoch, logs=None):
      check()

  class BatchCheck(EpochCheck):

    def on_train_batch_end(self, batch, logs=None):
      check()

    def on_test_batch_end(self, batch, logs=None):
      check()

  return BatchCheck() if every_batch else EpochCheck()


class Progress:
  """A progress line to stderr at most every ``interval`` seconds.

  ``update(done, share)`` prints ``label: done unit (rate/s)``, and with the
  share of the work done, the percentage and an ETA.
  """

  def __init__(self, label: str, unit: str, interval: float = 10.0):
    self.label, self.unit, self.interval = label, unit, interval
    self.start = self._last = time.monotonic()

  def update(self, done: float, share: float | None = None,
             force: bool = False) -> None:
    now = time.monotonic()
    if not force and now - self._last < self.interval:
      return
    self._last = now
    elapsed = max(now - self.start, 1e-9)
    line = f"{self.label}: {done:,.0f} {self.unit} ({done / elapsed:,.0f}/s)"
    if share:
      share = min(share, 1.0)
      line += (f", {share:.0%} done, ETA "
               f"{_clock(elapsed * (1.0 - share) / share)}")
    print(line, file=sys.stderr, flush=True)


def _clock(seconds: float) -> str:
  minutes, seconds = divmod(int(round(seconds)), 60)
  return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"
