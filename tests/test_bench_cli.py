"""Tests of escm2-bench: a tiny smoke run of every part, and its errors.

No timing is asserted: the figures depend on the machine and its load.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import functools
import json
import math
import os
import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized

import testing

from escm2_tf.bench import training as benchmark_training
from escm2_tf import schema
from escm2_tf import threads
from escm2_tf.cli import bench

_PADDLEREC_FLAGS = os.path.join(testing.REPO, "configs", "paddlerec.flags")


# Runs escm2-bench's main with these flags; returns status, out, err.
_run = functools.partial(testing.run_main, bench.TOOL)


class SmokeRunTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir = tempfile.mkdtemp()
    cls.json_path = os.path.join(cls.dir, "bench.json")
    cls.status, cls.out, cls.err = _run(
        small=True, work_dir=os.path.join(cls.dir, "work"), losses=["dr"],
        parts=list(bench.PARTS), hparams=_PADDLEREC_FLAGS,
        output_json=cls.json_path)
    with open(cls.json_path, encoding="utf-8") as f:
      cls.report = json.load(f)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.dir)
    super().tearDownClass()

  def test_succeeds_and_prints_every_part(self):
    self.assertEqual(self.status, 0, self.err)
    for part in ("simulate", "convert", "parse ceiling", "parse w/o weights",
                 "train dr", "eval dr", "serve batch 1", "serve batch 64",
                 "quality adam", "quality lazy_adam"):
      self.assertIn(part, self.out)
    self.assertIn(self.report["machine"]["cpu"], self.out)

  def test_conversion_read_every_simulated_row(self):
    settings = self.report["settings"]
    convert = self.report["results"]["convert"]
    self.assertEqual(convert["rows_read"],
                     settings["train_examples"] + settings["test_examples"])
    self.assertGreater(convert["train_rows_written"], 0)
    self.assertGreater(convert["process_peak_rss_mb"], 0)
    self.assertGreater(convert["rows_per_s"], 0)

  def test_parse_and_training_figures_are_consistent(self):
    results = self.report["results"]
    parse = results["parse"]
    self.assertEqual(parse["batch_size"], 1024)
    self.assertTrue(parse["ceiling"]["with_weights"])
    self.assertFalse(parse["without_weights"]["with_weights"])
    # Every field has about one id, the behaviour fields many.
    self.assertGreater(parse["ids_per_example"], len(schema.FIELD_NAMES))
    run = results["training"]["dr"]
    train = run["train"]
    self.assertEqual(train["steps"], 2)
    # Measured with escm2-train's thread settings, not TensorFlow's.
    self.assertFalse(train["thread_spinning"])
    self.assertEqual(train["intra_op_threads"],
                     threads.default_intra_op_threads())
    self.assertGreater(train["peak_rss_mb"], 0)
    self.assertLessEqual(train["peak_rss_mb"], run["process_peak_rss_mb"])
    self.assertAlmostEqual(
        self.report["summary"]["train_dr_over_parse_ceiling"],
        train["examples_per_s"] / parse["ceiling"]["examples_per_s"])
    self.assertGreater(run["eval"]["examples_per_s"], 0)
    self.assertTrue(os.path.isdir(run["saved_model"]))

  def test_serving_latencies_are_ordered(self):
    serve = self.report["results"]["serve"]
    self.assertCountEqual([k for k in serve if k.startswith("batch_")],
                          ["batch_1", "batch_64"])
    for latency in (serve["batch_1"], serve["batch_64"]):
      self.assertEqual(latency["requests"], 5)
      self.assertLessEqual(latency["p50_ms"], latency["p99_ms"])
      self.assertGreater(latency["p50_ms"], 0)

  def test_quality_compares_both_optimizers_on_the_same_test_set(self):
    quality = self.report["results"]["quality"]
    adam, lazy = quality["adam"], quality["lazy_adam"]
    self.assertEqual(adam["count"], lazy["count"])
    self.assertEqual(adam["count"],
                     self.report["results"]["convert"]["test_rows_written"])
    for values in (adam, lazy):
      self.assertTrue(0.0 < values["auc_ctr"] < 1.0)
      self.assertTrue(math.isfinite(values["logloss_ctr"]))


class FlagErrorTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path

  @parameterized.named_parameters(
      ("unknown_part", {"parts": ["train", "bogus"]}, "--parts"),
      ("unknown_loss", {"losses": ["dr", "mse"]}, "--losses"),
      ("bad_batch_sizes", {"serving_batch_sizes": ["1", "x"]},
       "--serving_batch_sizes"),
      ("missing_hparams", {"hparams": "/nonexistent/paddlerec.flags"},
       "--hparams"))
  def test_bad_flag_is_one_line_naming_it(self, flag_values, name):
    status, out, err = _run(**{"hparams": _PADDLEREC_FLAGS, **flag_values})
    self.assertEqual(status, 2)
    self.assertEqual(out, "")
    self.assertLen(err.strip().splitlines(), 1)
    self.assertIn(name, err)

  def test_data_dir_without_converted_splits(self):
    status, _, err = _run(data_dir=self.dir, hparams=_PADDLEREC_FLAGS)
    self.assertEqual(status, 2)
    self.assertIn("--data_dir", err)

  def test_bad_flagfile_line_names_file_and_line(self):
    path = os.path.join(self.dir, "bad.flags")
    with open(path, "w", encoding="utf-8") as f:
      f.write("# comment\n--batch_size=1024\nembedding_dim=12\n")
    status, _, err = _run(hparams=path)
    self.assertEqual(status, 2)
    self.assertIn(f"{path}:3", err)


class HParamsTest(absltest.TestCase):

  def test_reads_model_loss_and_schedule_flags(self):
    path = os.path.join(self.create_tempdir().full_path, "h.flags")
    with open(path, "w", encoding="utf-8") as f:
      f.write("# A comment.\n\n--train_data=x/*.gz\n--loss=ipw\n"
              "--compat=paddlerec\n--lambda_c=0.25\n--embedding_dim=6\n"
              "--expert_units=12,4\n--nouse_weights\n--batch_size=256\n"
              "--learning_rate=0.02\n--seed=7\n")
    hparams = benchmark_training.hparams_from_flagfile(path)
    self.assertEqual(hparams.loss.loss, "ipw")
    self.assertEqual(hparams.loss.compat, "paddlerec")
    self.assertEqual(hparams.loss.lambda_c, 0.25)
    self.assertEqual(hparams.model.embedding_dim, 6)
    self.assertEqual(hparams.model.expert_units, (12, 4))
    self.assertFalse(hparams.model.use_weights)
    self.assertEqual((hparams.batch_size, hparams.learning_rate,
                      hparams.seed), (256, 0.02, 7))
    self.assertEqual(hparams.ignored, ("train_data",))

  def test_bad_values_name_the_file_and_flag(self):
    directory = self.create_tempdir().full_path
    for content, expected in (
        ("--num_experts=many\n", r"h\.flags: --num_experts=many: expected an "
         "integer"),
        ("--seed=1\n--batch_size=x\n", r"h\.flags: --batch_size=x: "),
        ("--pooling=max\n", r"h\.flags: --pooling=max: value should be one "
         r"of <sum\|mean>"),
        ("--compat=paddlerec\n--epsilon=0.01\n", r"h\.flags: --epsilon: ")):
      path = os.path.join(directory, "h.flags")
      with open(path, "w", encoding="utf-8") as f:
        f.write(content)
      with self.assertRaisesRegex(ValueError, expected):
        benchmark_training.hparams_from_flagfile(path)

  def test_a_shipped_configs_name_reads_its_file(self):
    by_name = benchmark_training.hparams_from_flagfile("paddlerec")
    by_path = benchmark_training.hparams_from_flagfile(_PADDLEREC_FLAGS)
    self.assertEqual(by_name, by_path)
    self.assertEqual(by_name.loss.compat, "paddlerec")


class InstalledTest(absltest.TestCase):

  def test_default_hparams_outside_the_repository(self):
    # The installed script, from a directory without configs/.
    directory = self.create_tempdir().full_path
    result = testing.run_subprocess(
        [testing.console_script("escm2-bench"), "--small", "--parts=train",
         "--losses=esmm", "--train_examples=600", "--test_examples=200",
         f"--work_dir={directory}/work"], cwd=directory)
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn("train esmm", result.stdout)
    self.assertIn("paddlerec.flags", result.stdout)
    # Its parts run in spawned processes, as quiet as the tool itself.
    self.assertEqual(result.stderr, "")


if __name__ == "__main__":
  absltest.main()
