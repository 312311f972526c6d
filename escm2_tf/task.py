"""The ESCM2 task: the estimator a model is trained with, and what it reports.

As TensorFlow Recommenders separates them, the layers compute the outputs and
a task turns outputs and labels into the loss and its metrics. ``ESCM2Task``
owns everything about the estimator of a ``LossConfig``:

* the towers its outputs need (``tower_names``) and the outputs it reads
  (``output_names``; the names themselves are ``schema.CTR`` ... ``schema.
  IMPUTATION``, beside the labels, because the layers use them too);
* its risks, computed by the pure functions of ``escm2_tf.losses``, plus the
  observed risk and the regularisation (``compute_losses``);
* the names of the values it reports (``loss_names``) and the streaming
  metrics of progress bars and History (``metrics``).

``ESCM2Model.train_step`` and ``test_step`` call the task once per batch, so
training and evaluation report the same values under the same names.

Example:

  task = ESCM2Task(LossConfig(loss="dr"))
  values = task(labels, model(features))  # Updates task.metrics.
  values["loss"]                          # The total to minimise.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

from typing import Any, Mapping, Sequence

import tensorflow as tf
import tf_keras as keras

from escm2_tf import config as config_lib
from escm2_tf import losses
from escm2_tf import schema
from escm2_tf import streaming_auc

TOTAL_LOSS = "loss"
# L_ctr + L_ctcvr: the two risks every estimator fits on every impression,
# free of any lambda and of the counterfactual weights. Early stopping
# watches its validation value by default (docs/training.md).
OBSERVED_LOSS = "ctr_ctcvr_loss"
REGULARIZATION_LOSS = "regularization_loss"
# The risks ``losses.compute_losses`` returns for every estimator, and the
# one it adds for those that impute the CVR error.
RISK_NAMES = ("ctr_loss", "cvr_loss", "ctcvr_loss")
IMPUTATION_LOSS = "imputation_loss"


def tower_names(loss_config: config_lib.LossConfig) -> tuple[str, ...]:
  """The towers the estimator needs, in the order of the network's logits.

  CTR, CVR and, for the estimators of ``config_lib.IMPUTATION_LOSSES``, the
  imputation: dr's predicts the CVR cross-entropy (``schema.IMPUTATION``),
  dr_jl's and mrdr's a pseudo-label (``schema.PSEUDO_LABEL``). Either
  tower's output is ``schema.IMPUTATION``.
  """
  if loss_config.loss in config_lib.JOINT_LEARNING_LOSSES:
    return (schema.CTR, schema.CVR, schema.PSEUDO_LABEL)
  if loss_config.loss in config_lib.IMPUTATION_LOSSES:
    return (schema.CTR, schema.CVR, schema.IMPUTATION)
  return (schema.CTR, schema.CVR)


def risk_names(loss_config: config_lib.LossConfig) -> tuple[str, ...]:
  """The risks ``losses.compute_losses`` returns besides the total."""
  if loss_config.loss in config_lib.IMPUTATION_LOSSES:
    return RISK_NAMES + (IMPUTATION_LOSS,)
  return RISK_NAMES


@keras.saving.register_keras_serializable(package="escm2_tf")
class ESCM2Task(keras.layers.Layer):
  """An estimator's risks, their names and metrics, for one model.

  Call it with a batch's labels and the model's outputs: it returns every
  value of ``loss_names`` (``loss`` is the total to minimise) and updates the
  loss trackers and the streaming AUCs of ``metrics``.

  Example:

    task = ESCM2Task(LossConfig(loss="ipw"))
    labels = {"click": tf.constant([1., 0.]),
              "conversion": tf.constant([1., 0.])}
    outputs = {"ctr": tf.constant([.6, .2]), "cvr": tf.constant([.5, .1]),
               "ctcvr": tf.constant([.3, .02])}
    values = task(labels, outputs)  # {"loss": <float32 []>, ...}
    [m.name for m in task.metrics]  # loss, ctr_loss, ..., auc_ctcvr

  Attributes:
    loss_config: The estimator and its weights.
    regularized: Whether the model's own losses (``keras.Model.losses``, the
      embedding's L2 penalty) are added to the total and reported.
    loss_trackers: One ``keras.metrics.Mean`` per name of ``loss_names``.
    task_metrics: ``auc_ctr``, ``auc_cvr`` (clicked impressions only) and
      ``auc_ctcvr``, ``streaming_auc.TaskAUC``s.
  """

  def __init__(self, loss_config: config_lib.LossConfig, *,
               regularized: bool = False, **kwargs):
    kwargs.setdefault("name", "task")
    super().__init__(**kwargs)
    self.loss_config = loss_config
    self.regularized = regularized
    self.loss_trackers = [keras.metrics.Mean(name)
                          for name in self.loss_names]
    # Bucketed approximations for progress bars; final numbers are exact.
    self.task_metrics = [streaming_auc.TaskAUC(name)
                         for name in schema.OUTPUT_NAMES]

  @property
  def tower_names(self) -> tuple[str, ...]:
    """The towers, in the order of the network's logits."""
    return tower_names(self.loss_config)

  @property
  def output_names(self) -> tuple[str, ...]:
    """The model outputs the risks read."""
    if len(self.tower_names) > 2:
      return schema.OUTPUT_NAMES + (schema.IMPUTATION,)
    return schema.OUTPUT_NAMES

  @property
  def loss_names(self) -> tuple[str, ...]:
    """Every value ``call`` returns, in the order History lists them."""
    risks = risk_names(self.loss_config)
    names = ((TOTAL_LOSS,) + RISK_NAMES + (OBSERVED_LOSS,) +
             risks[len(RISK_NAMES):])
    if self.regularized:
      names += (REGULARIZATION_LOSS,)
    return names

  @property
  def metrics(self) -> list[keras.metrics.Metric]:
    return self.loss_trackers + self.task_metrics

  def compute_losses(self, labels: Mapping[str, tf.Tensor],
                     outputs: Mapping[str, tf.Tensor],
                     regularization_losses: Sequence[tf.Tensor] = ()
                     ) -> dict[str, tf.Tensor]:
    """Every value of ``loss_names`` for one batch; no metric is updated.

    Args:
      labels: ``{"click", "conversion"}`` float32 [B] (``losses.
        compute_losses`` says which estimators read more).
      outputs: The model's outputs, float32 [B] each.
      regularization_losses: The model's own scalar losses, summed into the
        total when ``regularized``.

    Returns:
      Scalars by name; ``loss`` is the total to minimise.
    """
    values = losses.compute_losses(self.loss_config, labels, outputs)
    values[OBSERVED_LOSS] = values["ctr_loss"] + values["ctcvr_loss"]
    if self.regularized:
      # A reduction, as losses.compute_losses sums the total.
      values[REGULARIZATION_LOSS] = tf.reduce_sum(
          tf.stack(list(regularization_losses)))
      values[TOTAL_LOSS] += values[REGULARIZATION_LOSS]
    return values

  def call(self, labels: Mapping[str, tf.Tensor],
           outputs: Mapping[str, tf.Tensor],
           regularization_losses: Sequence[tf.Tensor] = (),
           compute_metrics: bool = True) -> dict[str, tf.Tensor]:
    """``compute_losses``, recorded in ``metrics`` unless told otherwise."""
    values = self.compute_losses(labels, outputs, regularization_losses)
    if compute_metrics:
      for tracker in self.loss_trackers:
        tracker.update_state(values[tracker.name])
      for metric in self.task_metrics:
        metric.update_state(labels, outputs)
    return values

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(),
            "loss_config": config_lib.to_dict(self.loss_config),
            "regularized": self.regularized}

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> "ESCM2Task":
    config = dict(config)
    config["loss_config"] = config_lib.from_dict(config_lib.LossConfig,
                                                 config["loss_config"])
    return cls(**config)
