"""A run that diverges fails, and keeps its last good epoch.

Keras' ``TerminateOnNaN`` ends ``fit`` quietly; the callbacks here raise
``TrainingDivergedError`` at the end of the epoch instead, before the
callbacks that save it, so a run's checkpoints and backup never hold the
broken weights.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import math

import tf_keras as keras


class TrainingDivergedError(RuntimeError):
  """The loss became NaN or infinite; training stopped."""


class StopOnNaN(keras.callbacks.TerminateOnNaN):
  """TerminateOnNaN that also fails the run.

  TerminateOnNaN alone ends ``fit`` quietly, after which the epoch's
  checkpoint and backup would store the broken weights. Raising in
  ``on_epoch_end``, before the callbacks that save, keeps the last good epoch.
  """

  def __init__(self):
    super().__init__()
    self._bad_batch = None

  def on_batch_end(self, batch, logs=None):
    already_stopping = self.model.stop_training
    super().on_batch_end(batch, logs)
    if self.model.stop_training and not already_stopping:
      self._bad_batch = batch

  def on_epoch_end(self, epoch, logs=None):
    if self._bad_batch is not None:
      raise TrainingDivergedError(
          f"the training loss became NaN or infinite in epoch {epoch + 1} "
          f"(batch {self._bad_batch}); try a lower learning rate")


class StopOnNaNLoss(keras.callbacks.Callback):
  """The NaN stop for parameter servers, where ``fit`` allows no batch hooks.

  An epoch's mean loss is NaN or infinite when any of its batches' was; this
  raises before the callbacks that save, as ``StopOnNaN`` does.
  """

  def on_epoch_end(self, epoch, logs=None):
    loss = (logs or {}).get("loss")
    if loss is not None and not math.isfinite(loss):
      raise TrainingDivergedError(
          f"the training loss became NaN or infinite in epoch {epoch + 1}; "
          "try a lower learning rate")


def stop_on_nan(parameter_server: bool = False) -> keras.callbacks.Callback:
  """The NaN stop for a run, with or without parameter servers."""
  return StopOnNaNLoss() if parameter_server else StopOnNaN()
