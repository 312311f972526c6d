"""Runs the notebooks afresh on small data; checks their plotting helpers.

``NotebookRunTest`` executes each notebook with nbclient in a temporary
directory, with ``ESCM2_NB_SMALL=1`` so that it trains on a few thousand
impressions, and checks that no cell fails, that every figure is rendered as
a PNG and that the computed conclusions are printed. ``CommittedNotebookTest``
checks that the versions in the repository carry the outputs of a full run,
so they read well on a code host.
"""

import base64
import json
import os
import re
import shutil
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import nbclient
import nbformat
import numpy as np

from escm2_tf import plotting
from escm2_tf.study import grid
from escm2_tf.study import regime as regime_lib
from escm2_tf.study import summary as summary_lib

NOTEBOOK_DIR = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "notebooks")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A blank 1000x700 figure compresses to a few kB; a drawn one is larger.
MIN_PNG_BYTES = 8_000
# Per notebook: its figures, lines only a complete run prints, and how many
# outputs it compares between the Keras model and the reloaded SavedModel.
NOTEBOOKS = {
    "quickstart": dict(
        figures=2, saved_model_checks=3,
        text=[r"rows_written", r"auc_cvr_truth\s+\d\.\d+",
              r"cvr: largest \|Keras - SavedModel\| over [\d,]+ examples"]),
    "bias_study": dict(
        figures=2, saved_model_checks=0,
        text=[r"ESCM2-IPW vs ESMM: paired d\|bias\| [+-]\d\.\d{4} \[",
              r"ESCM2-DR vs naive: paired d\|bias\| [+-]\d\.\d{4} \[",
              r"propensities \(ESMM's CTR tower\): auc_ctr \d\.\d{4} vs "
              r"oracle \d\.\d{4}",
              r"target (met|NOT met) \(better: ESCM2-(IPW|DR)",
              r"Target met in \d+ of \d+ regimes"]),
}
# Seconds per cell. The small bias study's study cell takes about 5 minutes
# on two shared cores; the bound catches a hang, also on a machine 3x slower.
KERNEL_TIMEOUT_S = 2700


def _tempdir(test: absltest.TestCase) -> str:
  # tempfile, not create_tempdir: that reads absl flags, which pytest leaves
  # unparsed.
  path = tempfile.mkdtemp(prefix="escm2-notebook-test-")
  test.addCleanup(shutil.rmtree, path, ignore_errors=True)
  return path


def _read(name: str) -> nbformat.NotebookNode:
  return nbformat.read(os.path.join(NOTEBOOK_DIR, f"{name}.ipynb"),
                       as_version=4)


