"""Tests of escm2_tf.losses against independent numpy transcriptions.

The reference functions below are written from the formulas in NOTES.md (the
paper's R_IPS, R_err, R_imp, DR-JL's and MRDR's risks, and PaddleRec's code as
described there); they do not call the TensorFlow implementation.
"""

import escm2_tf  # pylint: disable=unused-import  # Legacy Keras before TF.

import dataclasses
import functools
import math

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from escm2_tf import config as config_lib
from escm2_tf import losses

# A fixed batch: clicks with pCTR below the default clip (0.002, 0.0) and
# above it, a pCVR of 0 on a conversion (epsilon clip), imputations above 1.
CLICK = np.array([1, 0, 1, 1, 0, 1, 0, 1, 0, 0, 1, 0], np.float32)
CONVERSION = np.array([1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0], np.float32)
CTR = np.array([0.002, 0.04, 0.03, 0.6, 0.01, 0.2, 0.05, 0.02, 0.3, 0.0, 0.0,
                0.07], np.float32)
CVR = np.array([0.0, 0.1, 0.05, 0.7, 0.02, 0.3, 0.5, 0.01, 0.2, 0.4, 0.25,
                0.9], np.float32)
IMPUTATION = np.array([0.5, 0.1, 2.5, 0.2, 0.0, 1.2, 0.3, 0.05, 0.7, 0.0, 1.5,
                       3.0], np.float32)
# dr_jl's and mrdr's imputation: a pseudo-label per impression, in [0, 1].
PSEUDO_LABEL = np.array([0.9, 0.05, 0.3, 0.6, 0.0, 0.2, 0.7, 0.1, 0.4, 1.0,
                         0.5, 0.15], np.float32)
# Known click probabilities (propensity="label"), unlike CTR on every click.
P_CLICK = np.array([0.3, 0.05, 0.004, 0.5, 0.1, 0.08, 0.2, 0.6, 0.1, 0.02,
                    0.15, 0.3], np.float32)


def np_bce(y, p, eps):
  p = np.clip(p.astype(np.float64), eps, 1.0 - eps)
  return -(y * np.log(p) + (1.0 - y) * np.log(1.0 - p))


def np_paddle_log_loss(y, p):
  p = p.astype(np.float64)
  return -(y * np.log(p + 1e-4) + (1.0 - y) * np.log(1.0 - p + 1e-4))


def reference_losses(config, click, conversion, ctr, cvr, imputation,
                     p_click=P_CLICK):
  """NOTES.md's formulas in numpy, float64 (and SNIPS, docs/losses.md)."""
  click, conversion, imputation = (x.astype(np.float64)
                                   for x in (click, conversion, imputation))
  ctcvr = ctr.astype(np.float64) * cvr.astype(np.float64)
  if config.compat == "paper":
    log_loss = functools.partial(np_bce, eps=config.epsilon)
    ctcvr_label = click * conversion
  else:
    log_loss = np_paddle_log_loss
    ctcvr_label = conversion
  delta = log_loss(conversion, cvr)
  out = {"ctr_loss": log_loss(click, ctr).mean(),
         "ctcvr_loss": log_loss(ctcvr_label, ctcvr).mean()}
  imputation_weight = 0.0
  if config.loss in ("naive", "esmm"):
    clicks = click.sum()
    out["cvr_loss"] = (click * delta).sum() / clicks if clicks else 0.0
  elif config.compat == "paper":
    propensity = ctr if config.propensity == "model" else p_click
    w = 1.0 / np.maximum(propensity.astype(np.float64),
                         config.propensity_clip)
    if config.max_ips_weight is not None:
      w = np.minimum(w, config.max_ips_weight)
    if config.self_normalized:
      total = np.sum(click * w)
      def ips_mean(values):
        return np.sum(click * w * values) / total if total else 0.0
    else:
      def ips_mean(values):
        return np.mean(click * w * values)
    if config.loss == "ipw":
      out["cvr_loss"] = ips_mean(delta)
    elif config.loss in ("dr_jl", "mrdr"):
      # The imputation is the pseudo-label; the imputed error its BCE.
      e_hat = log_loss(imputation, cvr)
      out["cvr_loss"] = np.mean(e_hat) + ips_mean(delta - e_hat)
      extra = 1.0
      if config.loss == "mrdr":
        # The variance weights, scaled to DR-JL's total weight.
        variance = np.sum(click * w * (w - 1.0))
        extra = (w - 1.0) * (np.sum(click * w) / variance if variance else 0.0)
      out["imputation_loss"] = ips_mean(extra * (delta - e_hat)**2)
      imputation_weight = config.lambda_imp
    else:
      e = delta - imputation
      out["cvr_loss"] = np.mean(imputation) + ips_mean(e)
      out["imputation_loss"] = ips_mean(e**2)
      imputation_weight = config.lambda_imp
  elif config.loss == "ipw":
    w = np.minimum(1.0 / np.maximum(ctr * click.sum(), 1e-6), 15) * click.size
    out["cvr_loss"] = np.mean(w * click * delta)
  else:
    w = np.minimum(click / np.maximum(ctr.astype(np.float64), 1e-6), 15)
    e = delta - imputation
    out["cvr_loss"] = np.mean(imputation + w * e + w * e**2)
    out["imputation_loss"] = np.mean(w * e**2)
  cvr_weight = 0.0 if config.loss == "esmm" else config.lambda_c
  out["loss"] = (out["ctr_loss"] + cvr_weight * out["cvr_loss"] +
                 config.lambda_g * out["ctcvr_loss"] +
                 imputation_weight * out.get("imputation_loss", 0.0))
  return out


