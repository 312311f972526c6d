"""Early stopping that ends on the best epoch's weights, also after a kill.

Keras' ``EarlyStopping`` keeps its best value, wait count and best weights in
memory, and ``BackupAndRestore`` restores the model and the epoch after a kill
but not them: a resumed run would forget its best epoch, wait ``patience``
epochs afresh and end on weights it never validated as the best.
``ResumableEarlyStopping`` writes its state after every epoch into a small
JSON file (atomically: a temporary file, then a rename), keyed by epoch, and
reads it back when the run resumes. It restores the best weights at the end
from the checkpoint ``ModelCheckpoint`` wrote after the best epoch, so it
never holds a second copy of the weights (the embedding table of Ali-CCP runs
to gigabytes).
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import json
import math
import os
from typing import Any, Callable

import tensorflow as tf
import tf_keras as keras

from escm2_tf import layout

STATE_FILE = "early_stopping.json"


def monitor_mode(monitor: str) -> str:
  """``"max"`` for AUCs, ``"min"`` for losses."""
  return "max" if "auc" in monitor else "min"


def _fresh_state() -> dict[str, Any]:
  return {"best": None, "best_epoch": None, "wait": 0, "stopped": False}


class ResumableEarlyStopping(keras.callbacks.Callback):
  """Stops after ``patience`` epochs without improvement; ends on the best.

  Place it, and the ``ModelCheckpoint`` that writes ``checkpoint_path``,
  before ``BackupAndRestore`` among the callbacks, so that an epoch's state
  and weights are written before the epoch's backup; after a kill, the run
  resumes from the last backup with the state of that same epoch.

  Attributes:
    best_epoch: The best epoch so far (0-based), ``None`` before the first.
    best: Its value of ``monitor``.
    stopped_epoch: The epoch after which it stopped the run, or ``None``.
  """

  def __init__(self, monitor: str, patience: int, state_path: str,
               checkpoint_path: Callable[[int], str], *,
               write_state: bool = True, verbose: int = 0):
    """Creates the callback.

    Args:
      monitor: The ``logs`` key to watch (``val_loss``, ``val_auc_cvr``...).
      patience: Epochs without improvement before stopping; at least 1.
      state_path: The JSON file of the state, e.g. in the backup directory.
      checkpoint_path: Epoch (0-based) -> the weights saved after it.
      write_state: Whether this process writes the state (the chief does;
        every worker reads it).
      verbose: Print a line when stopping and when restoring.
    """
    super().__init__()
    if patience < 1:
      raise ValueError(f"patience must be at least 1, got {patience}.")
    self.monitor = monitor
    self.patience = patience
    self.state_path = state_path
    self.checkpoint_path = checkpoint_path
    self.write_state = write_state
    self.verbose = verbose
    self._greater = monitor_mode(monitor) == "max"
    self._history: dict[int, dict[str, Any]] = {}
    self._state: dict[str, Any] | None = None
    self._last_epoch: int | None = None
    self._stopped_before = False

  @property
  def best_epoch(self) -> int | None:
    return self._current()["best_epoch"]

  @property
  def best(self) -> float | None:
    return self._current()["best"]

  @property
  def stopped_epoch(self) -> int | None:
    state = self._current()
    return self._last_epoch if state["stopped"] else None

  def _current(self) -> dict[str, Any]:
    if self._state is not None:
      return self._state
    if self._history:
      return self._history[max(self._history)]
    return _fresh_state()

  def on_train_begin(self, logs=None):
    self._history = self._read()
    self._state = None
    self._stopped_before = False
    self._last_epoch = max(self._history) if self._history else None

  def on_epoch_begin(self, epoch, logs=None):
    if self._state is None:
      # The run restarts after its last backed-up epoch: what was recorded
      # for later epochs belongs to work that is being redone.
      self._history = {e: s for e, s in self._history.items() if e < epoch}
      self._state = dict(self._history.get(epoch - 1, _fresh_state()))
      # Killed after it had decided to stop: Keras runs one batch of this
      # epoch before it looks at stop_training; that batch counts for
      # nothing, and the run ends on the best epoch as it would have.
      self._stopped_before = self._state["stopped"]
      if self._stopped_before:
        self.model.stop_training = True

  def on_epoch_end(self, epoch, logs=None):
    value = (logs or {}).get(self.monitor)
    if value is None:
      raise KeyError(f"early stopping watches {self.monitor!r}, which the "
                     f"epoch's logs lack; they have {sorted(logs or {})}")
    state = self._state
    if self._stopped_before:
      self.model.stop_training = True
    elif self._improves(float(value), state["best"]):
      state.update(best=float(value), best_epoch=epoch, wait=0)
    else:
      state["wait"] += 1
      if state["wait"] >= self.patience:
        state["stopped"] = True
        self.model.stop_training = True
    self._history[epoch] = dict(state)
    self._last_epoch = epoch
    self._write()

  def on_train_end(self, logs=None):
    state = self._current()
    if state["stopped"] and self.verbose:
      print(f"Epoch {self._last_epoch + 1}: early stopping: {self.monitor} "
            f"did not improve for {self.patience} epoch(s)")
    best_epoch = state["best_epoch"]
    if best_epoch is not None and best_epoch != self._last_epoch:
      path = self.checkpoint_path(best_epoch)
      if self.verbose:
        print(f"Restoring the weights of the best epoch, {best_epoch + 1} "
              f"({self.monitor} {state['best']:.6g}), from {path}")
      restore_network(self.model, path)
    if self.write_state and tf.io.gfile.exists(self.state_path):
      tf.io.gfile.remove(self.state_path)

  def _improves(self, value: float, best: float | None) -> bool:
    if not math.isfinite(value):
      return False
    if best is None:
      return True
    return value > best if self._greater else value < best

  def _read(self) -> dict[int, dict[str, Any]]:
    if not tf.io.gfile.exists(self.state_path):
      return {}
    with tf.io.gfile.GFile(self.state_path) as f:
      content = json.load(f)
    if content.get("monitor") != self.monitor:
      return {}
    return {int(epoch): state for epoch, state in content["epochs"].items()}

  def _write(self) -> None:
    if not self.write_state:
      return
    content = {"monitor": self.monitor,
               "epochs": {str(e): s for e, s in sorted(self._history.items())}}
    tf.io.gfile.makedirs(os.path.dirname(self.state_path))
    layout.atomic_write(self.state_path, json.dumps(content, indent=1),
                        layout.GFileSystem(tf.io.gfile))


def restore_network(model: keras.Model, path: str) -> None:
  """Loads the network's weights of a checkpoint of the whole model.

  Only the network: the optimizer keeps its state (and step count), as
  Keras' ``restore_best_weights`` leaves it.
  """
  network = getattr(model, "network", None)
  if network is None:
    model.load_weights(path).expect_partial()
    return
  tf.train.Checkpoint(network=network).read(path).expect_partial(
  ).assert_existing_objects_matched()
