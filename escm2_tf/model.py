"""The ESCM2 Keras model: a functional network inside a training wrapper.

``build_model`` returns an ``ESCM2Model`` whose ``call`` takes a dict of raw-id
ragged tensors (the vocabulary lookup is in the graph, so training and serving
cannot skew) and returns ``{"ctr", "cvr", "ctcvr"}`` (+ ``"imputation"`` for
the doubly robust losses), float32 [B]. Its ``train_step``/``test_step``
call its ``task`` (``escm2_tf.task.ESCM2Task``: the estimator's risks and
metrics), so a plain ``model.compile(optimizer=...)`` and
``model.fit(dataset)`` train it.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

from typing import Any, Mapping

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from escm2_tf import base_rates as base_rates_lib
from escm2_tf import config as config_lib
from escm2_tf import layers
from escm2_tf import schema
from escm2_tf import task as task_lib

Features = Mapping[str, tf.RaggedTensor | tf.Tensor]
Outputs = dict[str, tf.Tensor]


def _embedding_initializer(config: config_lib.ModelConfig, seed: int | None
                           ) -> keras.initializers.Initializer:
  scale = config.embedding_init_scale
  if config.embedding_initializer == "uniform":
    return keras.initializers.RandomUniform(-scale, scale, seed=seed)
  if config.embedding_initializer == "normal":
    return keras.initializers.RandomNormal(stddev=scale, seed=seed)
  return keras.initializers.TruncatedNormal(stddev=scale, seed=seed)


def _mlp(config: config_lib.ModelConfig, inputs: tf.Tensor, seed: int | None,
         seed_offset: int) -> tf.Tensor:
  hidden = inputs
  for index, units in enumerate(config.bottom_units):
    hidden = keras.layers.Dense(
        units, activation=config.activation, name=f"bottom_{index}",
        kernel_initializer=keras.initializers.GlorotUniform(
            layers.offset_seed(seed, seed_offset + 2 * index)))(hidden)
    if config.dropout:
      hidden = keras.layers.Dropout(
          config.dropout,
          seed=layers.offset_seed(seed, seed_offset + 2 * index + 1),
          name=f"bottom_dropout_{index}")(hidden)
  return hidden


def _backbone(config: config_lib.ModelConfig, num_tasks: int,
              inputs: tf.Tensor, seed: int | None) -> tf.Tensor:
  """[B, I] -> [B, num_tasks, H] (mmoe) or [B, H] (shared by all towers)."""
  if config.backbone == "mmoe":
    return layers.MMoE(config.num_experts, config.expert_units, num_tasks,
                       activation=config.activation, dropout=config.dropout,
                       seed=layers.offset_seed(seed, 100),
                       name="mmoe")(inputs)
  if config.backbone == "shared_bottom":
    return _mlp(config, inputs, seed, seed_offset=100)
  crossed = inputs
  for index in range(config.num_cross_layers):
    crossed = tfrs.layers.dcn.Cross(
        projection_dim=config.cross_projection_dim, name=f"cross_{index}",
        kernel_initializer=keras.initializers.TruncatedNormal(
            stddev=0.05, seed=layers.offset_seed(seed, 100 + index)))(
                inputs, crossed)
  return _mlp(config, crossed, seed, seed_offset=200)


def model_inputs(config: config_lib.ModelConfig) -> dict[str, tf.Tensor]:
  """One ragged ``keras.Input`` per field, plus weights when they are used."""
  inputs = {field: keras.Input(shape=(None,), dtype=tf.int64, ragged=True,
                               name=field)
            for field in schema.FIELD_NAMES}
  if config.use_weights:
    inputs.update({name: keras.Input(shape=(None,), dtype=tf.float32,
                                     ragged=True, name=name)
                   for name in schema.WEIGHT_NAMES})
  return inputs


# The layers branch on Python values only (shapes, settings): without this,
# Keras has autograph rewrite every layer's call when the network is built.
# With the scoring and serving functions' autograph=False, that leaves a run
# of configs/paddlerec.flags 0.17 s of autograph instead of 0.79 s.
@tf.autograph.experimental.do_not_convert
def build_network(model_config: config_lib.ModelConfig,
                  loss_config: config_lib.LossConfig,
                  vocabularies: Mapping[str, np.ndarray],
                  base_rates: base_rates_lib.BaseRates | None = None,
                  seed: int | None = None) -> keras.Model:
  """The functional graph: raw ids -> lookup, pooling, backbone, towers.

  With ``base_rates`` the towers' output biases start at
  ``base_rates.output_biases``; without, at 0. ``seed`` seeds the
  initialisers and dropout (``build_model``).
  """
  missing = [f for f in schema.FIELD_NAMES if f not in vocabularies]
  if missing:
    raise ValueError(f"No vocabulary for field(s) {', '.join(missing)}.")
  towers = task_lib.tower_names(loss_config)
  num_tasks = len(towers)
  inputs = model_inputs(model_config)
  embedded = layers.FusedEmbedding(
      {f: vocabularies[f] for f in schema.FIELD_NAMES},
      model_config.embedding_dim, oov_buckets=model_config.oov_buckets,
      pooling=model_config.pooling, use_weights=model_config.use_weights,
      initializer=_embedding_initializer(model_config, seed),
      l2=model_config.embedding_l2, name="embedding")(inputs)
  if model_config.embedding_dropout:
    embedded = keras.layers.Dropout(
        model_config.embedding_dropout,
        seed=layers.offset_seed(seed, 1),
        name="embedding_dropout")(embedded)
  hidden = _backbone(model_config, num_tasks, embedded, seed)
  logits = layers.TaskTowers(
      num_tasks, model_config.tower_units, activation=model_config.activation,
      dropout=model_config.dropout,
      seed=layers.offset_seed(seed, 300),
      output_biases=(None if base_rates is None else
                     base_rates.output_biases(towers)),
      name="towers")(hidden)
  outputs = layers.Heads(num_tasks == 3,
                         pseudo_label=schema.PSEUDO_LABEL in towers,
                         name="heads")(logits)
  return keras.Model(inputs=inputs, outputs=outputs, name="escm2_network")


class ESCM2Model(keras.Model):
  """The network plus ESCM2's training and evaluation steps.

  ``train_step`` and ``test_step`` run the network and hand its outputs to
  ``task``, which returns the losses and updates the metrics; ``call`` and
  ``predict_step`` (and the serving signatures) run the network alone.

  Attributes:
    network: The functional graph that ``call`` runs.
    model_config: The ``ModelConfig`` it was built from.
    task: The ``ESCM2Task`` of its ``LossConfig``: the risks its steps
      minimise and report, and the metrics.
  """

  def __init__(self, network: keras.Model,
               model_config: config_lib.ModelConfig,
               loss_config: config_lib.LossConfig, **kwargs):
    super().__init__(**kwargs)
    self.network = network
    self.model_config = model_config
    self.task = task_lib.ESCM2Task(
        loss_config, regularized=bool(model_config.embedding_l2))
    # Checkpoints hold the metrics' state under these two names; keeping them
    # keeps checkpoints written before the task existed restorable.
    self.loss_trackers = self.task.loss_trackers
    self.task_metrics = self.task.task_metrics
    # The save spec would otherwise be the first batch's structure, extra
    # features (sample_id, unused weights) included.
    self._set_save_spec({name: tensor.type_spec for name, tensor in
                         zip(network.input_names, network.inputs)})

  @property
  def metrics(self) -> list[keras.metrics.Metric]:
    # Listing them is what makes fit/evaluate reset them every epoch.
    return self.task.metrics

  @property
  def loss_config(self) -> config_lib.LossConfig:
    """The estimator its steps minimise."""
    return self.task.loss_config

  def call(self, features: Features, training: bool | None = None) -> Outputs:
    missing = [n for n in self.network.input_names if n not in features]
    if missing:
      raise ValueError(f"The model's input lacks feature(s) "
                       f"{', '.join(missing)}.")
    return self.network({name: features[name]
                         for name in self.network.input_names},
                        training=training)

  def compute_loss_values(self, data: Any, training: bool = False
                          ) -> tuple[dict[str, tf.Tensor], Outputs]:
    """The one step both ``train_step`` and ``test_step`` take.

    Runs the network on a ``(features, labels)`` batch and its task on the
    outputs, which updates the metrics.

    Returns:
      The task's values by name (``loss`` is the total) and the outputs.
    """
    features, labels = self._unpack(data)
    outputs = self(features, training=training)
    return self.task(labels, outputs, self.losses), outputs

  def _unpack(self, data: Any) -> tuple[Features, Mapping[str, tf.Tensor]]:
    features, labels, sample_weight = keras.utils.unpack_x_y_sample_weight(
        data)
    if sample_weight is not None:
      raise ValueError("ESCM2Model takes (features, labels) batches; the "
                       "losses weigh impressions themselves, so sample "
                       "weights are not supported.")
    return features, labels

  def _results(self) -> dict[str, tf.Tensor]:
    return {metric.name: metric.result() for metric in self.metrics}

  # The steps branch on Python values only: autograph's conversion of the
  # network, the risks and the optimizer would only lengthen the tracing
  # of the first epoch.
  @tf.autograph.experimental.do_not_convert
  def train_step(self, data: Any) -> dict[str, tf.Tensor]:
    with tf.GradientTape() as tape:
      values, _ = self.compute_loss_values(data, training=True)
      # Synchronous replicas sum their gradients; scale so that the step is
      # the one-replica step of the global batch.
      replica_loss = (values[task_lib.TOTAL_LOSS] /
                      self.distribute_strategy.num_replicas_in_sync)
    self.optimizer.minimize(replica_loss, self.trainable_variables, tape=tape)
    return self._results()

  @tf.autograph.experimental.do_not_convert
  def test_step(self, data: Any) -> dict[str, tf.Tensor]:
    self.compute_loss_values(data, training=False)
    return self._results()

  @tf.autograph.experimental.do_not_convert
  def predict_step(self, data: Any) -> Outputs:
    features, _, _ = keras.utils.unpack_x_y_sample_weight(data)
    return self(features, training=False)

  def get_config(self) -> dict[str, Any]:
    return {"model_config": config_lib.to_dict(self.model_config),
            "loss_config": config_lib.to_dict(self.loss_config)}

  @classmethod
  def from_config(cls, config: Mapping[str, Any], custom_objects=None):
    raise NotImplementedError(
        "An ESCM2Model cannot be rebuilt from its config alone: it needs the "
        "vocabularies. Call build_model(config.model, config.loss, "
        "vocab.load_vocabularies(...)) with the run's config "
        "(run_dir.load_config) and restore the weights.")

  def compile(self, optimizer="rmsprop", loss=None, metrics=None,
              jit_compile: bool | None = None, **kwargs):
    """``keras.Model.compile`` with the losses and metrics built in.

    The loss and the metrics come from the model's ``task``; passing others
    would be silently ignored by the custom steps, so it is an error. XLA is refused: the vocabulary
    lookup (a hash table) has no XLA kernel. The optimizer's variables are
    created here.
    """
    if loss is not None or metrics is not None:
      raise ValueError(
          "ESCM2Model.compile takes no loss or metrics: the loss comes from "
          "the model's LossConfig and the metrics are built in.")
    if jit_compile:
      raise ValueError(
          "ESCM2Model cannot compile with jit_compile=True: its vocabulary "
          "lookup (a hash table) has no XLA kernel. Leave jit_compile unset.")
    super().compile(optimizer=optimizer, jit_compile=False, **kwargs)
    # The optimizer's slots now rather than in the first step: a step that
    # creates variables is traced twice, once to create them and once to
    # run, and the trace is most of what a first epoch costs more. Keras'
    # legacy optimizers have no build; they keep the double trace.
    if isinstance(self.optimizer, keras.optimizers.Optimizer):
      self.optimizer.build(self.trainable_variables)


def build_model(model_config: config_lib.ModelConfig,
                loss_config: config_lib.LossConfig,
                vocabularies: Mapping[str, np.ndarray], *,
                base_rates: base_rates_lib.BaseRates | None = None,
                seed: int | None = None) -> ESCM2Model:
  """The ESCM2 model for these configs and per-field vocabularies.

  Args:
    model_config: The network.
    loss_config: The estimator its ``train_step`` minimises; ``dr``,
      ``dr_jl`` and ``mrdr`` add the imputation tower.
    vocabularies: Field name -> raw ids (``vocab.load_vocabularies``), for
      every field of ``schema.FIELD_NAMES``.
    base_rates: The training data's click and post-click conversion rates
      (``base_rates.read_base_rates(layout.stats_beside(vocab_dir))``):
      the towers' output biases start at their log-odds, so the model starts
      calibrated (``escm2-train`` does this by default). ``None`` starts them
      at 0, a prediction of 0.5.
    seed: Seeds the initialisers and dropout, so equal seeds give equal
      weights; ``None`` leaves them to the global random state.

  Returns:
    An ``ESCM2Model``, ready for ``compile(optimizer=...)`` and ``fit``.
  """
  network = build_network(model_config, loss_config, vocabularies,
                          base_rates, seed)
  return ESCM2Model(network, model_config, loss_config, name="escm2")