def tf_inputs(click=CLICK, conversion=CONVERSION, ctr=CTR, cvr=CVR,
              imputation=IMPUTATION):
  labels = {"click": tf.constant(click), "conversion": tf.constant(conversion),
            "p_click": tf.constant(P_CLICK)}
  outputs = {"ctr": tf.constant(ctr), "cvr": tf.constant(cvr),
             "ctcvr": tf.constant(ctr * cvr),
             "imputation": tf.constant(imputation)}
  return labels, outputs


def _all_modes():
  return [dict(testcase_name=f"{loss}_{compat}", loss=loss, compat=compat)
          for loss in config_lib.LOSSES for compat in config_lib.COMPAT_MODES
          if compat == "paper" or loss not in config_lib.JOINT_LEARNING_LOSSES]


class LossValueTest(tf.test.TestCase, parameterized.TestCase):

  def assert_matches_reference(self, config, **arrays):
    if config.loss in config_lib.JOINT_LEARNING_LOSSES:
      arrays.setdefault("imputation", PSEUDO_LABEL)
    labels, outputs = tf_inputs(**arrays)
    got = losses.compute_losses(config, labels, outputs)
    ref = reference_losses(config, labels["click"].numpy(),
                           labels["conversion"].numpy(), outputs["ctr"].numpy(),
                           outputs["cvr"].numpy(),
                           outputs["imputation"].numpy())
    self.assertCountEqual(got.keys(), ref.keys())
    for key, value in ref.items():
      self.assertEqual(got[key].dtype, tf.float32, key)
      self.assertEqual(got[key].shape.rank, 0, key)
      self.assertAllClose(got[key], value, rtol=1e-5, atol=1e-6, msg=key)

  @parameterized.named_parameters(*_all_modes())
  def test_defaults_match_reference(self, loss, compat):
    self.assert_matches_reference(
        config_lib.LossConfig(loss=loss, compat=compat))

  @parameterized.named_parameters(
      ("ipw_cap", "ipw", dict(max_ips_weight=30.0)),
      ("dr_cap", "dr", dict(max_ips_weight=30.0)),
      ("ipw_clip", "ipw", dict(propensity_clip=0.05)),
      ("dr_clip_cap_weights", "dr",
       dict(propensity_clip=0.001, max_ips_weight=100.0, lambda_c=0.7,
            lambda_g=2.0, lambda_imp=0.3)),
      ("ipw_no_stop", "ipw", dict(stop_ips_gradient=False, lambda_c=1.0)),
      ("naive_weights", "naive", dict(lambda_c=0.5, lambda_g=0.0)),
      ("esmm_epsilon", "esmm", dict(epsilon=1e-3, lambda_c=3.0)),
      ("ipw_label", "ipw", dict(propensity="label")),
      ("dr_label", "dr", dict(propensity="label", lambda_imp=0.5)),
      ("ipw_snips", "ipw", dict(self_normalized=True)),
      ("dr_snips", "dr", dict(self_normalized=True)),
      ("ipw_snips_label_cap", "ipw",
       dict(self_normalized=True, propensity="label", max_ips_weight=40.0)),
      ("dr_snips_label_clip", "dr",
       dict(self_normalized=True, propensity="label", propensity_clip=0.1)),
      ("dr_jl_clip_cap_weights", "dr_jl",
       dict(propensity_clip=0.001, max_ips_weight=100.0, lambda_c=0.7,
            lambda_g=2.0, lambda_imp=0.3)),
      ("mrdr_clip_cap_weights", "mrdr",
       dict(propensity_clip=0.001, max_ips_weight=100.0, lambda_c=0.7,
            lambda_g=2.0, lambda_imp=0.3)),
      ("dr_jl_snips_label", "dr_jl",
       dict(self_normalized=True, propensity="label")),
      ("mrdr_snips_label_clip", "mrdr",
       dict(self_normalized=True, propensity="label", propensity_clip=0.1)),
      ("mrdr_epsilon", "mrdr", dict(epsilon=1e-3)),
  )
  def test_options_match_reference(self, loss, options):
    self.assert_matches_reference(config_lib.LossConfig(loss=loss, **options))

  def test_snips_by_hand(self):
    # Clicks with weights 2 and 4: R = (2 ln 2 + 4 ln 4) / 6; IPS would
    # divide by |D| = 3 instead.
    labels = {"click": tf.constant([1.0, 1.0, 0.0]),
              "conversion": tf.constant([1.0, 1.0, 0.0])}
    outputs = {"ctr": tf.constant([0.5, 0.25, 0.1]),
               "cvr": tf.constant([0.5, 0.25, 0.1]),
               "ctcvr": tf.constant([0.25, 0.0625, 0.01])}
    for self_normalized, normalizer in ((True, 6.0), (False, 3.0)):
      config = config_lib.LossConfig(loss="ipw",
                                 self_normalized=self_normalized)
      got = losses.compute_losses(config, labels, outputs)
      self.assertAllClose(got["cvr_loss"],
                          (2 * math.log(2) + 4 * math.log(4)) / normalizer)


  def test_mrdr_imputation_weighs_as_much_as_dr_jl(self):
    # Clicks with pCTR 0.5 and 0.02 (w = 2 and 50; w·(w − 1) = 2 and 2450),
    # the same deviation δ − ê on both: scaled to DR-JL's total weight,
    # MRDR's R_imp equals DR-JL's, where unscaled it would be 2452 / 52
    # times larger. Its weights still differ: it puts 2450 / 2452 of them
    # on the unlikely click.
    labels = {"click": tf.constant([1.0, 1.0, 0.0, 0.0]),
              "conversion": tf.constant([0.0, 0.0, 0.0, 0.0])}
    ctr = tf.constant([0.5, 0.02, 0.1, 0.1])
    cvr = tf.fill([4], 0.2)
    outputs = {"ctr": ctr, "cvr": cvr, "ctcvr": ctr * cvr,
               "imputation": tf.fill([4], 0.4)}
    got = {loss: losses.compute_losses(config_lib.LossConfig(loss=loss),
                                       labels, outputs)["imputation_loss"]
           for loss in ("dr_jl", "mrdr")}
    deviation = math.log(0.8) - (0.4 * math.log(0.2) + 0.6 * math.log(0.8))
    self.assertAllClose(got["dr_jl"], 52 * deviation**2 / 4, rtol=1e-5)
    self.assertAllClose(got["mrdr"], got["dr_jl"], rtol=1e-5)
  def test_label_propensity_needs_the_label(self):
    labels, outputs = tf_inputs()
    del labels["p_click"]
    with self.assertRaisesRegex(ValueError, "p_click"):
      losses.compute_losses(config_lib.LossConfig(propensity="label"), labels,
                            outputs)

  @parameterized.parameters("ipw", "dr", "dr_jl", "mrdr")
  def test_snips_batch_without_clicks_is_finite(self, loss):
    no_click = np.zeros_like(CLICK)
    labels, outputs = tf_inputs(click=no_click, conversion=no_click)
    config = config_lib.LossConfig(loss=loss, self_normalized=True)
    cvr = tf.Variable(outputs["cvr"])
    with tf.GradientTape() as tape:
      outputs.update(cvr=cvr, ctcvr=outputs["ctr"] * cvr)
      got = losses.compute_losses(config, labels, outputs)
    self.assertTrue(np.all(np.isfinite(tape.gradient(got["loss"], cvr))))
    self.assert_matches_reference(config, click=no_click, conversion=no_click)

  @parameterized.parameters("ipw", "dr", "dr_jl", "mrdr")
  def test_fixed_batch_exercises_clip_and_cap(self, loss):
    labels, outputs = tf_inputs()
    def cvr_loss(**options):
      config = config_lib.LossConfig(loss=loss, **options)
      return float(losses.compute_losses(config, labels, outputs)["cvr_loss"])
    self.assertNotAlmostEqual(cvr_loss(), cvr_loss(propensity_clip=1e-3),
                              places=3)
    self.assertNotAlmostEqual(cvr_loss(), cvr_loss(max_ips_weight=30.0),
                              places=3)

  def test_ipw_by_hand(self):
    # delta_1 = ln 2 on the one click, weight 1 / 0.5, |D| = 2.
    config = config_lib.LossConfig(loss="ipw", lambda_c=0.5, lambda_g=1.0)
    got = losses.compute_losses(
        config, {"click": tf.constant([1.0, 0.0]),
                 "conversion": tf.constant([1.0, 0.0])},
        {"ctr": tf.constant([0.5, 0.25]), "cvr": tf.constant([0.5, 0.1]),
         "ctcvr": tf.constant([0.25, 0.025])})
    ctr_loss = (math.log(2) + math.log(4 / 3)) / 2
    ctcvr_loss = (math.log(4) - math.log(0.975)) / 2
    self.assertAllClose(got["cvr_loss"], math.log(2))
    self.assertAllClose(got["ctr_loss"], ctr_loss)
    self.assertAllClose(got["ctcvr_loss"], ctcvr_loss)
    self.assertAllClose(got["loss"], ctr_loss + 0.5 * math.log(2) + ctcvr_loss)

  def test_paddlerec_ipw_by_hand(self):
    # One click of two: weight min(1 / (0.5 * 1), 15) * 2 = 4.
    config = config_lib.LossConfig(loss="ipw", compat="paddlerec")
    got = losses.compute_losses(
        config, {"click": tf.constant([1.0, 0.0]),
                 "conversion": tf.constant([1.0, 0.0])},
        {"ctr": tf.constant([0.5, 0.25]), "cvr": tf.constant([0.5, 0.1]),
         "ctcvr": tf.constant([0.25, 0.025])})
    self.assertAllClose(got["cvr_loss"], 4 * -math.log(0.5 + 1e-4) / 2)

  @parameterized.named_parameters(*_all_modes())
  def test_batch_without_clicks_is_finite(self, loss, compat):
    config = config_lib.LossConfig(loss=loss, compat=compat)
    no_click = np.zeros_like(CLICK)
    labels, outputs = tf_inputs(click=no_click, conversion=no_click)
    variables = [tf.Variable(outputs[key]) for key in ("ctr", "cvr")]
    with tf.GradientTape() as tape:
      outputs.update(ctr=variables[0], cvr=variables[1],
                     ctcvr=variables[0] * variables[1])
      got = losses.compute_losses(config, labels, outputs)
    for key, value in got.items():
      self.assertTrue(np.isfinite(value.numpy()), key)
    for grad in tape.gradient(got["loss"], variables):
      self.assertAllEqual(np.isfinite(grad), np.ones_like(CTR, bool))
    if loss in ("naive", "esmm"):
      self.assertEqual(float(got["cvr_loss"]), 0.0)
    self.assert_matches_reference(config, click=no_click, conversion=no_click)

  @parameterized.named_parameters(*_all_modes())
  def test_xla_matches_eager(self, loss, compat):
    config = config_lib.LossConfig(loss=loss, compat=compat)
    labels, outputs = tf_inputs()
    compiled = tf.function(functools.partial(losses.compute_losses, config),
                           jit_compile=True)
    eager = losses.compute_losses(config, labels, outputs)
    for key, value in compiled(labels, outputs).items():
      self.assertAllClose(value, eager[key], rtol=1e-5, msg=key)


