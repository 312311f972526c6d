"""Distribution strategies for training, and what fit needs under them.

``escm2-train --distribution_strategy=NAME`` picks one of
``config.STRATEGIES``:

* ``default``: this process alone, on its first device.
* ``mirrored``: synchronous data parallelism over this machine's devices.
* ``multi_worker_mirrored``: synchronous data parallelism over the workers
  of ``TF_CONFIG`` (all run the same command); the chief (task ``chief:0``,
  or ``worker:0`` when there is no chief job) writes the run's outputs, the
  others write what a collective save needs into a temporary directory that
  is deleted afterwards.
* ``parameter_server``: asynchronous training; the ``chief`` task is the
  coordinator that runs ``fit`` and writes everything, ``worker`` and ``ps``
  tasks only serve. Large variables are split across the parameter servers
  (``MinSizePartitioner``), so an embedding table larger than one server's
  memory fits.

The cluster of ``TF_CONFIG``, this process's task in it, and the servers'
side are ``cluster``'s.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import collections
import contextlib
import re
import shutil
import tempfile
from typing import Any, Callable, Iterator

import tensorflow as tf
import tf_keras as keras

from escm2_tf import cluster as cluster_lib
from escm2_tf import config as config_lib

# The jobs of each cluster strategy that run ``train``.
_TRAINERS = {config_lib.MULTI_WORKER_MIRRORED: (cluster_lib.CHIEF,
                                                cluster_lib.WORKER),
             config_lib.PARAMETER_SERVER: (cluster_lib.CHIEF,)}
_SHARD_NAME = re.compile(r"^(.*)/part_(\d+):\d+$")

# Called with the keyword ``input_context``, as ``data.make_dataset`` is.
DatasetFn = Callable[..., tf.data.Dataset]


def make_strategy(strategy: str, task: cluster_lib.Task, *,
                  min_shard_bytes: int = config_lib.DEFAULT_MIN_SHARD_BYTES
                  ) -> tf.distribute.Strategy:
  """The strategy ``strategy`` for ``task`` (``cluster.check_task`` it first).

  Args:
    strategy: One of ``config_lib.STRATEGIES``.
    task: This process's task, from ``cluster.read_task``.
    min_shard_bytes: Under ``parameter_server``, a variable larger than
      this is split into ``min(servers, ceil(bytes / min_shard_bytes))``
      shards, one per server.

  Raises:
    cluster.ClusterError: TensorFlow has already started in this process, too late
      for a multi-worker strategy's collective ops; or this task does not
      run the trainer.
  """
  if strategy == config_lib.DEFAULT_STRATEGY:
    return tf.distribute.get_strategy()
  if strategy == config_lib.MIRRORED:
    return tf.distribute.MirroredStrategy()
  if task.task_type is not None and task.task_type not in _TRAINERS[strategy]:
    raise cluster_lib.tf_config_error(
        f"task {task} does not train under --distribution_strategy="
        f"{strategy}; start it with the same command and TF_CONFIG")
  resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
  if strategy == config_lib.MULTI_WORKER_MIRRORED:
    try:
      return tf.distribute.MultiWorkerMirroredStrategy(
          cluster_resolver=resolver)
    except RuntimeError as e:
      raise cluster_lib.ClusterError(
          f"--distribution_strategy={strategy} must be created before "
          f"TensorFlow runs anything in this process: {e}") from None
  cluster_lib.reserve_cluster_threads()
  partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
      min_shard_bytes=min_shard_bytes,
      max_shards=len(task.cluster[cluster_lib.PS]))
  return tf.distribute.ParameterServerStrategy(
      resolver, variable_partitioner=partitioner)


def needs_fixed_steps(strategy: tf.distribute.Strategy) -> bool:
  """Whether ``fit`` needs ``steps_per_epoch`` and endless input.

  Synchronous workers must take equally many steps (one running out of data
  first would leave the others waiting in a collective); the coordinator of
  parameter servers cannot see where the workers' input ends.
  """
  return isinstance(strategy, (tf.distribute.MultiWorkerMirroredStrategy,
                               tf.distribute.ParameterServerStrategy))


def distribute_dataset(strategy: tf.distribute.Strategy,
                       dataset_fn: DatasetFn) -> Any:
  """``fit``'s input: one pipeline per worker, each given its InputContext.

  Parameter-server ``fit`` builds the per-worker datasets itself from a
  ``DatasetCreator``; the mirrored strategies take a distributed dataset.
  """
  def with_context(context: tf.distribute.InputContext) -> tf.data.Dataset:
    return dataset_fn(input_context=context)

  if isinstance(strategy, tf.distribute.ParameterServerStrategy):
    return keras.utils.experimental.DatasetCreator(with_context)
  return strategy.distribute_datasets_from_function(with_context)


@contextlib.contextmanager
def writer_dir(path: str, task: cluster_lib.Task) -> Iterator[str]:
  """Where ``task`` writes what belongs in ``path``.

  The chief writes into ``path`` itself. Other workers of a synchronous
  strategy must still take part in collective saves, so they write into a
  private temporary directory, which is deleted on exit.
  """
  if task.is_chief:
    yield path
    return
  temporary = tempfile.mkdtemp(
      prefix=f"escm2-{task.task_type}-{task.task_id}-")
  try:
    yield temporary
  finally:
    shutil.rmtree(temporary, ignore_errors=True)


def variable_shards(variables: list[tf.Variable]
                    ) -> dict[str, list[tuple[tuple[int, ...], str]]]:
  """The partitioned variables: name to each shard's shape and device.

  A variable split by a partitioner appears as ``<name>/part_<i>`` shards;
  whole variables are left out.
  """
  shards = collections.defaultdict(list)
  for variable in variables:
    match = _SHARD_NAME.match(variable.name)
    if match:
      shards[match.group(1)].append(
          (int(match.group(2)), tuple(variable.shape.as_list()),
           variable.device))
  return {name: [(shape, device) for _, shape, device in sorted(parts)]
          for name, parts in sorted(shards.items())}
