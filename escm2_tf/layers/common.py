"""What the multi-task layers share: seeds, initialisers, a base class."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

from typing import Any

import numpy as np
import tf_keras as keras


def stacked_glorot(fan_in: int, fan_out: int, seed: int | None
                   ) -> keras.initializers.Initializer:
  """Glorot-uniform for a stack of [fan_in, fan_out] kernels.

  Keras' GlorotUniform would count the stack dimension into the fans and
  shrink every kernel by its square root.
  """
  limit = float(np.sqrt(6.0 / (fan_in + fan_out)))
  return keras.initializers.RandomUniform(-limit, limit, seed=seed)


def offset_seed(seed: int | None, offset: int) -> int | None:
  """A distinct seed per initialiser or dropout; None stays None."""
  return None if seed is None else seed + offset


class TaskLayer(keras.layers.Layer):
  """What ``MMoE`` and ``TaskTowers`` share: tasks, activation, dropout, seed.

  ``seed`` seeds the dropout (``seed + 1``) and the subclass's kernels.
  """

  def __init__(self, num_tasks: int, *, activation: str, dropout: float,
               seed: int | None, **kwargs):
    super().__init__(**kwargs)
    self.num_tasks = num_tasks
    self.activation = keras.activations.get(activation)
    self.dropout_rate = dropout
    self.dropout = keras.layers.Dropout(dropout, seed=offset_seed(seed, 1))
    self.seed = seed

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(), "num_tasks": self.num_tasks,
            "activation": keras.activations.serialize(self.activation),
            "dropout": self.dropout_rate, "seed": self.seed}
