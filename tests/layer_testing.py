"""Checks of custom Keras layers, as keras-rs tests its layers."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import inspect
import json
from typing import Any

import tensorflow as tf
import tf_keras as keras


def assert_layer_serializes(test_case: tf.test.TestCase,
                            layer: keras.layers.Layer, inputs: Any,
                            **call_kwargs: Any) -> keras.layers.Layer:
  """Checks the keras-rs contract of a layer's ``get_config``.

  Every constructor argument is in the config; the config survives JSON and
  ``keras.layers.serialize``/``deserialize`` (so the class is registered);
  ``from_config`` gives a layer with an equal config and, given the same
  weights, equal outputs.

  Returns:
    The rebuilt layer.
  """
  config = layer.get_config()
  arguments = [name for name, parameter in inspect.signature(
      type(layer).__init__).parameters.items()
               if name != "self" and parameter.kind not in (
                   parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL)]
  test_case.assertContainsSubset(arguments, config)
  test_case.assertEqual(json.loads(json.dumps(config)), config)
  rebuilt = keras.layers.deserialize(keras.layers.serialize(layer))
  test_case.assertIs(type(rebuilt), type(layer))
  test_case.assertEqual(rebuilt.get_config(), config)
  expected = layer(inputs, **call_kwargs)
  rebuilt(inputs, **call_kwargs)  # Builds the weights.
  rebuilt.set_weights(layer.get_weights())
  test_case.assertAllClose(rebuilt(inputs, **call_kwargs), expected,
                           atol=0, rtol=0)
  return rebuilt
