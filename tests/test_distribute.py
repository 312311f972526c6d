"""Tests of escm2_tf.distribute and escm2-train's distribution flags.

Everything here runs in this process: the strategies, the chief's and the
other workers' write locations, a mirrored training run, and the command
line's errors. TF_CONFIG parsing and checks are in test_cluster.py, the
multi-process runs in test_multiworker.py.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import json
import os
import re
import shlex

from absl.testing import parameterized
import numpy as np
import tensorflow as tf
# The only way to make a ShardedVariable without a parameter-server cluster.
from tensorflow.python.distribute import sharded_variable

import datasets
import test_cluster
import testing
from escm2_tf import cluster as cluster_lib
from escm2_tf import config as config_lib
from escm2_tf import distribute
from escm2_tf import layers
from escm2_tf import run_dir
from escm2_tf import training
from escm2_tf import schema
from escm2_tf import validation
from escm2_tf.cli import train as train_cli
from escm2_tf.options import ConfigError

REPO = testing.REPO
SCALING_DOC = os.path.join(REPO, "docs", "scaling.md")
ITERATIONS_KEY = "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"
# One SGD step on one global batch, by one replica and by two (two logical
# CPUs, which must be configured before TensorFlow starts: a new process).
# Prints the two updates of every weight.
REPLICAS_SCRIPT = """
import escm2_tf
import json, sys
import numpy as np, tensorflow as tf, tf_keras as keras
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from escm2_tf import config, data, losses, model, vocab
from escm2_tf import run_dir
vocabularies = vocab.load_vocabularies(sys.argv[2], 1)
batch = next(iter(data.make_dataset(sys.argv[1], 64, training=False)))
def update(strategy):
  with strategy.scope():
    network = model.build_model(
        config.ModelConfig(embedding_dim=4, num_experts=2, expert_units=(8,),
                           tower_units=(4,)),
        config.LossConfig(loss="esmm"), vocabularies, seed=7)
    network.compile(optimizer=keras.optimizers.SGD(0.1))
    network(batch[0])
  before = [v.numpy() for v in network.trainable_variables]
  network.fit(tf.data.Dataset.from_tensors(batch), verbose=0)
  return [(v.numpy() - b).ravel().tolist()
          for v, b in zip(network.trainable_variables, before)]
print(json.dumps([update(tf.distribute.get_strategy()),
                  update(tf.distribute.MirroredStrategy(["/cpu:0",
                                                         "/cpu:1"]))]))
