"""Distribution strategies for training: a name and the cluster in TF_CONFIG.

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

``TF_CONFIG`` is the JSON TensorFlow's ``TFConfigClusterResolver`` reads:
``{"cluster": {"worker": ["host:port", ...], ...}, "task": {"type": "worker",
"index": 0}}``. It is checked here first, so a malformed one is a
``ClusterError`` naming it rather than a hang.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import collections
import contextlib
import dataclasses
import json
import os
import re
import shutil
import tempfile
from typing import Any, Callable, Iterator, Mapping

import tensorflow as tf
import tf_keras as keras

from escm2_tf import config as config_lib

TF_CONFIG = "TF_CONFIG"
CHIEF, WORKER, PS = "chief", "worker", "ps"
# The jobs each cluster strategy accepts, and which of them run ``train``.
_JOBS = {config_lib.MULTI_WORKER_MIRRORED: (CHIEF, WORKER),
         config_lib.PARAMETER_SERVER: (CHIEF, WORKER, PS)}
_TRAINERS = {config_lib.MULTI_WORKER_MIRRORED: (CHIEF, WORKER),
             config_lib.PARAMETER_SERVER: (CHIEF,)}
_SHARD_NAME = re.compile(r"^(.*)/part_(\d+):\d+$")
# gRPC then fails a call to a lost task at once, so the coordinator sees the
# loss and reschedules that worker's steps instead of waiting.
_FAIL_FAST = ("GRPC_FAIL_FAST", "use_caller")
# TensorFlow sizes a process's inter-op pool by its schedulable CPUs. A task
# of a parameter-server cluster with a pool of one thread hangs for ever: a
# step holds the thread while it waits for a remote tensor whose arrival needs
# another (seen with every task pinned to one core, e.g. `taskset -c 0`).
_INTER_OP_THREADS = "TF_NUM_INTEROP_THREADS"
_MIN_CLUSTER_INTER_OP_THREADS = 2

# Called with the keyword ``input_context``, as ``data.make_dataset`` is.
DatasetFn = Callable[..., tf.data.Dataset]


class ClusterError(ValueError):
  """TF_CONFIG is malformed or does not fit the strategy (says which)."""


@dataclasses.dataclass(frozen=True)
class Task:
  """This process's place in the cluster that TF_CONFIG describes.

  Attributes:
    cluster: Job name to its tasks' addresses; empty without TF_CONFIG.
    task_type: This task's job, ``None`` without TF_CONFIG.
    task_id: This task's index in its job.
  """
  cluster: Mapping[str, tuple[str, ...]] = dataclasses.field(
      default_factory=dict)
  task_type: str | None = None
  task_id: int = 0

  @property
  def is_chief(self) -> bool:
    """Whether this task writes checkpoints, logs, metrics and exports."""
    if self.task_type in (None, CHIEF):
      return True
    return (self.task_type == WORKER and self.task_id == 0
            and CHIEF not in self.cluster)

  @property
  def num_tasks(self) -> int:
    return sum(len(addresses) for addresses in self.cluster.values())

  def __str__(self) -> str:
    return f"{self.task_type or 'local'}:{self.task_id}"


def _fail(detail: str) -> ClusterError:
  return ClusterError(f"{TF_CONFIG}: {detail}")


def _parse_cluster(cluster: Any) -> dict[str, tuple[str, ...]]:
  if not isinstance(cluster, dict) or not cluster:
    raise _fail('"cluster" must map job names to lists of "host:port"')
  parsed = {}
  for job, addresses in cluster.items():
    if (not isinstance(addresses, list) or not addresses or not all(
        isinstance(a, str) and a.rpartition(":")[2].isdigit()
        for a in addresses)):
      raise _fail(f'job {job!r} must list "host:port" addresses, got '
                  f"{addresses!r}")
    parsed[job] = tuple(addresses)
  return parsed


def read_task(environ: Mapping[str, str] = os.environ) -> Task:
  """This process's task, from ``environ["TF_CONFIG"]`` (absent: local).

  Raises:
    ClusterError: TF_CONFIG is not JSON, lacks its cluster or task, or names
      a task that is not in the cluster.
  """
  text = environ.get(TF_CONFIG, "").strip()
  if not text:
    return Task()
  try:
    content = json.loads(text)
  except json.JSONDecodeError as e:
    raise _fail(f"not valid JSON ({e})") from None
  if not isinstance(content, dict):
    raise _fail(f"must be a JSON object, got {text[:60]!r}")
  cluster = _parse_cluster(content.get("cluster"))
  task = content.get("task")
  if not isinstance(task, dict) or "type" not in task:
    raise _fail('"task" must be {"type": JOB, "index": N}')
  task_type, task_id = task["type"], task.get("index", 0)
  if task_type not in cluster:
    raise _fail(f"task type {task_type!r} is not a job of the cluster "
                f"({', '.join(cluster)})")
  if (isinstance(task_id, bool) or not isinstance(task_id, int)
      or not 0 <= task_id < len(cluster[task_type])):
    raise _fail(f"task index {task_id!r} is not in 0..."
                f"{len(cluster[task_type]) - 1} of job {task_type!r}")
  return Task(cluster, task_type, task_id)


def check_task(strategy: str, task: Task) -> None:
  """Fails unless ``task``'s cluster is one ``strategy`` can run on.

  Raises:
    ClusterError: An unknown strategy, a multi-task cluster for a
      single-machine strategy, a job the strategy has no use for, or a
      parameter-server cluster without its chief, worker and ps jobs.
  """
  if strategy not in config_lib.STRATEGIES:
    raise ClusterError(f"--distribution_strategy must be one of "
                       f"{', '.join(config_lib.STRATEGIES)}, got {strategy!r}")
  if strategy in (config_lib.DEFAULT_STRATEGY, config_lib.MIRRORED):
    if task.num_tasks > 1:
      raise _fail(f"describes a cluster of {task.num_tasks} tasks, but "
                  f"--distribution_strategy={strategy} trains in this process "
                  f"alone; use {config_lib.MULTI_WORKER_MIRRORED} or "
                  f"{config_lib.PARAMETER_SERVER}, "
                  f"or unset {TF_CONFIG}")
    return
  unknown = sorted(set(task.cluster) - set(_JOBS[strategy]))
  if unknown:
    raise _fail(f"job(s) {', '.join(unknown)} have no role under "
                f"--distribution_strategy={strategy} (jobs: "
                f"{', '.join(_JOBS[strategy])})")
  if strategy == config_lib.PARAMETER_SERVER:
    for job in _JOBS[config_lib.PARAMETER_SERVER]:
      if job not in task.cluster:
        raise _fail(f"--distribution_strategy={config_lib.PARAMETER_SERVER} "
                    f"needs a cluster with {CHIEF} (the coordinator), {WORKER} and "
                    f"{PS} jobs; it has none for {job}")
    if len(task.cluster[CHIEF]) != 1:
      raise _fail(f"the {CHIEF} job must have exactly one task")


def is_server(strategy: str, task: Task) -> bool:
  """Whether this task only serves the cluster (parameter-server training)."""
  return (strategy == config_lib.PARAMETER_SERVER
          and task.task_type in (WORKER, PS))


def reserve_cluster_threads() -> None:
  """Sets a parameter-server cluster task's environment for TensorFlow.

  gRPC's fail-fast (``_FAIL_FAST``) and, with one schedulable CPU, two
  inter-op threads. Call it before TensorFlow runs anything in this process
  (``run_server`` and ``make_strategy`` do); a value the user set wins.
  """
  os.environ.setdefault(*_FAIL_FAST)
  cpus = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
          else os.cpu_count() or 1)
  if cpus < _MIN_CLUSTER_INTER_OP_THREADS:
    os.environ.setdefault(_INTER_OP_THREADS,
                          str(_MIN_CLUSTER_INTER_OP_THREADS))


def run_server(task: Task) -> None:
  """Serves as ``task`` of a parameter-server cluster; does not return."""
  reserve_cluster_threads()
  server = tf.distribute.Server(
      tf.train.ClusterSpec({job: list(a) for job, a in task.cluster.items()}),
      job_name=task.task_type, task_index=task.task_id, protocol="grpc",
      start=True)
  server.join()


def make_strategy(strategy: str, task: Task, *,
                  min_shard_bytes: int = config_lib.DEFAULT_MIN_SHARD_BYTES
                  ) -> tf.distribute.Strategy:
  """The strategy ``strategy`` for ``task`` (``check_task`` it first).

  Args:
    strategy: One of ``config_lib.STRATEGIES``.
    task: This process's task, from ``read_task``.
    min_shard_bytes: Under ``parameter_server``, a variable larger than
      this is split into ``min(servers, ceil(bytes / min_shard_bytes))``
      shards, one per server.

  Raises:
    ClusterError: TensorFlow has already started in this process, too late
      for a multi-worker strategy's collective ops; or this task does not
      run the trainer.
  """
  if strategy == config_lib.DEFAULT_STRATEGY:
    return tf.distribute.get_strategy()
  if strategy == config_lib.MIRRORED:
    return tf.distribute.MirroredStrategy()
  if task.task_type is not None and task.task_type not in _TRAINERS[strategy]:
    raise _fail(f"task {task} does not train under --distribution_strategy="
                f"{strategy}; start it with the same command and TF_CONFIG")
  resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
  if strategy == config_lib.MULTI_WORKER_MIRRORED:
    try:
      return tf.distribute.MultiWorkerMirroredStrategy(
          cluster_resolver=resolver)
    except RuntimeError as e:
      raise ClusterError(
          f"--distribution_strategy={strategy} must be created before "
          f"TensorFlow runs anything in this process: {e}") from None
  reserve_cluster_threads()
  partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
      min_shard_bytes=min_shard_bytes, max_shards=len(task.cluster[PS]))
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
def writer_dir(path: str, task: Task) -> Iterator[str]:
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
