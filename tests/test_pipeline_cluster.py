"""The converter on cluster runners.

* Packaging: Beam's ``--setup_file`` ships the project to the workers as an
  sdist that each worker pip-installs; the sdist is built here with
  setuptools' PEP 517 backend, installed the way a worker does, and imported.
* Beam's multi-process local runner (``--direct_running_mode=
  multi_processing``) writes what the in-memory runner writes.
* The Dataflow, Flink and Spark commands of ``docs/scaling.md`` use only
  converter flags and Beam options that exist.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import collections
import glob
import json
import os
import re
import shlex
import shutil
import sys
import tarfile

from apache_beam.options import pipeline_options
import tensorflow as tf

import datasets
import testing
from escm2_tf import layout
from escm2_pipelines import cli as convert_cli
from escm2_pipelines import convert

REPO = testing.REPO
# The folders setup.cfg installs as packages (escm2_tf, escm2_pipelines and
# escm2_tf.configs).
PACKAGES = ("escm2_tf", "pipelines", "configs")
# What setuptools reads to build the sdist, as far as the project has it.
PACKAGING_FILES = ("setup.py", "setup.cfg", "pyproject.toml", "README.md",
                   "MANIFEST.in", "LICENSE")
SCALING_DOC = os.path.join(REPO, "docs", "scaling.md")
BUILD_TIMEOUT = 300
MULTI_PROCESSING = ("--direct_running_mode=multi_processing",
                    "--direct_num_workers=2")


new_dir = testing.new_dir


def package_modules() -> list[str]:
  """The repository's modules of both packages, relative to its root."""
  return sorted(os.path.relpath(path, REPO) for package in PACKAGES
                for path in glob.glob(os.path.join(REPO, package, "**",
                                                   "*.py"), recursive=True))


def copy_project(target: str) -> None:
  """What an sdist is built from, without touching the shared checkout."""
  for name in PACKAGING_FILES:
    if os.path.exists(os.path.join(REPO, name)):
      shutil.copy(os.path.join(REPO, name), target)
  for package in PACKAGES:
    shutil.copytree(os.path.join(REPO, package), os.path.join(target, package),
                    ignore=shutil.ignore_patterns("__pycache__"))


def run(command: list[str], cwd: str, **env: str) -> str:
  result = testing.run_subprocess(command, cwd=cwd, timeout=BUILD_TIMEOUT,
                                  env=env, tf_log_level=None)
  if result.returncode:
    raise AssertionError(f"{command} failed:\n{result.stderr[-3000:]}")
  return result.stdout


class SdistTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    project, dist = new_dir(), new_dir()
    copy_project(project)
    name = run([sys.executable, "-c", "import sys; from setuptools import "
                "build_meta; print(build_meta.build_sdist(sys.argv[1]))",
                dist], project).strip().splitlines()[-1]
    cls.sdist = os.path.join(dist, name)
    with tarfile.open(cls.sdist) as tar:
      cls.members = tar.getnames()
    cls.root = cls.members[0].split("/")[0]

  def test_holds_every_module_and_the_schema(self):
    expected = [f"{self.root}/{module}" for module in package_modules()]
    self.assertIn(f"{self.root}/escm2_tf/schema.py", expected)
    self.assertIn(f"{self.root}/pipelines/convert.py", expected)
    self.assertContainsSubset(expected, self.members)
    self.assertContainsSubset(
        [f"{self.root}/setup.cfg", f"{self.root}/PKG-INFO"], self.members)

  def test_a_worker_installs_and_imports_it(self):
    target, elsewhere = new_dir(), new_dir()
    run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--no-index", "--no-build-isolation", "--target", target,
         self.sdist], elsewhere)
    paths = run([sys.executable, "-c",
                 "import escm2_tf.schema, escm2_pipelines.convert; "
                 "print(escm2_tf.schema.__file__); "
                 "print(escm2_pipelines.convert.__file__)"],
                elsewhere, PYTHONPATH=target).split()
    self.assertLen(paths, 2)
    for path in paths:
      self.assertStartsWith(path, target)
    [entry_points] = glob.glob(os.path.join(target, "*.dist-info",
                                            "entry_points.txt"))
    with open(entry_points) as f:
      content = f.read()
    self.assertIn("escm2-convert = escm2_pipelines.cli:run", content)
    self.assertFalse(os.path.exists(os.path.join(target, "pipelines")))
    self.assertIn("escm2-train = escm2_tf.cli.train:run", content)


