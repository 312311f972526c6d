"""escm2-train on localhost clusters: real processes, each with its TF_CONFIG.

* ``multi_worker_mirrored``: two workers train ESCM2-DR; both are killed after
  the first epoch's backup and restarted, and the run resumes. Only the chief
  writes checkpoints, logs, metrics and the export.
* ``parameter_server``: a coordinator (the CLI with task ``chief``) trains on
  two workers with the embedding table split across two parameter servers
  (all four also the CLI, serving), evaluates on the coordinator and exports
  a SavedModel whose signatures equal an unpartitioned model's. A diverging
  run on a one-process cluster stops at the first epoch's end.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import glob
import json
import os
import re
import subprocess
import sys
from typing import Any

import portpicker
import tensorflow as tf

import datasets
import testing
from escm2_tf import cluster as cluster_lib
from escm2_tf import config as config_lib
from escm2_tf import evaluation
from escm2_tf import export
from escm2_tf import model as model_lib
from escm2_tf import vocab
from escm2_tf import run_dir
from escm2_tf import serving_assets

REPO = testing.REPO
# Slow on two shared cores, but far below any hang.
PROCESS_TIMEOUT = 420
EPOCHS = 3
STEPS_PER_EPOCH = 4
MODEL = testing.TINY_MODEL
ITERATIONS_KEY = "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"
# A coordinator whose worker and parameter server are servers in its own
# process: argv[1] is an ExperimentConfig as a dict.
# Prints {"error": the TrainingDivergedError's message, or null}.
PS_NAN_SCRIPT = """
import escm2_tf
import json, os, sys
import portpicker
import tensorflow as tf
from escm2_tf import cluster as cluster_lib
from escm2_tf import config, training
values = json.loads(sys.argv[1])
cluster_lib.reserve_cluster_threads()
cluster = {job: [f"localhost:{portpicker.pick_unused_port()}"]
           for job in (cluster_lib.CHIEF, cluster_lib.WORKER, cluster_lib.PS)}
servers = [tf.distribute.Server(tf.train.ClusterSpec(cluster), job_name=job,
                                task_index=0, protocol="grpc", start=True)
           for job in (cluster_lib.WORKER, cluster_lib.PS)]
os.environ[cluster_lib.TF_CONFIG] = json.dumps(
    {"cluster": cluster, "task": {"type": cluster_lib.CHIEF, "index": 0}})
try:
  training.train(config.ExperimentConfig.from_dict(values), verbose=0)
  error = None
except training.TrainingDivergedError as diverged:
  error = str(diverged)
print(json.dumps({"error": error}), flush=True)
# The in-process servers never stop; the process ends without them.
os._exit(0)
"""
# A task of a cluster, as `escm2-train` runs it.
TRAIN = "from escm2_tf.cli import train; train.run()"
# The same, holding still after its first backup until it is killed: a
# preemption after the first epoch, however fast the machine.
TRAIN_HELD_AFTER_FIRST_BACKUP = """
import threading
import escm2_tf
import tf_keras as keras
from escm2_tf.cli import train
back_up = keras.callbacks.BackupAndRestore.on_epoch_end
def back_up_and_hold(self, epoch, logs=None):
  back_up(self, epoch, logs)
  threading.Event().wait()
keras.callbacks.BackupAndRestore.on_epoch_end = back_up_and_hold
train.run()
"""
# A worker fitting the model as escm2-train would, but with grouped steps,
# which the config refuses under multi_worker_mirrored: argv[1:] are the data's
# training glob and vocabulary directory, then the steps per execution.
# Prints {"error": the fit's error message, or null}.
GROUPED_STEPS_SCRIPT = """
import escm2_tf
import json, os, sys
import tensorflow as tf
from escm2_tf import config as config_lib
from escm2_tf import data, model as model_lib, optimizers, vocab
train_data, vocab_dir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
strategy = tf.distribute.MultiWorkerMirroredStrategy()
config = config_lib.ExperimentConfig.create(
    train_data=train_data, eval_data=train_data, vocab_dir=vocab_dir,
    model_dir="unused", loss="dr")
with strategy.scope():
  model = model_lib.build_model(config.model, config.loss,
                                vocab.load_vocabularies(vocab_dir), seed=1)
  model.compile(optimizer=optimizers.make_optimizer("sparse_adam", 1e-3),
                steps_per_execution=steps)