"""
WORKERS, PS_CLUSTER = test_cluster.WORKERS, test_cluster.PS_CLUSTER


new_dir = testing.new_dir
tf_config = test_cluster.tf_config
task = test_cluster.task


class MakeStrategyTest(tf.test.TestCase):

  def test_default_is_the_default_strategy(self):
    self.assertIs(distribute.make_strategy("default", cluster_lib.Task()),
                  tf.distribute.get_strategy())

  def test_mirrored_uses_this_machines_devices(self):
    strategy = distribute.make_strategy("mirrored", cluster_lib.Task())
    self.assertIsInstance(strategy, tf.distribute.MirroredStrategy)
    self.assertEqual(strategy.num_replicas_in_sync,
                     len(tf.config.list_logical_devices("GPU")) or 1)
    self.assertFalse(distribute.needs_fixed_steps(strategy))

  def test_a_parameter_server_worker_does_not_train(self):
    with self.assertRaisesRegex(cluster_lib.ClusterError,
                                "task worker:0 does not train"):
      distribute.make_strategy("parameter_server", task(PS_CLUSTER, "worker"))


class WriterDirTest(tf.test.TestCase):

  def test_the_chief_writes_in_place(self):
    path = new_dir()
    with distribute.writer_dir(path, task(WORKERS, "worker", 0)) as where:
      self.assertEqual(where, path)
    self.assertTrue(os.path.isdir(path))

  def test_other_workers_write_into_a_removed_temporary_directory(self):
    path = new_dir()
    with distribute.writer_dir(path, task(WORKERS, "worker", 1)) as where:
      self.assertNotEqual(where, path)
      with open(os.path.join(where, "checkpoint"), "w") as f:
        f.write("x")
    self.assertFalse(os.path.exists(where))
    self.assertEmpty(os.listdir(path))

  def test_the_temporary_directory_is_removed_on_errors(self):
    with self.assertRaisesRegex(OSError, "disk full"):
      with distribute.writer_dir(new_dir(), task(WORKERS, "worker", 1)
                                 ) as where:
        raise OSError("disk full")
    self.assertFalse(os.path.exists(where))


class VariableShardsTest(tf.test.TestCase):

  def test_groups_the_parts_of_partitioned_variables(self):
    variables = [tf.Variable(tf.zeros([3, 2]), name="table/part_1"),
                 tf.Variable(tf.zeros([4, 2]), name="table/part_0"),
                 tf.Variable(tf.zeros([5]), name="dense/kernel")]
    shards = distribute.variable_shards(variables)
    self.assertEqual(list(shards), ["table"])
    self.assertEqual([shape for shape, _ in shards["table"]],
                     [(4, 2), (3, 2)])


class ShardedTableTest(tf.test.TestCase):
  """Under parameter servers the embedding table is a ShardedVariable."""

  def test_a_split_table_embeds_like_a_whole_one(self):
    rng = np.random.default_rng(0)
    vocabularies = {field: np.arange(100, 130) for field in schema.FIELD_NAMES}
    layer = layers.FusedEmbedding(vocabularies, 3)
    # Ids of every field, some unknown, in rows of different lengths: the
    # looked-up rows interleave across both shards.
    features = {field: tf.ragged.constant(
        [rng.integers(95, 135, size=rng.integers(0, 4)).tolist()
         for _ in range(16)], dtype=tf.int64, ragged_rank=1)
                for field in schema.FIELD_NAMES}
    whole = layer(features)
    table = layer.embeddings.numpy()
    half = (len(table) + 1) // 2  # "div" sharding: the first is larger.
    layer.embeddings = sharded_variable.ShardedVariable(
        [tf.Variable(table[:half]), tf.Variable(table[half:])])
    self.assertAllClose(layer(features), whole)


class ReplicaGradientTest(tf.test.TestCase):
  """Synchronous replicas sum their gradients: each must average its share."""

  def test_two_replicas_update_like_one_on_the_same_global_batch(self):
    data = datasets.make_synthetic_data(new_dir())
    result = testing.run_subprocess(testing.python_command(
        REPLICAS_SCRIPT, data["test"], data["vocab_dir"]))
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    one, two = json.loads(result.stdout.strip().splitlines()[-1])
    self.assertLen(two, len(one))
    for single, mirrored in zip(one, two):
      self.assertGreater(np.abs(single).max(), 0.0)
      self.assertAllClose(mirrored, single, rtol=1e-3, atol=1e-7)


class DistributeDatasetTest(tf.test.TestCase):

  def test_each_pipeline_gets_its_input_context(self):
    strategy = tf.distribute.MirroredStrategy()
    contexts = []

    def dataset_fn(input_context):
      contexts.append(input_context)
      return tf.data.Dataset.range(8).batch(
          input_context.get_per_replica_batch_size(4))

    distributed = distribute.distribute_dataset(strategy, dataset_fn)
    first = next(iter(distributed))
    self.assertLen(contexts, 1)
    self.assertEqual(contexts[0].num_replicas_in_sync,
                     strategy.num_replicas_in_sync)
    self.assertAllEqual(strategy.gather(first, axis=0), [0, 1, 2, 3])


class ConfigTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(
      ("distribution_strategy", "horovod", "must be one of default"),
      ("steps_per_epoch", -1, "integer >= 0"),
      ("ps_min_shard_bytes", 0, "integer >= 1"))
  def test_rejects(self, field, value, pattern):
    with self.assertRaisesRegex(ConfigError, pattern) as raised:
      config_lib.ExperimentConfig.create(
          train_data="a", eval_data="b", vocab_dir="v", model_dir="m",
          **{field: value})
    self.assertEqual(raised.exception.field, field)

  def test_batch_must_split_over_the_replicas(self):
    validation.check_batch_size(256, 2)
    with self.assertRaisesRegex(ConfigError,
                                "256 does not split evenly over the "
                                "strategy's 3 replicas") as raised:
      validation.check_batch_size(256, 3)
    self.assertEqual(raised.exception.field, "batch_size")


class MirroredTrainingTest(tf.test.TestCase):

  def test_trains_the_given_steps_and_writes_the_outputs(self):
    data = datasets.make_synthetic_data(new_dir())
    config = testing.tiny_config(
        data, new_dir(), epochs=2, batch_size=128, steps_per_epoch=3,
        distribution_strategy=config_lib.MIRRORED, loss="dr")
    result = training.train(config, verbose=0)
    self.assertEqual((result["epochs"], result["chief"], result["task"]),
                     (2, True, "local:0"))
    self.assertEmpty(result["variable_shards"])
    final = os.path.join(config.trainer.model_dir, run_dir.CHECKPOINT_DIR,
                         run_dir.FINAL_CHECKPOINT)
    self.assertEqual(tf.train.load_checkpoint(final).get_tensor(
        ITERATIONS_KEY), 2 * 3)
    with open(os.path.join(config.trainer.model_dir,
                           run_dir.METRICS_FILE)) as f:
      self.assertEqual(json.load(f)["count"], result["metrics"]["count"])


class CommandLineTest(tf.test.TestCase, parameterized.TestCase):

  def run_main(self, environ, **flag_values) -> tuple[int, str]:
    flag_values = {"train_data": "a", "eval_data": "b", "vocab_dir": "v",
                   "model_dir": new_dir(), **flag_values}
    status, _, stderr = testing.run_main(train_cli.TOOL, environ=environ,
                                         **flag_values)
    return status, stderr

  @parameterized.named_parameters(
      ("parameter_server_without_cluster", {},
       {"distribution_strategy": "parameter_server"},
       "TF_CONFIG: --distribution_strategy=parameter_server needs a cluster"),
      ("cluster_without_cluster_strategy", tf_config(WORKERS, "worker"), {},
       "TF_CONFIG: describes a cluster of 2 tasks, but "
       "--distribution_strategy=default"),
      ("malformed_tf_config", {cluster_lib.TF_CONFIG: "{"},
       {"distribution_strategy": "multi_worker_mirrored",
        "steps_per_execution": 1},
       "TF_CONFIG: not valid JSON"),
      ("negative_steps", {}, {"steps_per_epoch": -2},
       "--steps_per_epoch: must be an integer >= 0"))
  def test_rejected_with_one_line(self, environ, flag_values, message):
    status, stderr = self.run_main(environ, **flag_values)
    self.assertEqual(status, 2)
    self.assertStartsWith(stderr, f"escm2-train: error: {message}")
    self.assertLen(stderr.strip().splitlines(), 1)


def _doc_blocks(language: str) -> list[str]:
  with open(SCALING_DOC) as f:
    return re.findall(rf"^```{language}\n(.*?)^```", f.read(),
                      re.MULTILINE | re.DOTALL)


class ScalingDocTest(tf.test.TestCase):

  def test_tf_config_examples_fit_their_strategy(self):
    blocks = _doc_blocks("json")
    self.assertGreaterEqual(len(blocks), 2)
    strategies = set()
    for block in blocks:
      this = cluster_lib.read_task({cluster_lib.TF_CONFIG: block})
      strategy = (config_lib.PARAMETER_SERVER if cluster_lib.PS in this.cluster
                  else config_lib.MULTI_WORKER_MIRRORED)
      cluster_lib.check_task(strategy, this)
      strategies.add(strategy)
    self.assertEqual(strategies, {config_lib.PARAMETER_SERVER,
                                  config_lib.MULTI_WORKER_MIRRORED})

  def test_training_commands_use_escm2_train_flags(self):
    own = set(train_cli.TOOL.binding.names()) | {"flagfile"}
    commands = [line for block in _doc_blocks("sh") for line in
                block.replace("\\\n", " ").splitlines()
                if "escm2-train" in line]
    self.assertNotEmpty(commands)
    for command in commands:
      words = shlex.split(command, comments=True)
      arguments = words[words.index("escm2-train") + 1:]
      names = [word[2:].split("=")[0] for word in arguments
               if word.startswith("--")]
      self.assertNotEmpty(names, command)
      self.assertContainsSubset(names, own, command)


if __name__ == "__main__":
  tf.test.main()
