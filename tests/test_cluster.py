"""Tests of escm2_tf.cluster: TF_CONFIG parsing and checks, and the threads.

Everything here runs in this process; the other tests of a cluster's task
(its strategy, where it writes, the command line's errors) are in
test_distribute.py, the multi-process runs in test_multiworker.py.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import json
import os
import re
from unittest import mock

from absl.testing import parameterized
import tensorflow as tf

from escm2_tf import cluster as cluster_lib

WORKERS = {"worker": ["localhost:1111", "localhost:1112"]}
PS_CLUSTER = {"chief": ["localhost:1110"], "worker": ["localhost:1111"],
              "ps": ["localhost:1112", "localhost:1113"]}


def tf_config(cluster, task_type, index=0) -> dict[str, str]:
  return {cluster_lib.TF_CONFIG: json.dumps(
      {"cluster": cluster, "task": {"type": task_type, "index": index}})}


def task(cluster, task_type, index=0) -> cluster_lib.Task:
  return cluster_lib.read_task(tf_config(cluster, task_type, index))


class ReadTaskTest(tf.test.TestCase, parameterized.TestCase):

  def test_without_tf_config_the_process_is_a_local_chief(self):
    local = cluster_lib.read_task({})
    self.assertEqual((local.task_type, local.num_tasks), (None, 0))
    self.assertTrue(local.is_chief)
    self.assertEqual(str(local), "local:0")

  def test_reads_the_cluster_and_task(self):
    worker = task(PS_CLUSTER, "ps", 1)
    self.assertEqual((worker.task_type, worker.task_id, worker.num_tasks),
                     ("ps", 1, 4))
    self.assertEqual(worker.cluster["ps"], tuple(PS_CLUSTER["ps"]))

  @parameterized.named_parameters(
      ("not_json", "{cluster", "not valid JSON"),
      ("not_an_object", "[1, 2]", "must be a JSON object"),
      ("no_cluster", '{"task": {"type": "worker"}}', '"cluster" must map'),
      ("bad_address", '{"cluster": {"worker": ["localhost"]}, "task": '
       '{"type": "worker"}}', "job 'worker' must list"),
      ("no_task", '{"cluster": {"worker": ["h:1"]}}', '"task" must be'),
      ("unknown_type", '{"cluster": {"worker": ["h:1"]}, "task": '
       '{"type": "ps", "index": 0}}', "task type 'ps' is not a job"),
      ("index_out_of_range", '{"cluster": {"worker": ["h:1"]}, "task": '
       '{"type": "worker", "index": 1}}', "task index 1 is not in 0...0"))
  def test_rejects(self, text, pattern):
    with self.assertRaisesRegex(cluster_lib.ClusterError,
                                f"^TF_CONFIG: .*{re.escape(pattern)}"):
      cluster_lib.read_task({cluster_lib.TF_CONFIG: text})

  @parameterized.parameters(
      ({"chief": ["h:1"], "worker": ["h:2"]}, "chief", 0, True),
      ({"chief": ["h:1"], "worker": ["h:2"]}, "worker", 0, False),
      (WORKERS, "worker", 0, True),
      (WORKERS, "worker", 1, False),
      (PS_CLUSTER, "ps", 0, False))
  def test_chief(self, cluster, task_type, index, is_chief):
    self.assertEqual(task(cluster, task_type, index).is_chief, is_chief)


class CheckTaskTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(
      ("default", {}, None),
      ("mirrored", {"chief": ["h:1"]}, "chief"),
      ("multi_worker_mirrored", WORKERS, "worker"),
      ("multi_worker_mirrored", {}, None),
      ("parameter_server", PS_CLUSTER, "chief"),
      ("parameter_server", PS_CLUSTER, "ps"))
  def test_accepts(self, strategy, cluster, task_type):
    this = task(cluster, task_type) if cluster else cluster_lib.Task()
    cluster_lib.check_task(strategy, this)

  @parameterized.named_parameters(
      ("unknown_strategy", "horovod", {}, None, "must be one of"),
      ("cluster_for_one_process", "default", WORKERS, "worker",
       "describes a cluster of 2 tasks"),
      ("ps_job_without_ps_strategy", "multi_worker_mirrored", PS_CLUSTER,
       "worker", "job(s) ps have no role"),
      ("ps_strategy_without_cluster", "parameter_server", {}, None,
       "it has none for chief"),
      ("ps_strategy_without_ps", "parameter_server",
       {"chief": ["h:1"], "worker": ["h:2"]}, "chief", "it has none for ps"),
      ("two_coordinators", "parameter_server",
       {**PS_CLUSTER, "chief": ["h:1", "h:2"]}, "chief",
       "exactly one task"))
  def test_rejects(self, strategy, cluster, task_type, pattern):
    this = task(cluster, task_type) if cluster else cluster_lib.Task()
    with self.assertRaisesRegex(cluster_lib.ClusterError, re.escape(pattern)):
      cluster_lib.check_task(strategy, this)

  def test_only_parameter_server_workers_and_servers_serve(self):
    self.assertTrue(cluster_lib.is_server("parameter_server",
                                          task(PS_CLUSTER, "worker")))
    self.assertTrue(cluster_lib.is_server("parameter_server",
                                          task(PS_CLUSTER, "ps", 1)))
    self.assertFalse(cluster_lib.is_server("parameter_server",
                                           task(PS_CLUSTER, "chief")))
    self.assertFalse(cluster_lib.is_server("multi_worker_mirrored",
                                           task(WORKERS, "worker", 1)))


class ReserveClusterThreadsTest(tf.test.TestCase, parameterized.TestCase):
  """A one-CPU task gets two inter-op threads; the user's setting wins."""

  @parameterized.named_parameters(
      ("one_cpu", {0}, {}, "2"),
      ("two_cpus", {0, 1}, {}, None),
      ("user_setting", {0}, {"TF_NUM_INTEROP_THREADS": "1"}, "1"))
  def test_inter_op_threads(self, cpus, environ, expected):
    with mock.patch.dict(os.environ, environ, clear=True), \
        mock.patch.object(os, "sched_getaffinity", return_value=cpus):
      cluster_lib.reserve_cluster_threads()
      self.assertEqual(os.environ.get("TF_NUM_INTEROP_THREADS"), expected)
      self.assertEqual(os.environ["GRPC_FAIL_FAST"], "use_caller")


if __name__ == "__main__":
  tf.test.main()