inputs = strategy.distribute_datasets_from_function(
    lambda context: data.make_dataset(train_data, 256, training=True,
                                      num_epochs=None, seed=1,
                                      input_context=context))
try:
  model.fit(inputs, epochs=1, steps_per_epoch=2 * steps, verbose=0)
  error = None
except tf.errors.OpError as e:
  error = e.message
print(json.dumps({"error": error}), flush=True)
os._exit(0)
"""
# The embedding table is 13k x 4 floats, about 210 KiB: 64 KiB shards split
# it over both parameter servers.
MIN_SHARD_BYTES = 64 << 10


new_dir = testing.new_dir


def cluster_spec(**jobs: int) -> dict[str, list[str]]:
  return {job: [f"localhost:{portpicker.pick_unused_port()}"
                for _ in range(count)] for job, count in jobs.items()}


def train_flags(data: dict[str, str], work_dir: str, strategy: str,
                **extra: Any) -> list[str]:
  values = dict(
      train_data=data["train"], eval_data=data["test"],
      vocab_dir=data["vocab_dir"],
      model_dir=os.path.join(work_dir, "model"),
      export_dir=os.path.join(work_dir, "export"), loss="dr", epochs=EPOCHS,
      steps_per_epoch=STEPS_PER_EPOCH, batch_size=128,
      embedding_dim=MODEL.embedding_dim, num_experts=MODEL.num_experts,
      expert_units=MODEL.expert_units[0], tower_units=MODEL.tower_units[0],
      vocab_check_examples=100, distribution_strategy=strategy, verbose=2)
  values.update(extra)
  return [f"--{name}={value}" for name, value in values.items()]


class Cluster:
  """The processes of one cluster; whatever still runs is killed on exit."""

  def __init__(self, spec: dict[str, list[str]], log_dir: str):
    self.spec = spec
    self.log_dir = log_dir
    self.processes: dict[str, subprocess.Popen] = {}
    self.temp_dirs: dict[str, str] = {}

  def start(self, task_type: str, index: int, flags: list[str],
            attempt: int = 0, code: str = TRAIN) -> subprocess.Popen:
    name = f"{task_type}{index}-{attempt}"
    temp_dir = os.path.join(self.log_dir, f"tmp-{name}")
    os.makedirs(temp_dir)
    tf_config = {"cluster": self.spec,
                 "task": {"type": task_type, "index": index}}
    env = {**os.environ, cluster_lib.TF_CONFIG: json.dumps(tf_config),
           "TMPDIR": temp_dir, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(os.path.join(self.log_dir, f"{name}.out"), "w") as out, open(
        os.path.join(self.log_dir, f"{name}.err"), "w") as err:
      process = subprocess.Popen(
          [sys.executable, "-c", code, *flags], stdout=out, stderr=err, cwd=REPO, env=env)
    self.processes[name] = process
    self.temp_dirs[name] = temp_dir
    return process

  def output(self, name: str, stream: str = "out") -> str:
    with open(os.path.join(self.log_dir, f"{name}.{stream}")) as f:
      return f.read()

  def describe(self, name: str) -> str:
    return (f"{name} exited {self.processes[name].poll()}; stdout:\n"
            f"{self.output(name)[-2000:]}\nstderr:\n"
            f"{self.output(name, 'err')[-4000:]}")

  def wait(self, name: str) -> int:
    try:
      return self.processes[name].wait(PROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
      self.stop()
      raise AssertionError(f"timed out: {self.describe(name)}") from None

  def stop(self) -> None:
    for process in self.processes.values():
      if process.poll() is None:
        process.kill()
      # A killed process ends at once; the bound only keeps CI from hanging.
      process.wait(PROCESS_TIMEOUT)

  def __enter__(self) -> "Cluster":
    return self

  def __exit__(self, *unused_exc_info) -> None:
    self.stop()


def event_file_pids(log_dir: str) -> set[int]:
  """The processes that wrote TensorBoard event files (named host.pid.N)."""
  return {int(os.path.basename(path).split(".")[-3]) for path in glob.glob(
      os.path.join(log_dir, "**", "events.out.tfevents.*"), recursive=True)}


def metrics_files(work_dir: str) -> list[str]:
  return glob.glob(os.path.join(work_dir, "**", run_dir.METRICS_FILE),
                   recursive=True)


def expected_metrics_files(work_dir: str) -> list[str]:
  """The chief's metrics.json and the copy in its export's assets."""
  return [os.path.join(work_dir, "model", run_dir.METRICS_FILE),
          os.path.join(work_dir, "export", "1", serving_assets.ASSETS_EXTRA,
                       run_dir.METRICS_FILE)]


def export_metrics(export_path: str, data: dict[str, str]) -> dict[str, Any]:
  """The exact metrics of the export on the test data, via serving_default."""
  signature = tf.saved_model.load(export_path).signatures["serving_default"]
  return evaluation.compute_metrics(
      evaluation.predict_saved_model(signature, data["test"], 256))


def signature_structures(export_path: str) -> dict[str, Any]:
  """Every signature's input and output names, dtypes and shapes."""
  def spec(tensor):
    return tensor.dtype.name, tensor.shape.as_list()

  return {name: ({key: spec(value) for key, value in
                  function.structured_input_signature[1].items()},
                 {key: spec(value) for key, value in
                  function.structured_outputs.items()})
          for name, function in
          tf.saved_model.load(export_path).signatures.items()}


