"""TensorFlow's thread pools: settings of the whole process.

TensorFlow's thread pools let a worker that runs out of work spin for a
while before it sleeps, so that the next op starts without a wake-up. On a
machine with few cores, or cores shared with other jobs, that spinning is
CPU time taken from the input pipeline and the training step: with
``configs/paddlerec.flags`` it is about a tenth of the trainer's CPU
(docs/benchmarks.md). Whether threads spin is read once, when TensorFlow
starts its runtime (its first op, its first device query), and holds for the
rest of the process.

TensorFlow 2 offers no public call for it: ``set_thread_spinning`` sets the
field of the eager context's ``ConfigProto`` that its thread pools read,
``experimental.disable_thread_spinning``, before the runtime starts, as
``tf.config.threading``'s setters do for the pools' sizes.

The intra-op pool runs the parallel parts of one kernel. TensorFlow sizes it
to every core, as tf.data does its own pool, so on a small machine the
training step and the input pipeline that feeds it compete for the same
cores, each ready to use all of them. Streaming from TFRecords, the input
pipeline costs about as much CPU as the step (docs/benchmarks.md), and the
step's kernels are small (batches of 1024 through layers of 8-16 units), so
``default_intra_op_threads`` gives the step half of the cores.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import os

from absl import logging
import tensorflow as tf

from escm2_tf import config as config_lib
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.eager import context


def thread_spinning() -> bool:
  """Whether the process's thread pools spin (or will, once started)."""
  config = context.context().config
  return not config.experimental.disable_thread_spinning


def set_thread_spinning(spinning: bool) -> bool:
  """Lets the thread pools spin, or not, if TensorFlow has not started yet.

  Args:
    spinning: TensorFlow's default is True.

  Returns:
    Whether the process now has ``spinning``: False when TensorFlow had
    already started with the other setting, which then stays (and is
    logged).
  """
  if thread_spinning() == spinning:
    return True
  eager = context.context()
  # pylint: disable=protected-access
  if eager._initialized:
    logging.warning(
        "TensorFlow's threads %s: its runtime started before the setting "
        "could change.", "do not spin" if spinning else "still spin")
    return False
  config = config_pb2.ConfigProto()
  if eager._config is not None:
    config.CopyFrom(eager._config)
  config.experimental.disable_thread_spinning = not spinning
  eager._config = config
  # pylint: enable=protected-access
  return True


def usable_cores() -> int:
  """The cores this process may run on (its CPU affinity), at least 1."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0)) or 1
  return os.cpu_count() or 1


def default_intra_op_threads() -> int:
  """Half of the cores this process may run on (at least 1)."""
  return max(1, usable_cores() // 2)


def set_intra_op_threads(count: int) -> bool:
  """Sizes the intra-op pool, if TensorFlow has not started yet.

  Args:
    count: Threads of the pool; 0 for ``default_intra_op_threads``.

  Returns:
    Whether the pool now has that size: False when TensorFlow had already
    started with another size, which then stays (and is logged).
  """
  count = count or default_intra_op_threads()
  if tf.config.threading.get_intra_op_parallelism_threads() == count:
    return True
  try:
    tf.config.threading.set_intra_op_parallelism_threads(count)
  except RuntimeError:
    logging.warning(
        "TensorFlow's intra-op pool keeps its size: its runtime started "
        "before it could be set to %d threads.", count)
    return False
  return True


def apply_runtime(runtime: config_lib.RuntimeConfig) -> None:
  """Gives the process ``runtime``'s thread settings, as escm2-train does.

  Call it before anything starts TensorFlow's runtime, which reads them once;
  a setting that comes too late is logged and the runtime's stays.
  """
  set_thread_spinning(runtime.thread_spinning)
  set_intra_op_threads(runtime.intra_op_threads)
