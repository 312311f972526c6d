"""The cluster in TF_CONFIG: this process's task, its checks, and serving.

``TF_CONFIG`` is the JSON TensorFlow's ``TFConfigClusterResolver`` reads:
``{"cluster": {"worker": ["host:port", ...], ...}, "task": {"type": "worker",
"index": 0}}``. It is checked here first, so a malformed one is a
``ClusterError`` naming it rather than a hang. Under ``parameter_server`` the
``worker`` and ``ps`` tasks only serve (``is_server``, ``run_server``); the
strategies themselves are ``distribute``'s.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import dataclasses
import json
import os
from typing import Any, Mapping

import tensorflow as tf

from escm2_tf import config as config_lib
from escm2_tf import threads

TF_CONFIG = "TF_CONFIG"
CHIEF, WORKER, PS = "chief", "worker", "ps"
# The jobs each cluster strategy accepts.
_JOBS = {config_lib.MULTI_WORKER_MIRRORED: (CHIEF, WORKER),
         config_lib.PARAMETER_SERVER: (CHIEF, WORKER, PS)}
# gRPC then fails a call to a lost task at once, so the coordinator sees the
# loss and reschedules that worker's steps instead of waiting.
_FAIL_FAST = ("GRPC_FAIL_FAST", "use_caller")
# TensorFlow sizes a process's inter-op pool by its schedulable CPUs. A task
# of a parameter-server cluster with a pool of one thread hangs for ever: a
# step holds the thread while it waits for a remote tensor whose arrival needs
# another (seen with every task pinned to one core, e.g. `taskset -c 0`).
_INTER_OP_THREADS = "TF_NUM_INTEROP_THREADS"
_MIN_CLUSTER_INTER_OP_THREADS = 2


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


def tf_config_error(detail: str) -> ClusterError:
  """A ``ClusterError`` whose message names TF_CONFIG, then ``detail``."""
  return ClusterError(f"{TF_CONFIG}: {detail}")


def _parse_cluster(cluster: Any) -> dict[str, tuple[str, ...]]:
  if not isinstance(cluster, dict) or not cluster:
    raise tf_config_error(
        '"cluster" must map job names to lists of "host:port"')
  parsed = {}
  for job, addresses in cluster.items():
    if (not isinstance(addresses, list) or not addresses or not all(
        isinstance(a, str) and a.rpartition(":")[2].isdigit()
        for a in addresses)):
      raise tf_config_error(f'job {job!r} must list "host:port" addresses, '
                            f"got {addresses!r}")
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
    raise tf_config_error(f"not valid JSON ({e})") from None
  if not isinstance(content, dict):
    raise tf_config_error(f"must be a JSON object, got {text[:60]!r}")
  cluster = _parse_cluster(content.get("cluster"))
  task = content.get("task")
  if not isinstance(task, dict) or "type" not in task:
    raise tf_config_error('"task" must be {"type": JOB, "index": N}')
  task_type, task_id = task["type"], task.get("index", 0)
  if task_type not in cluster:
    raise tf_config_error(f"task type {task_type!r} is not a job of the "
                          f"cluster ({', '.join(cluster)})")
  if (isinstance(task_id, bool) or not isinstance(task_id, int)
      or not 0 <= task_id < len(cluster[task_type])):
    raise tf_config_error(f"task index {task_id!r} is not in 0..."
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
      raise tf_config_error(
          f"describes a cluster of {task.num_tasks} tasks, but "
          f"--distribution_strategy={strategy} trains in this process "
          f"alone; use {config_lib.MULTI_WORKER_MIRRORED} or "
          f"{config_lib.PARAMETER_SERVER}, "
          f"or unset {TF_CONFIG}")
    return
  unknown = sorted(set(task.cluster) - set(_JOBS[strategy]))
  if unknown:
    raise tf_config_error(f"job(s) {', '.join(unknown)} have no role under "
                          f"--distribution_strategy={strategy} (jobs: "
                          f"{', '.join(_JOBS[strategy])})")
  if strategy == config_lib.PARAMETER_SERVER:
    for job in _JOBS[config_lib.PARAMETER_SERVER]:
      if job not in task.cluster:
        raise tf_config_error(
            f"--distribution_strategy={config_lib.PARAMETER_SERVER} "
            f"needs a cluster with {CHIEF} (the coordinator), {WORKER} and "
            f"{PS} jobs; it has none for {job}")
    if len(task.cluster[CHIEF]) != 1:
      raise tf_config_error(f"the {CHIEF} job must have exactly one task")


def is_server(strategy: str, task: Task) -> bool:
  """Whether this task only serves the cluster (parameter-server training)."""
  return (strategy == config_lib.PARAMETER_SERVER
          and task.task_type in (WORKER, PS))


def reserve_cluster_threads() -> None:
  """Sets a parameter-server cluster task's environment for TensorFlow.

  gRPC's fail-fast (``_FAIL_FAST``) and, with one schedulable CPU, two
  inter-op threads. Call it before TensorFlow runs anything in this process
  (``run_server`` and ``distribute.make_strategy`` do); a value the user set
  wins.
  """
  os.environ.setdefault(*_FAIL_FAST)
  if threads.usable_cores() < _MIN_CLUSTER_INTER_OP_THREADS:
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