class MultiWorkerMirroredTest(tf.test.TestCase):
  """Two workers, killed after the first backup and restarted."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = datasets.make_synthetic_data(new_dir())
    cls.work_dir = new_dir()
    # Patience of EPOCHS never stops the run, so every epoch after the
    # backup is redone; early stopping's state still crosses the restart and
    # every worker ends on the best epoch's weights.
    cls.flags = train_flags(cls.data, cls.work_dir,
                            config_lib.MULTI_WORKER_MIRRORED,
                            early_stopping_patience=EPOCHS,
                            steps_per_execution=1)
    cls.model_dir = os.path.join(cls.work_dir, "model")
    cls.export_dir = os.path.join(cls.work_dir, "export")
    cls.clusters = [cls._interrupted_run(), cls._resumed_run()]

  @classmethod
  def _start_workers(cls, cluster: Cluster, attempt: int,
                     code: str = TRAIN) -> None:
    for index in range(len(cluster.spec[cluster_lib.WORKER])):
      cluster.start(cluster_lib.WORKER, index, cls.flags, attempt, code)

  @classmethod
  def _interrupted_run(cls) -> Cluster:
    backup = os.path.join(cls.model_dir, run_dir.BACKUP_DIR, "chief",
                          "checkpoint")
    with Cluster(cluster_spec(worker=2), cls.work_dir) as cluster:
      cls._start_workers(cluster, 0, TRAIN_HELD_AFTER_FIRST_BACKUP)
      try:
        testing.wait_until(lambda: os.path.exists(backup), "the first backup",
                           list(cluster.processes.values()), PROCESS_TIMEOUT)
      except AssertionError as e:
        raise AssertionError(f"{e}: {cluster.describe('worker0-0')}") from None
    # Leaving the block killed both workers, as a preemption would.
    return cluster

  @classmethod
  def _resumed_run(cls) -> Cluster:
    with Cluster(cluster_spec(worker=2), cls.work_dir) as cluster:
      cls._start_workers(cluster, attempt=1)
      for name in cluster.processes:
        if cluster.wait(name):
          raise AssertionError(cluster.describe(name))
    return cluster

  def test_resumes_after_the_restart(self):
    chief = self.clusters[1].output("worker0-1")
    epochs = [int(n) for n in re.findall(rf"^Epoch (\d+)/{EPOCHS}$", chief,
                                         re.MULTILINE)]
    # Epoch 1 came from the backup, where the first run was held.
    self.assertEqual(epochs, list(range(2, EPOCHS + 1)))
    self.assertIn(f"Trained {len(epochs)} epoch(s)", chief)
    # The optimizer's steps carried over from before the kill.
    final = os.path.join(self.model_dir, run_dir.CHECKPOINT_DIR,
                         run_dir.FINAL_CHECKPOINT)
    self.assertEqual(tf.train.load_checkpoint(final).get_tensor(
        ITERATIONS_KEY), EPOCHS * STEPS_PER_EPOCH)

  def test_chief_export_loads_and_scores_like_its_metrics(self):
    with open(os.path.join(self.model_dir, run_dir.METRICS_FILE)) as f:
      metrics = json.load(f)
    served = export_metrics(os.path.join(self.export_dir, "1"), self.data)
    for name in ("auc_ctr", "auc_cvr", "auc_ctcvr", "logloss_ctcvr"):
      self.assertAllClose(served[name], metrics[name], atol=1e-5, msg=name)
    self.assertEqual(served["count"], metrics["count"])

  def test_only_the_chief_writes(self):
    self.assertCountEqual(metrics_files(self.work_dir),
                          expected_metrics_files(self.work_dir))
    self.assertEqual(os.listdir(self.export_dir), ["1"])
    chief_pids = {cluster.processes[f"worker0-{attempt}"].pid
                  for attempt, cluster in enumerate(self.clusters)}
    self.assertContainsSubset(
        event_file_pids(os.path.join(self.model_dir, run_dir.LOG_DIR)),
        chief_pids)
    worker = self.clusters[1].output("worker1-1")
    self.assertIn("as worker:1; the chief writes", worker)
    self.assertNotIn("Exported", worker)

  def test_worker_temporary_files_are_removed(self):
    leftovers = [path for path in glob.glob(
        os.path.join(self.work_dir, "**"), recursive=True)
                 if "workertemp" in path or ".tmp-export" in path]
    self.assertEmpty(leftovers)
    # The restarted non-chief's own temporary directory is emptied.
    self.assertEmpty(os.listdir(self.clusters[1].temp_dirs["worker1-1"]))


class ParameterServerNanTest(tf.test.TestCase):

  def test_nan_loss_stops_before_anything_is_saved(self):
    data = datasets.make_synthetic_data(new_dir())
    model_dir = os.path.join(new_dir(), "model")
    config = testing.tiny_config(
        data, model_dir, epochs=2, steps_per_epoch=STEPS_PER_EPOCH,
        batch_size=128, learning_rate=1e38,
        distribution_strategy=config_lib.PARAMETER_SERVER, loss="dr")
    result = testing.run_subprocess(testing.python_command(
        PS_NAN_SCRIPT, json.dumps(config.to_dict())),
                                    timeout=PROCESS_TIMEOUT)
    self.assertEqual(result.returncode, 0, result.stderr[-4000:])
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    self.assertEqual(outcome["error"], "the training loss became NaN or "
                     "infinite in epoch 1; try a lower learning rate")
    # The NaN check runs before the callbacks that save.
    self.assertEmpty(glob.glob(os.path.join(
        model_dir, run_dir.CHECKPOINT_DIR, "*.index")))
    self.assertEmpty(glob.glob(os.path.join(
        model_dir, run_dir.BACKUP_DIR, "**", "checkpoint"), recursive=True))
    self.assertFalse(os.path.exists(os.path.join(model_dir,
                                                 run_dir.METRICS_FILE)))


class GroupedStepsUnderMultiWorkerMirroredTest(tf.test.TestCase):
  """Why ``steps_per_execution`` must be 1 with multi_worker_mirrored.

  The embedding's gradient holds a batch's distinct rows, so the workers'
  row counts differ. TensorFlow all-gathers such ``IndexedSlices`` padded to
  the largest count, inside a ``tf.cond``
  (``CollectiveReplicaLauncher.all_gather_indexed_slices`` in
  tensorflow/python/distribute/cross_device_utils.py); inside Keras'
  multi-step loop the workers' gathers then disagree on shape. This test
  fails once TensorFlow trains such a model with grouped steps: then the
  refusal in ``config.ExperimentConfig`` can go.
  """

  def run_workers(self, steps: int) -> list[str | None]:
    data = datasets.make_synthetic_data(new_dir())
    flags = [data["train"], data["vocab_dir"], str(steps)]
    with Cluster(cluster_spec(worker=2), new_dir()) as cluster:
      for index in range(2):
        cluster.start(cluster_lib.WORKER, index, flags,
                      code=GROUPED_STEPS_SCRIPT)
      errors = []
      for name in ("worker0-0", "worker1-0"):
        self.assertEqual(cluster.wait(name), 0, cluster.describe(name))
        errors.append(json.loads(
            cluster.output(name).strip().splitlines()[-1])["error"])
    return errors

  def test_grouped_steps_fail_in_the_sparse_gradient_gather(self):
    for error in self.run_workers(steps=4):
      self.assertIsNotNone(error)
      self.assertIn("Shape mismatch in the collective instance", error)

  def test_single_steps_train(self):
    self.assertEqual(self.run_workers(steps=1), [None, None])


class ParameterServerTest(tf.test.TestCase):
  """A coordinator, two workers and two parameter servers."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = datasets.make_synthetic_data(new_dir())
    cls.work_dir = new_dir()
    # The tiny data's ids are rare: the default min_count would leave the
    # table only its OOV rows, too small to split across the servers.
    flags = train_flags(cls.data, cls.work_dir, config_lib.PARAMETER_SERVER,
                        ps_min_shard_bytes=MIN_SHARD_BYTES, min_count=1)
    spec = cluster_spec(chief=1, worker=2, ps=2)
    with Cluster(spec, cls.work_dir) as cluster:
      for job in (cluster_lib.WORKER, cluster_lib.PS):
        for index in range(len(spec[job])):
          cluster.start(job, index, flags)
      cluster.start(cluster_lib.CHIEF, 0, flags)
      if cluster.wait("chief0-0"):
        raise AssertionError(cluster.describe("chief0-0"))
      cls.servers_alive = {name: process.poll() is None for name, process
                           in cluster.processes.items() if name != "chief0-0"}
    cls.cluster = cluster
    cls.coordinator = cluster.output("chief0-0")
    cls.export_path = os.path.join(cls.work_dir, "export", "1")

  def test_servers_served_until_stopped(self):
    self.assertEqual(self.servers_alive, dict.fromkeys(self.servers_alive,
                                                       True))
    self.assertIn("serving as ps:1 of the parameter-server cluster",
                  self.cluster.output("ps1-0"))

  def test_embedding_table_is_split_across_both_servers(self):
    match = re.search(r"^embeddings: 2 shards: (.*)$", self.coordinator,
                      re.MULTILINE)
    self.assertIsNotNone(match, self.coordinator)
    shards = re.findall(r"(\d+)x(\d+) on ([^,\s]+)", match.group(1))
    self.assertEqual([device for _, _, device in shards],
                     ["/job:ps/replica:0/task:0/device:CPU:0",
                      "/job:ps/replica:0/task:1/device:CPU:0"])
    rows = sum(int(rows) for rows, _, _ in shards)
    vocabularies = vocab.load_vocabularies(self.data["vocab_dir"], 1)
    self.assertEqual(rows, sum(len(ids) + MODEL.oov_buckets
                               for ids in vocabularies.values()))

  def test_coordinator_evaluated_every_example_once(self):
    with open(os.path.join(self.work_dir, "model",
                           run_dir.METRICS_FILE)) as f:
      metrics = json.load(f)
    served = export_metrics(self.export_path, self.data)
    self.assertEqual(metrics["count"], served["count"])
    for name in ("auc_ctr", "auc_cvr", "auc_ctcvr", "logloss_ctcvr"):
      self.assertAllClose(served[name], metrics[name], atol=1e-5, msg=name)

  def test_export_has_the_signatures_of_an_unpartitioned_model(self):
    unpartitioned = model_lib.build_model(
        MODEL, config_lib.LossConfig(loss="dr"),
        vocab.load_vocabularies(self.data["vocab_dir"], 1))
    reference = export.export_saved_model(unpartitioned, new_dir())
    self.assertEqual(signature_structures(self.export_path),
                     signature_structures(reference))

  def test_only_the_coordinator_writes(self):
    model_dir = os.path.join(self.work_dir, "model")
    self.assertEqual(
        event_file_pids(os.path.join(model_dir, run_dir.LOG_DIR)),
        {self.cluster.processes["chief0-0"].pid})
    self.assertCountEqual(metrics_files(self.work_dir),
                          expected_metrics_files(self.work_dir))
    self.assertEqual(os.listdir(os.path.join(self.work_dir, "export")), ["1"])


if __name__ == "__main__":
  tf.test.main()
