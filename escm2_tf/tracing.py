"""Tracing ``fit``'s steps ahead of ``fit``, while the trainer does other work.

Keras traces a model's training step the first time ``fit`` calls it, and
its validation step at the end of the first epoch: for the MMoE of
``configs/paddlerec.flags`` that is about a second of Python (some 3,600
ops), all of it inside the first epoch. The trainer knows the structure of
its batches before it starts: ``steps_traced_meanwhile`` traces both steps
from the datasets' element specs in a background thread while the trainer
counts the records (a TensorFlow op that releases the GIL). ``fit`` finds
the traced functions (``make_train_function`` returns the model's existing
one, whose trace is keyed by the iterator's spec) and runs them without
tracing again.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import contextlib
import threading
from typing import Iterator

import tensorflow as tf
import tf_keras as keras


def trace_steps(model: keras.Model, training: tf.data.Dataset,
                validation: tf.data.Dataset | None = None) -> None:
  """Traces ``model``'s training (and validation) function for the data.

  Args:
    model: A compiled model, built (its variables and its optimizer's
      exist), under the strategy that ``fit`` will run it in.
    training: The batches ``fit`` will train on, or any dataset with their
      element spec.
    validation: The batches ``fit`` will validate on, if any.
  """
  model.make_train_function().get_concrete_function(
      tf.data.IteratorSpec(training.element_spec))
  if validation is not None:
    model.make_test_function().get_concrete_function(
        tf.data.IteratorSpec(validation.element_spec))


@contextlib.contextmanager
def steps_traced_meanwhile(model: keras.Model, training: tf.data.Dataset,
                           validation: tf.data.Dataset | None = None
                           ) -> Iterator[None]:
  """Runs ``trace_steps`` in a thread while the ``with`` block runs.

  The block's end waits for the tracing. An error of the tracing (one that
  ``fit`` would have raised at its first step) is raised there, unless the
  block raised first.

  Args:
    model: As for ``trace_steps``.
    training: As for ``trace_steps``.
    validation: As for ``trace_steps``.

  Yields:
    Nothing; the block runs beside the tracing.
  """
  errors = []

  def trace():
    try:
      trace_steps(model, training, validation)
    except Exception as error:  # pylint: disable=broad-except
      errors.append(error)

  thread = threading.Thread(target=trace, name="escm2-trace-steps",
                            daemon=True)
  thread.start()
  try:
    yield
  finally:
    thread.join()
  if errors:
    raise errors[0]