class IpsEstimateTest(tf.test.TestCase, parameterized.TestCase):
  """The entire-space CVR estimate that sets the refit's level."""

  @parameterized.parameters(
      dict(), dict(propensity="label"), dict(self_normalized=True),
      dict(propensity_clip=0.1), dict(max_ips_weight=20.0))
  def test_matches_numpy(self, **options):
    config = config_lib.LossConfig(loss="ipw", **options)
    propensity = (P_CLICK if config.propensity == "label" else CTR)
    w = 1.0 / np.maximum(propensity.astype(np.float64),
                         config.propensity_clip)
    if config.max_ips_weight is not None:
      w = np.minimum(w, config.max_ips_weight)
    normalizer = (np.sum(CLICK * w) if config.self_normalized
                  else CLICK.size)
    labels, outputs = tf_inputs()
    self.assertAllClose(losses.ips_estimate(config, labels, outputs),
                        np.sum(CLICK * CONVERSION * w) / normalizer)

  def test_by_hand(self):
    # Conversions on clicks of weight 1/0.5 and 1/0.25 among 4 impressions;
    # the unconverted click (weight 10) only enters SNIPS's normaliser.
    labels = {"click": tf.constant([1.0, 1.0, 1.0, 0.0]),
              "conversion": tf.constant([1.0, 1.0, 0.0, 1.0])}
    outputs = {"ctr": tf.constant([0.5, 0.25, 0.1, 0.9])}
    for self_normalized, expected in ((False, 6.0 / 4), (True, 6.0 / 16)):
      config = config_lib.LossConfig(loss="ipw",
                                     self_normalized=self_normalized)
      self.assertAllClose(losses.ips_estimate(config, labels, outputs),
                          expected)


