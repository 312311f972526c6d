"""Tests of escm2_tf.optimizers against a numpy reference of Adam."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import os
import shutil
import tempfile

from absl.testing import parameterized
import numpy as np
import tensorflow as tf
import tf_keras as keras

from escm2_tf import config as config_lib
from escm2_tf import optimizers

_LR, _BETA_1, _BETA_2, _EPSILON = 0.01, 0.9, 0.999, 1e-7


def _f32(value: float) -> float:
  """``value`` rounded to float32, as the optimizer computes its constants.

  In float32, 1 - 0.999 is off by 1e-5 relative to the float64 value.
  """
  return float(np.float32(value))


class _RowAdam:
  """numpy reference: Adam applied row by row to the rows of each step."""

  def __init__(self, table: np.ndarray):
    self.table = table.astype(np.float64)
    self.m = np.zeros_like(self.table)
    self.v = np.zeros_like(self.table)
    self.step = 0

  def apply(self, indices: np.ndarray, values: np.ndarray) -> None:
    self.step += 1
    gradient = {}
    for index, value in zip(indices, values):
      gradient[index] = gradient.get(index, 0.0) + value
    beta_1, beta_2 = _f32(_BETA_1), _f32(_BETA_2)
    alpha = (_LR * np.sqrt(1 - beta_2**self.step) /
             (1 - beta_1**self.step))
    for index, g in gradient.items():
      self.m[index] = beta_1 * self.m[index] + _f32(1 - np.float32(beta_1)) * g
      self.v[index] = (beta_2 * self.v[index] +
                       _f32(1 - np.float32(beta_2)) * g * g)
      self.table[index] -= alpha * self.m[index] / (
          np.sqrt(self.v[index]) + _EPSILON)


def _lazy_adam() -> optimizers.LazyAdam:
  return optimizers.LazyAdam(_LR, beta_1=_BETA_1, beta_2=_BETA_2,
                             epsilon=_EPSILON)


class LazyAdamTest(tf.test.TestCase, parameterized.TestCase):

  def test_sparse_steps_match_the_row_wise_reference(self):
    rng = np.random.default_rng(0)
    initial = rng.normal(size=(10, 3)).astype(np.float32)
    table = tf.Variable(initial)
    optimizer = _lazy_adam()
    reference = _RowAdam(initial)
    # Row 1 appears twice in the first step; rows 0 and 7 only in the first;
    # rows 5, 6, 8, 9 never.
    steps = [[1, 0, 1, 7], [2, 3], [1, 4, 2]]
    touched = set()
    for indices in steps:
      values = rng.normal(size=(len(indices), 3)).astype(np.float32)
      optimizer.apply_gradients([(tf.IndexedSlices(
          tf.constant(values), tf.constant(indices, tf.int64),
          tf.constant([10, 3], tf.int64)), table)])
      reference.apply(np.array(indices), values)
      touched.update(indices)
      self.assertAllClose(table.numpy(), reference.table, rtol=1e-5,
                          atol=1e-6)
    untouched = sorted(set(range(10)) - touched)
    self.assertEqual(untouched, [5, 6, 8, 9])
    self.assertAllEqual(table.numpy()[untouched], initial[untouched])
    m = optimizer._momentums[0].numpy()  # pylint: disable=protected-access
    v = optimizer._velocities[0].numpy()  # pylint: disable=protected-access
    self.assertAllClose(m, reference.m, rtol=1e-5, atol=1e-7)
    self.assertAllClose(v, reference.v, rtol=1e-5, atol=1e-9)
    self.assertAllEqual(m[untouched], np.zeros((4, 3)))

  def test_rows_left_out_stop_moving_unlike_dense_adam(self):
    initial = np.ones((4, 2), np.float32)
    gradients = [([0, 1], np.ones((2, 2), np.float32)),
                 ([1], np.ones((1, 2), np.float32))]
    results = {}
    for name, optimizer in (("lazy", _lazy_adam()),
                            ("dense", keras.optimizers.Adam(
                                _LR, jit_compile=False))):
      table = tf.Variable(initial)
      after_first = None
      for indices, values in gradients:
        optimizer.apply_gradients([(tf.IndexedSlices(
            tf.constant(values), tf.constant(indices, tf.int64),
            tf.constant([4, 2], tf.int64)), table)])
        after_first = table.numpy() if after_first is None else after_first
      results[name] = (after_first, table.numpy())
    lazy_first, lazy_last = results["lazy"]
    dense_first, dense_last = results["dense"]
    # Row 0 is in the first step only: the lazy update leaves it there, the
    # dense one keeps applying its momentum.
    self.assertAllEqual(lazy_last[0], lazy_first[0])
    self.assertNotAllClose(dense_last[0], dense_first[0])
    # Rows present in every step get the same update from both.
    self.assertAllClose(lazy_last[1], dense_last[1], rtol=1e-6)

  def test_catch_up_follows_dense_adam(self):
    rng = np.random.default_rng(3)
    initial = rng.normal(size=(12, 3)).astype(np.float32)
    steps = []
    for _ in range(40):
      indices = np.unique(rng.choice(12, size=4))
      steps.append((indices, rng.normal(size=(len(indices), 3))))
    # A last step with every row: each catches up on its absence.
    steps.append((np.arange(12), rng.normal(size=(12, 3))))
    tables = {}
    for name, optimizer in (
        ("sparse", optimizers.make_optimizer("sparse_adam", _LR)),
        ("dense", keras.optimizers.Adam(_LR, jit_compile=False)),
        ("lazy", optimizers.make_optimizer("lazy_adam", _LR))):
      table = tf.Variable(initial)
      optimizer.build([table])
      # Late in training the bias correction hardly changes from step to
      # step, as the catch-up assumes.
      optimizer.iterations.assign(10_000)
      for indices, values in steps:
        optimizer.apply_gradients([(tf.IndexedSlices(
            tf.constant(values, tf.float32), tf.constant(indices, tf.int64),
            tf.constant([12, 3], tf.int64)), table)])
      tables[name] = table.numpy() - initial
    self.assertAllClose(tables["sparse"], tables["dense"], rtol=1e-3,
                        atol=1e-6)
    self.assertNotAllClose(tables["lazy"], tables["dense"], rtol=1e-2)

  def test_repeated_indices_of_higher_rank_rows_are_summed(self):
    rng = np.random.default_rng(2)
    initial = rng.normal(size=(4, 2, 3)).astype(np.float32)
    values = rng.normal(size=(3, 2, 3)).astype(np.float32)
    repeated, summed = tf.Variable(initial), tf.Variable(initial)
    _lazy_adam().apply_gradients([(tf.IndexedSlices(
        tf.constant(values), tf.constant([2, 0, 2], tf.int64),
        tf.constant([4, 2, 3], tf.int64)), repeated)])
    _lazy_adam().apply_gradients([(tf.IndexedSlices(
        tf.constant(np.stack([values[0] + values[2], values[1]])),
        tf.constant([2, 0], tf.int64), tf.constant([4, 2, 3], tf.int64)),
                                   summed)])
    self.assertAllClose(repeated, summed, rtol=1e-6)
    self.assertAllEqual(repeated.numpy()[[1, 3]], initial[[1, 3]])

  def test_dense_gradients_get_keras_adam_update(self):
    rng = np.random.default_rng(1)
    initial = rng.normal(size=(5, 4)).astype(np.float32)
    lazy_var, dense_var = tf.Variable(initial), tf.Variable(initial)
    lazy = _lazy_adam()
    dense = keras.optimizers.Adam(_LR, beta_1=_BETA_1, beta_2=_BETA_2,
                                  epsilon=_EPSILON, jit_compile=False)
    for _ in range(3):
      gradient = tf.constant(rng.normal(size=(5, 4)).astype(np.float32))
      lazy.apply_gradients([(gradient, lazy_var)])
      dense.apply_gradients([(gradient, dense_var)])
    self.assertAllClose(lazy_var, dense_var, rtol=1e-6)
    self.assertNotAllClose(lazy_var, initial)

  def test_works_inside_tf_function_with_varying_row_counts(self):
    table = tf.Variable(tf.zeros([6, 2]))
    optimizer = _lazy_adam()

    @tf.function
    def step(indices):
      values = tf.ones([tf.size(indices), 2])
      optimizer.apply_gradients([(tf.IndexedSlices(
          values, indices, tf.constant([6, 2], tf.int64)), table)])

    step(tf.constant([0, 1], tf.int64))
    step(tf.constant([2, 2, 3], tf.int64))
    moved = np.any(table.numpy() != 0, axis=1)
    self.assertAllEqual(moved, [True, True, True, True, False, False])

  def test_checkpoint_slots_are_compatible_with_keras_adam(self):
    directory = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, directory)
    table = tf.Variable(tf.ones([3, 2]))
    adam = keras.optimizers.Adam(_LR)
    adam.apply_gradients([(tf.IndexedSlices(
        tf.ones([1, 2]), tf.constant([1], tf.int64),
        tf.constant([3, 2], tf.int64)), table)])
    path = tf.train.Checkpoint(optimizer=adam, table=table).save(
        os.path.join(directory, "ckpt"))
    lazy = _lazy_adam()
    restored_table = tf.Variable(tf.zeros([3, 2]))
    lazy.build([restored_table])
    status = tf.train.Checkpoint(optimizer=lazy, table=restored_table
                                 ).restore(path)
    status.assert_existing_objects_matched()
    self.assertAllClose(lazy._momentums[0], adam._momentums[0])  # pylint: disable=protected-access
    self.assertEqual(int(lazy.iterations), 1)

  @parameterized.parameters(("amsgrad", True), ("adaptive_epsilon", True),
                            ("jit_compile", True), ("weight_decay", 0.01))
  def test_refuses_unsupported_options(self, option, value):
    with self.assertRaisesRegex(ValueError, option):
      optimizers.LazyAdam(**{option: value})

  def test_config_round_trip(self):
    restored = optimizers.LazyAdam.from_config(
        optimizers.LazyAdam(0.02, beta_2=0.99).get_config())
    self.assertIsInstance(restored, optimizers.LazyAdam)
    self.assertAllClose(float(restored.learning_rate), 0.02)
    self.assertEqual(restored.beta_2, 0.99)


class MakeOptimizerTest(tf.test.TestCase):

  def test_names(self):
    lazy = optimizers.make_optimizer("lazy_adam", 0.002)
    self.assertIsInstance(lazy, optimizers.LazyAdam)
    self.assertAllClose(float(lazy.learning_rate), 0.002)
    adam = optimizers.make_optimizer("adam", 0.003)
    self.assertIsInstance(adam, keras.optimizers.Adam)
    self.assertNotIsInstance(adam, optimizers.LazyAdam)
    sparse = optimizers.make_optimizer("sparse_adam", 0.004)
    self.assertIsInstance(sparse, optimizers.LazyAdam)
    self.assertTrue(sparse.catch_up)
    self.assertFalse(lazy.catch_up)
    self.assertEqual(set(config_lib.OPTIMIZERS),
                     {"adam", "lazy_adam", "sparse_adam"})

  def test_errors_name_the_problem(self):
    with self.assertRaisesRegex(ValueError, "sgd"):
      optimizers.make_optimizer("sgd", 0.1)
    with self.assertRaisesRegex(ValueError, "learning_rate"):
      optimizers.make_optimizer("adam", 0.0)


if __name__ == "__main__":
  tf.test.main()