def read_examples(directory: str) -> collections.Counter:
  """Every tf.Example of the TFRecords, as a hashable value, counted."""
  examples = collections.Counter()
  files = sorted(glob.glob(layout.examples_glob(directory)))
  for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
    example = tf.train.Example.FromString(record.numpy())
    features = []
    for name, feature in sorted(example.features.feature.items()):
      kind = feature.WhichOneof("kind")
      features.append((name, kind, tuple(getattr(feature, kind).value)))
    examples[tuple(features)] += 1
  return examples


def read_lines(pattern: str) -> collections.Counter:
  lines = collections.Counter()
  for path in glob.glob(pattern):
    with tf.io.gfile.GFile(path) as f:
      lines.update(f.read().splitlines())
  return lines


class MultiProcessingRunnerTest(tf.test.TestCase):
  """Two worker processes write what the in-memory runner writes."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    data = datasets.make_synthetic_data(new_dir())
    # The fixture's training split was converted in memory, in this process.
    cls.in_memory = os.path.dirname(data["train"])
    cls.multi_processing = os.path.join(new_dir(), "train")
    names = layout.raw_file_names("aliccp", layout.TRAIN)
    convert.convert(
        cls.multi_processing, input_format="aliccp",
        skeleton=os.path.join(data["raw_dir"], names["skeleton"]),
        common_features=os.path.join(data["raw_dir"], names["common"]),
        num_shards=datasets.NUM_SHARDS[layout.TRAIN],
        pipeline_args=MULTI_PROCESSING)

  def test_same_examples(self):
    in_memory = read_examples(self.in_memory)
    self.assertGreater(sum(in_memory.values()), 1000)
    self.assertEqual(read_examples(self.multi_processing), in_memory)

  def test_same_vocabularies(self):
    in_memory = layout.vocab_dir(self.in_memory)
    multi_processing = layout.vocab_dir(self.multi_processing)
    names = sorted(os.listdir(in_memory))
    self.assertNotEmpty(names)
    self.assertEqual(sorted(os.listdir(multi_processing)), names)
    for name in names:
      with open(os.path.join(in_memory, name)) as f:
        expected = f.read()
      with open(os.path.join(multi_processing, name)) as f:
        self.assertEqual(f.read(), expected, name)

  def test_same_statistics_and_rejected_rows(self):
    def stats(directory):
      with open(layout.stats_file(directory)) as f:
        content = json.load(f)
      del content["settings"]  # Names the output directory.
      return content

    self.assertEqual(stats(self.multi_processing), stats(self.in_memory))
    self.assertEqual(
        read_lines(os.path.join(self.multi_processing, "rejected", "*")),
        read_lines(os.path.join(self.in_memory, "rejected", "*")))


class ClusterCommandsTest(tf.test.TestCase):
  """Every flag of the documented converter commands is understood."""

  def commands(self) -> list[list[str]]:
    with open(SCALING_DOC) as f:
      blocks = re.findall(r"^```sh\n(.*?)^```", f.read(),
                          re.MULTILINE | re.DOTALL)
    commands = []
    for block in blocks:
      for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if "escm2-convert" in words:
          commands.append(words[words.index("escm2-convert") + 1:])
    return commands

  def test_runner_commands_are_documented(self):
    runners = {word.split("=", 1)[1] for command in self.commands()
               for word in command if word.startswith("--runner=")}
    self.assertContainsSubset({"DataflowRunner", "FlinkRunner",
                               "SparkRunner"}, runners)

  def test_beam_options_exist(self):
    own = set(convert_cli.TOOL.binding.names())
    for command in self.commands():
      beam_args = [word for word in command if word.startswith("--")
                   and word[2:].split("=")[0] not in own]
      options = pipeline_options.PipelineOptions(beam_args)
      unknown = set(options.get_all_options(retain_unknown_options=True)) - (
          set(options.get_all_options()))
      self.assertEmpty(unknown, " ".join(command))


if __name__ == "__main__":
  tf.test.main()