class LossInputTest(tf.test.TestCase, parameterized.TestCase):

  def test_rank_two_labels_rejected(self):
    labels, outputs = tf_inputs()
    labels["click"] = labels["click"][:, None]
    with self.assertRaisesRegex(ValueError, r"labels\['click'\].*shape \[B\]"):
      losses.compute_losses(config_lib.LossConfig(), labels, outputs)

  def test_dr_without_imputation_rejected(self):
    labels, outputs = tf_inputs()
    del outputs["imputation"]
    with self.assertRaisesRegex(ValueError, "outputs lack 'imputation'"):
      losses.compute_losses(config_lib.LossConfig(loss="dr"), labels, outputs)

  @parameterized.named_parameters(
      ("loss", dict(loss="dcmt"), "loss"),
      ("compat", dict(compat="keras"), "compat"),
      ("negative_lambda_c", dict(lambda_c=-0.1), "lambda_c"),
      ("nan_lambda_g", dict(lambda_g=float("nan")), "lambda_g"),
      ("string_lambda_imp", dict(lambda_imp="1"), "lambda_imp"),
      ("zero_clip", dict(propensity_clip=0.0), "propensity_clip"),
      ("clip_above_one", dict(propensity_clip=1.5), "propensity_clip"),
      ("cap_below_one", dict(max_ips_weight=0.5), "max_ips_weight"),
      ("stop_not_bool", dict(stop_ips_gradient=1), "stop_ips_gradient"),
      ("paddlerec_stop_ctcvr", dict(compat="paddlerec",
                                    stop_ctcvr_gradient=True),
       "stop_ctcvr_gradient"),
      ("tiny_epsilon", dict(epsilon=1e-9), "epsilon"),
      ("paddlerec_clip", dict(compat="paddlerec", propensity_clip=0.05),
       "propensity_clip"),
      ("paddlerec_cap", dict(compat="paddlerec", max_ips_weight=15.0),
       "max_ips_weight"),
      ("paddlerec_epsilon", dict(compat="paddlerec", epsilon=1e-4),
       "epsilon"),
      ("paddlerec_lambda_imp", dict(compat="paddlerec", lambda_imp=0.5),
       "lambda_imp"),
      ("propensity", dict(propensity="oracle"), "propensity"),
      ("self_normalized_not_bool", dict(self_normalized=1),
       "self_normalized"),
      ("paddlerec_snips", dict(compat="paddlerec", self_normalized=True),
       "self_normalized"),
      ("paddlerec_label", dict(compat="paddlerec", propensity="label"),
       "propensity"),
      ("paddlerec_dr_jl", dict(compat="paddlerec", loss="dr_jl"), "loss"),
      ("paddlerec_mrdr", dict(compat="paddlerec", loss="mrdr"), "loss"),
  )
  def test_invalid_config(self, options, field):
    with self.assertRaises(config_lib.ConfigError) as caught:
      config_lib.LossConfig(**options)
    self.assertEqual(caught.exception.field, field)