def _outputs(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
  return [output for cell in notebook.cells if cell.cell_type == "code"
          for output in cell.outputs]


def _pngs(notebook: nbformat.NotebookNode) -> list[bytes]:
  return [base64.b64decode(output.data["image/png"])
          for output in _outputs(notebook)
          if "image/png" in output.get("data", {})]


def _printed(notebook: nbformat.NotebookNode) -> str:
  return "".join(output.text for output in _outputs(notebook)
                 if output.output_type == "stream" and output.name == "stdout")


class NotebookCheckMixin:
  """Assertions shared by the fresh runs and the committed versions."""

  def assert_complete(self, name: str, notebook: nbformat.NotebookNode):
    errors = [f"{output.ename}: {output.evalue}"
              for output in _outputs(notebook)
              if output.output_type == "error"]
    self.assertEqual(errors, [], f"{name} has failing cells")
    pngs = _pngs(notebook)
    self.assertLen(pngs, NOTEBOOKS[name]["figures"])
    for png in pngs:
      self.assertEqual(png[:len(PNG_SIGNATURE)], PNG_SIGNATURE)
      self.assertGreater(len(png), MIN_PNG_BYTES)
    printed = _printed(notebook)
    for pattern in NOTEBOOKS[name]["text"]:
      self.assertRegex(printed, pattern)
    # The reloaded SavedModel must score exactly as the Keras model did.
    differences = re.findall(r"largest \|Keras - SavedModel\| over [\d,]+ "
                             r"examples = (\S+)", printed)
    self.assertLen(differences, NOTEBOOKS[name]["saved_model_checks"])
    for difference in differences:
      self.assertLess(float(difference), 1e-5)


class NotebookRunTest(NotebookCheckMixin, parameterized.TestCase):

  @parameterized.named_parameters((name, name) for name in NOTEBOOKS)
  def test_runs_on_small_data(self, name):
    notebook = _read(name)
    for cell in notebook.cells:
      if cell.cell_type == "code":
        cell.outputs = []
    workdir = _tempdir(self)
    environment = {"ESCM2_NB_SMALL": "1", "MPLBACKEND": "Agg",
                   "ESCM2_NB_WORKDIR": os.path.join(workdir, "data")}
    with mock.patch.dict(os.environ, environment):
      # jupyter_client starts the "python3" kernel spec with sys.executable,
      # the interpreter (and virtual environment) running this test.
      nbclient.NotebookClient(
          notebook, kernel_name="python3", timeout=KERNEL_TIMEOUT_S,
          resources={"metadata": {"path": workdir}}).execute()
    self.assert_complete(name, notebook)
    self.assertIn("small run", _printed(notebook))
    self.assertTrue(os.listdir(os.path.join(workdir, "data")))


class CommittedNotebookTest(NotebookCheckMixin, parameterized.TestCase):

  @parameterized.named_parameters((name, name) for name in NOTEBOOKS)
  def test_carries_outputs_of_a_full_run(self, name):
    notebook = _read(name)
    counts = [cell.execution_count for cell in notebook.cells
              if cell.cell_type == "code"]
    self.assertEqual(counts, list(range(1, len(counts) + 1)),
                     "cells must have run once, top to bottom")
    self.assert_complete(name, notebook)
    self.assertIn("full run", _printed(notebook))
    self.assertNotIn("small run", _printed(notebook))


STUDY_JSON = os.path.join(os.path.dirname(NOTEBOOK_DIR), "docs", "study",
                          "study.json")


class CommittedStudyTest(absltest.TestCase):
  """The conclusion of the committed escm2-study run, which the bias study
  notebook and docs/results.md report. Recomputed from the runs; every
  assertion fails if the measured outcome flips."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    with open(STUDY_JSON, encoding="utf-8") as f:
      cls.results = json.load(f)
    grid_dict = cls.results["grid"]
    cls.config = grid.StudyConfig(
        regimes=tuple(regime_lib.Regime(**r) for r in grid_dict["regimes"]),
        seeds=tuple(grid_dict["seeds"]),
        estimators=tuple(grid_dict["estimators"]))
    cls.summary = summary_lib.summarise(cls.config, cls.results["runs"])

  def mean(self, regime, estimator, metric):
    return self.summary["metrics"][regime][estimator][metric]["mean"]

  def test_the_committed_summary_is_that_of_its_runs(self):
    self.assertEqual(json.loads(json.dumps(self.summary)),
                     self.results["summary"])
    self.assertGreaterEqual(len(self.config.seeds), 3)
    self.assertEqual([regime.name for regime in self.config.regimes],
                     ["base", "weak", "cvr15", "ctr2", "cvr1"])
    self.assertLen(self.results["runs"],
                   len(self.config.regimes) * len(self.config.seeds)
                   * len(self.config.estimators))

  def test_the_target_is_met_in_no_regime(self):
    for regime in self.config.regimes:
      self.assertIs(self.summary["verdicts"][regime.name]["met"], False,
                    regime.name)

  def test_strong_selection_counterfactual_estimators_lower_but_not_halve(self):
    # With strong click/conversion correlation every estimator over-estimates
    # the entire-space CVR; IPW and DR less than ESMM, but by far less than
    # half, and only IPW's paired difference against naive excludes zero.
    esmm = self.mean("base", "esmm", "abs_cvr_bias")
    self.assertGreater(self.mean("base", "esmm", "cvr_bias"),
                       0.5 * self.mean("base", "esmm", "true_cvr_mean"))
    for estimator in ("ipw", "dr"):
      self.assertLess(self.mean("base", estimator, "abs_cvr_bias"), esmm)
      self.assertGreater(self.mean("base", estimator, "abs_cvr_bias"),
                         0.5 * esmm)
    verdict = self.summary["verdicts"]["base"]
    self.assertTrue(verdict["ipw"]["below_naive"])
    self.assertFalse(verdict["ipw"]["below_esmm"])
    self.assertFalse(verdict["dr"]["below_esmm"])

  def test_the_learnt_propensities_explain_the_remaining_bias(self):
    # Clicks reweighted by the learnt 1/pCTR still have a true CVR above the
    # entire-space mean by most of ESMM's bias, and IPW ends at that target;
    # the true propensities would recover the mean.
    truth = self.mean("base", "ipw", "true_cvr_mean")
    target_gap = self.mean("base", "ipw", "ips_true_cvr") - truth
    self.assertGreater(target_gap, 0.6 * self.mean("base", "esmm",
                                                   "cvr_bias"))
    self.assertAlmostEqual(self.mean("base", "ipw", "cvr_bias"), target_gap,
                           delta=0.25 * target_gap)
    self.assertAlmostEqual(self.mean("base", "ipw", "ips_true_cvr_oracle"),
                           truth, delta=0.05 * truth)
    # The CTR tower's AUC is past halfway from 0.5 to the oracle's
    # nonetheless.
    auc, oracle = (self.mean("base", "esmm", name)
                   for name in ("auc_ctr", "auc_ctr_oracle"))
    self.assertGreater(auc, 0.5 + 0.5 * (oracle - 0.5))

  def test_weak_selection_leaves_nothing_to_correct(self):
    # Clicks barely select converting impressions: the four estimators'
    # biases are alike, and no paired difference excludes zero.
    for estimator in ("ipw", "dr"):
      for reference in ("esmm", "naive"):
        difference = self.summary["paired"]["weak"][estimator][
            f"vs_{reference}"]["abs_bias"]
        self.assertLess(difference["low"], 0.0)
        self.assertGreater(difference["high"], 0.0)

  def test_low_ctr_halves_esmm_bias_but_just_misses_the_target(self):
    # With CTR 2 % ESMM over-estimates most (more than the true mean itself);
    # IPW and DR lower its bias in every paired comparison, against ESMM and
    # naive, and end at about half of it, but just above half.
    self.assertGreater(self.mean("ctr2", "esmm", "cvr_bias"),
                       self.mean("ctr2", "esmm", "true_cvr_mean"))
    verdict = self.summary["verdicts"]["ctr2"]
    for estimator in ("ipw", "dr"):
      self.assertEqual(verdict[estimator],
                       {"below_esmm": True, "below_naive": True}, estimator)
    self.assertGreater(verdict["better_over_esmm"], 0.5)
    self.assertLess(verdict["better_over_esmm"], 0.6)
    # IPW ends where the learnt propensities aim it, which here is about half
    # of ESMM's bias above the truth; the true propensities recover the mean.
    truth = self.mean("ctr2", "ipw", "true_cvr_mean")
    target_gap = self.mean("ctr2", "ipw", "ips_true_cvr") - truth
    self.assertLess(target_gap, 0.6 * self.mean("ctr2", "esmm", "cvr_bias"))
    self.assertAlmostEqual(self.mean("ctr2", "ipw", "cvr_bias"), target_gap,
                           delta=0.25 * target_gap)
    self.assertAlmostEqual(self.mean("ctr2", "ipw", "ips_true_cvr_oracle"),
                           truth, delta=0.05 * truth)

  def test_low_cvr_lowers_bias_consistently_but_little(self):
    # With CVR 1 % the paired differences are small but tight: three of the
    # four exclude zero, yet the better estimator keeps over 70 % of ESMM's
    # bias.
    verdict = self.summary["verdicts"]["cvr1"]
    self.assertEqual(verdict["ipw"], {"below_esmm": True, "below_naive": False})
    self.assertEqual(verdict["dr"], {"below_esmm": True, "below_naive": True})
    self.assertGreater(verdict["better_over_esmm"], 0.7)
    self.assertLess(verdict["better_over_esmm"], 0.9)


class ReliabilityCurveTest(parameterized.TestCase):

  def test_quantile_bins_average_prediction_and_truth(self):
    predictions = np.array([0.4, 0.1, 0.3, 0.2, 0.8, 0.6])
    truth = np.array([0.5, 0.0, 0.1, 0.2, 0.9, 0.3])
    curve = plotting.reliability_curve(predictions, truth, num_bins=2)
    np.testing.assert_allclose(curve["predicted"], [0.2, 0.6])
    np.testing.assert_allclose(curve["true"], [0.1, 1.7 / 3])
    np.testing.assert_array_equal(curve["count"], [3, 3])

  def test_counts_cover_every_impression(self):
    rng = np.random.default_rng(0)
    predictions = rng.random(1001)
    curve = plotting.reliability_curve(predictions, rng.random(1001),
                                       num_bins=7)
    self.assertEqual(curve["count"].sum(), 1001)
    self.assertLen(curve["count"], 7)
    self.assertTrue(np.all(np.diff(curve["predicted"]) > 0))
    # Each bin's mean prediction times its count adds up to the total.
    self.assertAlmostEqual((curve["predicted"] * curve["count"]).sum(),
                           predictions.sum())

  def test_tied_predictions_share_one_bin(self):
    curve = plotting.reliability_curve(np.full(10, 0.3), np.arange(10) / 10,
                                       num_bins=4)
    np.testing.assert_allclose(curve["predicted"], [0.3])
    np.testing.assert_allclose(curve["true"], [0.45])
    np.testing.assert_array_equal(curve["count"], [10])

  @parameterized.named_parameters(
      ("sizes_differ", np.zeros(3), np.zeros(4), 2),
      ("empty", np.zeros(0), np.zeros(0), 2),
      ("no_bins", np.zeros(3), np.zeros(3), 0))
  def test_rejects_bad_input(self, predictions, truth, num_bins):
    with self.assertRaises(ValueError):
      plotting.reliability_curve(predictions, truth, num_bins)


class FigureTest(absltest.TestCase):

  def test_history_draws_training_and_validation_lines(self):
    history = {"loss": [0.5, 0.4, 0.3], "val_loss": [0.6, 0.5, 0.5],
               "auc_ctr": [0.6, 0.7, 0.8]}
    fig = plotting.plot_history(history, {"loss": ["loss"],
                                          "auc": ["auc_ctr"]})
    loss_axes, auc_axes = fig.axes
    self.assertEqual([line.get_label() for line in loss_axes.lines],
                     ["loss", "val_loss"])
    np.testing.assert_allclose(loss_axes.lines[1].get_ydata(),
                               history["val_loss"])
    np.testing.assert_allclose(auc_axes.lines[0].get_xdata(), [1, 2, 3])
    self.assertLen(auc_axes.lines, 1)

  def test_history_rejects_an_unknown_metric(self):
    with self.assertRaisesRegex(KeyError, "auc_cvr"):
      plotting.plot_history({"loss": [1.0]}, {"auc": ["auc_cvr"]})

  def test_reliability_plots_the_diagonal_and_one_line_per_model(self):
    curves = {name: plotting.reliability_curve(np.linspace(0, 1, 20) * scale,
                                               np.linspace(0, 1, 20), 4)
              for name, scale in (("a", 1.0), ("b", 0.5))}
    ax = plotting.plot_reliability(curves).axes[0]
    self.assertEqual([line.get_label() for line in ax.lines],
                     ["perfect calibration", "a", "b"])
    np.testing.assert_allclose(ax.lines[2].get_xdata(),
                               curves["b"]["predicted"])

  def test_bars_grow_from_the_baseline_and_show_each_value(self):
    fig = plotting.plot_bars({"auc": {"x": 0.6, "y": 0.45},
                              "auc_truth": {"x": 0.7, "y": 0.5}},
                             baseline=0.5)
    auc_axes, _ = fig.axes
    np.testing.assert_allclose([bar.get_y() for bar in auc_axes.patches],
                               [0.5, 0.5])
    np.testing.assert_allclose([bar.get_height() for bar in
                                auc_axes.patches], [0.1, -0.05])
    self.assertEqual([text.get_text() for text in auc_axes.texts],
                     ["0.6000", "0.4500"])
    np.testing.assert_allclose(auc_axes.lines[0].get_ydata(), [0.5, 0.5])

  def test_bars_without_baseline_start_at_zero_unmarked(self):
    ax = plotting.plot_bars({"bias": {"x": 0.02, "y": -0.01}}).axes[0]
    np.testing.assert_allclose([bar.get_y() for bar in ax.patches],
                               [0.0, 0.0])
    np.testing.assert_allclose([bar.get_height() for bar in ax.patches],
                               [0.02, -0.01])
    self.assertEmpty(ax.lines)

  def test_series_rings_the_chosen_rounds(self):
    fig = plotting.plot_series({"a": [3.0, 1.0, 2.0]}, title="t", xlabel="x",
                               ylabel="y", chosen={"a": 1}, reference=0.0)
    reference, line, ring = fig.axes[0].lines
    np.testing.assert_allclose(reference.get_ydata(), [0.0, 0.0])
    np.testing.assert_allclose(line.get_ydata(), [3.0, 1.0, 2.0])
    np.testing.assert_allclose(ring.get_xydata(), [[2.0, 1.0]])

  def test_figures_render_to_png(self):
    fig = plotting.plot_bars({"p": {"x": 1.0}})
    path = os.path.join(_tempdir(self), "bars.png")
    fig.savefig(path)
    with open(path, "rb") as f:
      self.assertEqual(f.read(len(PNG_SIGNATURE)), PNG_SIGNATURE)


class MarkdownTableTest(absltest.TestCase):

  def test_rows_and_columns(self):
    table = plotting.markdown_table(
        {"ESMM": {"bias": 0.01234, "epochs": "1.25"},
         "DR": {"bias": -0.5, "epochs": "2.00"}},
        columns=["epochs", "bias"], digits=3)
    self.assertEqual(table.splitlines(), [
        "| | epochs | bias |",
        "|---|---:|---:|",
        "| ESMM | 1.25 | 0.012 |",
        "| DR | 2.00 | -0.500 |",
    ])

  def test_missing_column_names_the_row(self):
    with self.assertRaisesRegex(KeyError, re.escape("'DR' lacks column(s) "
                                                    "auc")):
      plotting.markdown_table({"DR": {"bias": 0.1}}, columns=["bias", "auc"])


if __name__ == "__main__":
  absltest.main()
