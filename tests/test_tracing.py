"""Tests of escm2_tf.tracing: fit's steps traced ahead of fit."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import threading

from absl.testing import parameterized
import numpy as np
import tensorflow as tf
import tf_keras as keras

from escm2_tf import tracing


def _model(steps_per_execution: int = 1) -> keras.Model:
  inputs = keras.Input([3], name="x")
  model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
  model.compile(optimizer="adam", loss="mse",
                steps_per_execution=steps_per_execution)
  # As ESCM2Model.compile does: a step that created them would be traced
  # once to create them and once more to run.
  model.optimizer.build(model.trainable_variables)
  return model


def _data(batch_size: int = 4) -> tf.data.Dataset:
  rng = np.random.default_rng(0)
  x = rng.normal(size=(20, 3)).astype(np.float32)
  return tf.data.Dataset.from_tensor_slices(
      ({"x": x}, x.sum(axis=1, keepdims=True))).batch(batch_size)


class TraceStepsTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(1, 4)
  def test_fit_runs_the_traced_functions(self, steps_per_execution):
    model = _model(steps_per_execution)
    tracing.trace_steps(model, _data(), _data(5))
    self.assertEqual(model.train_tf_function.experimental_get_tracing_count(),
                     1)
    self.assertEqual(model.test_function.experimental_get_tracing_count(), 1)
    # Another dataset of the same element spec: the same traces serve it.
    model.fit(_data(), validation_data=_data(5), epochs=2, verbose=0)
    self.assertEqual(model.train_tf_function.experimental_get_tracing_count(),
                     1)
    self.assertEqual(model.test_function.experimental_get_tracing_count(), 1)

  def test_without_validation_only_the_training_step(self):
    model = _model()
    tracing.trace_steps(model, _data())
    self.assertIsNone(model.test_function)


class StepsTracedMeanwhileTest(tf.test.TestCase):

  def test_traced_when_the_block_ends(self):
    model = _model()
    with tracing.steps_traced_meanwhile(model, _data(), _data()):
      pass
    self.assertEqual(model.train_tf_function.experimental_get_tracing_count(),
                     1)
    self.assertEqual(model.test_function.experimental_get_tracing_count(), 1)

  def test_an_error_of_the_tracing_is_raised_at_the_end(self):
    wrong = tf.data.Dataset.from_tensors(({"y": tf.zeros([2, 3])},
                                          tf.zeros([2, 1])))
    with self.assertRaisesRegex(Exception, "x"):
      with tracing.steps_traced_meanwhile(_model(), wrong):
        pass

  def test_an_error_of_the_block_wins_and_the_thread_ends(self):
    before = threading.active_count()
    wrong = tf.data.Dataset.from_tensors(({"y": tf.zeros([2, 3])},
                                          tf.zeros([2, 1])))
    with self.assertRaisesRegex(KeyError, "counting failed"):
      with tracing.steps_traced_meanwhile(_model(), wrong):
        raise KeyError("counting failed")
    self.assertEqual(threading.active_count(), before)


if __name__ == "__main__":
  tf.test.main()