def logit(p):
  return np.log(p / (1.0 - p)).astype(np.float32)


class GradientTest(tf.test.TestCase, parameterized.TestCase):
  """Variables stand in for the towers' logits and the imputation output."""

  # Moderate pCTRs, so that neither the propensity clip nor epsilon cuts the
  # gradient; one (0.004) still below the default propensity clip.
  ctr = np.array([0.3, 0.05, 0.6, 0.02, 0.1, 0.004, 0.5, 0.15], np.float32)
  cvr = np.array([0.2, 0.4, 0.1, 0.6, 0.3, 0.5, 0.05, 0.8], np.float32)
  click = np.array([1, 0, 1, 1, 0, 1, 0, 1], np.float32)
  conversion = np.array([1, 0, 0, 1, 0, 0, 0, 1], np.float32)
  imputation = np.array([0.5, 0.2, 1.5, 0.1, 0.3, 0.8, 0.0, 2.0], np.float32)

  def gradients(self, config, key="loss"):
    """d got[key] / d (ctr logits, cvr logits, imputation)."""
    variables = [tf.Variable(logit(self.ctr)), tf.Variable(logit(self.cvr)),
                 tf.Variable(self.imputation)]
    labels = {"click": tf.constant(self.click),
              "conversion": tf.constant(self.conversion)}
    with tf.GradientTape() as tape:
      ctr, cvr = tf.sigmoid(variables[0]), tf.sigmoid(variables[1])
      got = losses.compute_losses(config, labels, {
          "ctr": ctr, "cvr": cvr, "ctcvr": ctr * cvr,
          "imputation": variables[2]})
    grads = tape.gradient(got[key], variables,
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return [g.numpy() for g in grads]

  def ctcvr_grads(self, lambda_g):
    """lambda_g * d mean BCE(o r, s(a) s(b)) / d (a, b), by hand."""
    q = self.ctr.astype(np.float64) * self.cvr
    y = self.click * self.conversion
    dq = (q - y) / (q * (1 - q)) / self.ctr.size * lambda_g
    return (dq * self.cvr * self.ctr * (1 - self.ctr),
            dq * self.ctr * self.cvr * (1 - self.cvr))

  @parameterized.parameters("ipw", "dr")
  def test_ips_weight_passes_no_gradient_to_ctr(self, loss):
    config = config_lib.LossConfig(loss=loss, lambda_c=1.0, lambda_g=0.7)
    ctr_grad = self.gradients(config)[0]
    # d mean BCE(o, s(a)) / da = (s(a) - o) / B.
    expected = ((self.ctr - self.click) / self.ctr.size +
                self.ctcvr_grads(0.7)[0])
    self.assertAllClose(ctr_grad, expected, rtol=1e-4, atol=1e-7)
    free = dataclasses.replace(config, stop_ips_gradient=False)
    self.assertNotAllClose(self.gradients(free)[0], expected, atol=1e-4)

  @parameterized.parameters("naive", "esmm", "ipw", "dr_jl")
  def test_ctcvr_gradient_can_stop_at_ctr(self, loss):
    config = config_lib.LossConfig(loss=loss, lambda_c=1.0, lambda_g=0.7,
                                   stop_ctcvr_gradient=True)
    ctr_grad, cvr_grad, _ = self.gradients(config)
    # L_ctr alone moves the CTR logits; L_ctcvr still moves the CVR ones.
    self.assertAllClose(ctr_grad, (self.ctr - self.click) / self.ctr.size,
                        rtol=1e-4, atol=1e-7)
    joint = dataclasses.replace(config, stop_ctcvr_gradient=False)
    joint_ctr_grad, joint_cvr_grad, _ = self.gradients(joint)
    self.assertAllClose(ctr_grad + self.ctcvr_grads(0.7)[0], joint_ctr_grad,
                        rtol=1e-4, atol=1e-7)
    self.assertAllClose(cvr_grad, joint_cvr_grad, rtol=1e-5, atol=1e-8)

  def test_dr_decoupling(self):
    config = config_lib.LossConfig(loss="dr", lambda_c=0.6, lambda_g=0.7,
                               lambda_imp=0.4)
    _, cvr_grad, imputation_grad = self.gradients(config)
    w = 1.0 / np.maximum(self.ctr.astype(np.float64), config.propensity_clip)
    delta = np_bce(self.conversion, self.cvr, config.epsilon)
    size = self.ctr.size
    # lambda_imp * d R_imp / d imp with delta held constant.
    expected_imputation = (
        config.lambda_imp * -2 * self.click * w * (delta - self.imputation) /
        size)
    self.assertAllClose(imputation_grad, expected_imputation, rtol=1e-4,
                        atol=1e-7)
    # lambda_c * d R_err / d b with imp held constant (d delta / db = s(b) - r),
    # plus the CTCVR part.
    expected_cvr = (config.lambda_c * self.click * w *
                    (self.cvr - self.conversion) / size +
                    self.ctcvr_grads(config.lambda_g)[1])
    self.assertAllClose(cvr_grad, expected_cvr, rtol=1e-4, atol=1e-7)

  def test_esmm_moves_cvr_through_ctcvr_only(self):
    config = config_lib.LossConfig(loss="esmm", lambda_c=5.0, lambda_g=0.7)
    self.assertAllClose(self.gradients(config)[1], self.ctcvr_grads(0.7)[1],
                        rtol=1e-4, atol=1e-7)
    # The reported cvr_loss is a monitor only.
    self.assertAllEqual(self.gradients(config, "cvr_loss")[1],
                        np.zeros_like(self.cvr))

  def test_paddlerec_dr_trains_imputation_with_both_terms(self):
    config = config_lib.LossConfig(loss="dr", compat="paddlerec", lambda_c=0.5)
    imputation_grad = self.gradients(config)[2]
    w = np.minimum(self.click / np.maximum(self.ctr.astype(np.float64), 1e-6),
                   15)
    e = np_paddle_log_loss(self.conversion, self.cvr) - self.imputation
    size = self.ctr.size
    # d/d imp of mean(imp + w e + w e^2), e = delta - imp.
    self.assertAllClose(imputation_grad, 0.5 * (1 - w - 2 * w * e) / size,
                        rtol=1e-4, atol=1e-7)
    self.assertNotAllClose(imputation_grad, 0.5 * (-2 * w * e) / size,
                           atol=1e-4)

  def test_paddlerec_dr_trains_cvr_with_both_terms(self):
    config = config_lib.LossConfig(loss="dr", compat="paddlerec", lambda_c=0.5,
                               lambda_g=0.0)
    cvr_grad = self.gradients(config)[1]
    w = np.minimum(self.click / np.maximum(self.ctr.astype(np.float64), 1e-6),
                   15)
    p, r = self.cvr.astype(np.float64), self.conversion
    e = np_paddle_log_loss(r, self.cvr) - self.imputation
    # d delta / db for paddle's log loss, through p = s(b).
    d_delta = (-r / (p + 1e-4) + (1 - r) / (1 - p + 1e-4)) * p * (1 - p)
    expected = 0.5 * w * (1 + 2 * e) * d_delta / p.size
    self.assertAllClose(cvr_grad, expected, rtol=1e-4, atol=1e-7)


class JointLearningGradientTest(tf.test.TestCase, parameterized.TestCase):
  """dr_jl's and mrdr's gradients against finite differences of numpy.

  The numpy reference differentiated here computes each risk with the other
  model's output as a constant, as the papers' alternating steps do: R with
  the pseudo-label fixed, R_imp with the pCVR fixed. TensorFlow must give the
  same gradients in one step through its stop-gradients.
  """

  ctr = GradientTest.ctr
  cvr = GradientTest.cvr
  click = GradientTest.click
  conversion = GradientTest.conversion
  pseudo_label = np.array([0.6, 0.1, 0.35, 0.8, 0.05, 0.5, 0.25, 0.9],
                          np.float32)
  p_click = np.array([0.2, 0.3, 0.05, 0.4, 0.6, 0.03, 0.1, 0.7], np.float32)

  def tape_gradients(self, config):
    """d (loss, cvr_loss, imputation_loss) / d (cvr logits, imp. logits)."""
    variables = [tf.Variable(logit(self.cvr)),
                 tf.Variable(logit(self.pseudo_label))]
    labels = {"click": tf.constant(self.click),
              "conversion": tf.constant(self.conversion),
              "p_click": tf.constant(self.p_click)}
    with tf.GradientTape(persistent=True) as tape:
      ctr = tf.constant(self.ctr)
      cvr = tf.sigmoid(variables[0])
      got = losses.compute_losses(config, labels, {
          "ctr": ctr, "cvr": cvr, "ctcvr": ctr * cvr,
          "imputation": tf.sigmoid(variables[1])})
    return {key: [g.numpy() for g in tape.gradient(
        got[key], variables,
        unconnected_gradients=tf.UnconnectedGradients.ZERO)]
            for key in ("loss", "cvr_loss", "imputation_loss") if key in got}

  def reference(self, config, cvr_logits, pseudo_logits):
    sigmoid = lambda x: 1.0 / (1.0 + np.exp(-x))
    return reference_losses(config, self.click, self.conversion, self.ctr,
                            sigmoid(cvr_logits), sigmoid(pseudo_logits),
                            p_click=self.p_click)

  def finite_differences(self, config, key, wrt, step=1e-5):
    """Central differences of reference[key] in the logits of ``wrt``."""
    base = [logit(self.cvr).astype(np.float64),
            logit(self.pseudo_label).astype(np.float64)]
    grad = np.zeros_like(base[wrt])
    for i in range(grad.size):
      values = []
      for sign in (1.0, -1.0):
        moved = [x.copy() for x in base]
        moved[wrt][i] += sign * step
        values.append(self.reference(config, *moved)[key])
      grad[i] = (values[0] - values[1]) / (2 * step)
    return grad

  @parameterized.product(loss=("dr_jl", "mrdr"), self_normalized=(False, True),
                         propensity=("model", "label"))
  def test_gradients_match_numpy(self, loss, self_normalized, propensity):
    config = config_lib.LossConfig(
        loss=loss, lambda_c=0.6, lambda_g=0.7, lambda_imp=0.4,
        self_normalized=self_normalized, propensity=propensity)
    got = self.tape_gradients(config)
    cvr_risks = (config.lambda_c * self.finite_differences(config, "cvr_loss", 0)
                 + config.lambda_g *
                 self.finite_differences(config, "ctcvr_loss", 0))
    imputation_risk = config.lambda_imp * self.finite_differences(
        config, "imputation_loss", 1)
    self.assertAllClose(got["loss"][0], cvr_risks, rtol=1e-3, atol=1e-6)
    self.assertAllClose(got["loss"][1], imputation_risk, rtol=1e-3, atol=1e-6)
    # Each risk moves only its own model.
    self.assertAllEqual(got["imputation_loss"][0], np.zeros_like(self.cvr))
    self.assertAllEqual(got["cvr_loss"][1], np.zeros_like(self.cvr))

  @parameterized.parameters("dr_jl", "mrdr")
  def test_cvr_gradient_by_hand(self, loss):
    # d R / d b = 1/|D| [(1 - o w)(r^ - r~) + o w (r^ - r)] with sigmoid r^.
    config = config_lib.LossConfig(loss=loss, lambda_c=1.0, lambda_g=0.0)
    w = 1.0 / np.maximum(self.ctr.astype(np.float64), config.propensity_clip)
    ow = self.click * w
    expected = ((1 - ow) * (self.cvr - self.pseudo_label)
                + ow * (self.cvr - self.conversion)) / self.cvr.size
    self.assertAllClose(self.tape_gradients(config)["cvr_loss"][0], expected,
                        rtol=1e-4, atol=1e-7)

  @parameterized.parameters("dr_jl", "mrdr")
  def test_imputation_gradient_by_hand(self, loss):
    # d e^ / d r~ = -logit(r^), d r~ / d a = r~ (1 - r~); R_imp's weight is
    # o w, times (w - 1) for mrdr.
    config = config_lib.LossConfig(loss=loss)
    w = 1.0 / np.maximum(self.ctr.astype(np.float64), config.propensity_clip)
    weight = self.click * w
    if loss == "mrdr":
      variance = weight * (w - 1.0)
      weight = variance * weight.sum() / variance.sum()
    delta = np_bce(self.conversion, self.cvr, config.epsilon)
    e_hat = np_bce(self.pseudo_label, self.cvr, config.epsilon)
    r_tilde = self.pseudo_label.astype(np.float64)
    expected = (2 * weight * (delta - e_hat) * logit(self.cvr) * r_tilde *
                (1 - r_tilde)) / self.cvr.size
    self.assertAllClose(self.tape_gradients(config)["imputation_loss"][1],
                        expected, rtol=1e-4, atol=1e-7)
    if loss == "dr_jl":
      mrdr = self.tape_gradients(dataclasses.replace(config, loss="mrdr"))
      self.assertNotAllClose(mrdr["imputation_loss"][1], expected, atol=1e-3)

  @parameterized.named_parameters(
      ("ipw", "ipw", False), ("dr", "dr", False),
      ("dr_jl", "dr_jl", True), ("mrdr", "mrdr", True))
  def test_unclicked_impressions_move_the_cvr_tower(self, loss, moves):
    # lambda_g = 0: only the CVR risk reaches the CVR logits.
    config = config_lib.LossConfig(loss=loss, lambda_c=1.0, lambda_g=0.0)
    cvr_grad = self.tape_gradients(config)["loss"][0]
    unclicked = cvr_grad[self.click == 0]
    if moves:
      self.assertTrue(np.all(np.abs(unclicked) > 1e-4), unclicked)
    else:
      self.assertAllEqual(unclicked, np.zeros_like(unclicked))
    self.assertTrue(np.all(np.abs(cvr_grad[self.click == 1]) > 1e-4))


if __name__ == "__main__":
  absltest.main()
