"""Configuration: one experiment, in sections.

An ``ExperimentConfig`` is what ``escm2-train`` runs: ``RuntimeConfig`` (seed,
determinism, distribution strategy), ``DataConfig`` (the data), ``ModelConfig``
(only the network), ``LossConfig`` (how ``escm2_tf.losses.compute_losses``
weighs the risks) and ``TrainerConfig`` (outputs, schedule, optimizer). Each
field is declared once (``escm2_tf.options``) and is the flag of its name
(``escm2_tf.flagbind``). Nothing here imports TensorFlow, so the CLIs check
their flags before it loads. The trainer writes ``ExperimentConfig.to_dict()``
into ``model_dir/config.json``; export reads it back with ``from_dict``.
"""

import dataclasses
import math
import typing
from typing import Any, Mapping

from escm2_tf import options
from escm2_tf.options import ConfigError
from escm2_tf.options import option

BACKBONES = ("mmoe", "shared_bottom", "dcn")
POOLINGS = ("sum", "mean")
EMBEDDING_INITIALIZERS = ("uniform", "normal", "truncated_normal")
ACTIVATIONS = ("relu", "gelu", "swish", "tanh")
# Names the trainer accepts; escm2_tf.optimizers and escm2_tf.distribute
# implement them. Here so that configs check without importing TensorFlow.
ADAM = "adam"
LAZY_ADAM = "lazy_adam"
SPARSE_ADAM = "sparse_adam"
OPTIMIZERS = (ADAM, LAZY_ADAM, SPARSE_ADAM)
DEFAULT_STRATEGY = "default"
MIRRORED = "mirrored"
MULTI_WORKER_MIRRORED = "multi_worker_mirrored"
PARAMETER_SERVER = "parameter_server"
STRATEGIES = (DEFAULT_STRATEGY, MIRRORED, MULTI_WORKER_MIRRORED,
              PARAMETER_SERVER)
# Smaller variables stay whole: every shard costs a remote call per step.
DEFAULT_MIN_SHARD_BYTES = 256 << 10
# What escm2-predict reads (escm2_tf.scoring).
SCORING_INPUT_FORMATS = ("tfrecord", "paddlerec", "aliccp")
LOSSES = ("naive", "esmm", "ipw", "dr", "dr_jl", "mrdr")
# The doubly robust estimators whose imputation tower predicts a pseudo-label;
# PaddleRec has neither.
JOINT_LEARNING_LOSSES = ("dr_jl", "mrdr")
# The estimators with an imputation tower (output ``schema.IMPUTATION``): a
# predicted error for dr, a pseudo-label for the joint-learning ones.
IMPUTATION_LOSSES = ("dr",) + JOINT_LEARNING_LOSSES
COMPAT_MODES = ("paper", "paddlerec")
PROPENSITIES = ("model", "label")
# Below this, 1 - epsilon rounds to 1 in float32 and log(1 - p) is -inf.
_MIN_EPSILON = 1e-7
# PaddleRec hard-codes these; under compat="paddlerec" they would be ignored.
_PAPER_ONLY_FIELDS = ("lambda_imp", "propensity_clip", "max_ips_weight",
                      "stop_ips_gradient", "stop_ctcvr_gradient", "epsilon",
                      "propensity", "self_normalized")
# Holding out more than half of the training data leaves too little to train.
MAX_VALIDATION_FRACTION = 0.5


def _check_units(name: str, value: Any, allow_empty: bool) -> tuple[int, ...]:
  if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
    raise ConfigError(name, "must be a sequence of positive integers, got "
                      f"{value!r}")
  units = tuple(value)
  if not units and not allow_empty:
    raise ConfigError(name, "must name at least one layer size")
  for unit in units:
    if not options.is_number(unit, integer=True) or unit <= 0:
      raise ConfigError(name, f"must hold positive integers, got {value!r}")
  return units


def _check_fraction(name: str, value: Any) -> None:
  if not options.is_number(value) or not 0.0 <= value < 1.0:
    raise ConfigError(name, f"must be a number in [0, 1), got {value!r}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The ESCM2 network.

  Attributes:
    embedding_dim: Width of every field's embedding (PaddleRec: 12).
    backbone: ``"mmoe"`` (the paper's and PaddleRec's), ``"shared_bottom"``
      (an MLP shared by the towers) or ``"dcn"`` (cross layers, then an MLP).
    num_experts: MMoE experts (PaddleRec: 8).
    expert_units: Layer sizes of each MMoE expert (PaddleRec: one of 16).
    bottom_units: Layer sizes of the shared MLP of ``shared_bottom`` and
      ``dcn``.
    num_cross_layers: Cross layers of ``dcn``.
    cross_projection_dim: Low-rank projection of the DCN-v2 cross layers;
      ``None`` for full rank.
    tower_units: Hidden layer sizes of each task tower (PaddleRec: 8); every
      tower ends in one logit.
    pooling: How a field's ids are pooled, ``"sum"`` or ``"mean"``.
    use_weights: Whether the behaviour fields' values weight their ids in the
      pooling (``schema.WEIGHTED_FIELDS``); the model then takes their
      ``<field>_w`` inputs too.
    oov_buckets: Embedding rows per field for ids outside its vocabulary;
      an unknown id goes to row ``id mod oov_buckets`` of its field's block.
    embedding_initializer: ``"uniform"`` in ``[-scale, scale]``, or
      ``"normal"``/``"truncated_normal"`` with stddev ``scale``.
    embedding_init_scale: The ``scale`` above.
    embedding_l2: L2 penalty on the embedding rows a batch looks up (sum of
      squares per example, averaged over the batch). Penalising only the rows
      in use keeps the gradient sparse; sparse ids memorise quickly, so this
      is the first knob against overfitting after one or two epochs.
    embedding_dropout: Dropout rate on the pooled field embeddings.
    dropout: Dropout rate after every hidden layer of backbone and towers.
    activation: Hidden-layer activation.
  """
  embedding_dim: int = option(12, minimum=1)
  backbone: str = option("mmoe", choices=BACKBONES)
  num_experts: int = option(8, minimum=1)
  expert_units: tuple[int, ...] = (16,)
  bottom_units: tuple[int, ...] = (64, 32)
  num_cross_layers: int = option(2, minimum=1)
  cross_projection_dim: int | None = option(None, minimum=1)
  tower_units: tuple[int, ...] = (8,)
  pooling: str = option("sum", choices=POOLINGS)
  use_weights: bool = False
  oov_buckets: int = option(1, minimum=1)
  embedding_initializer: str = option("uniform",
                                      choices=EMBEDDING_INITIALIZERS)
  embedding_init_scale: float = option(
      0.05, minimum=0.0, help="Range (uniform) or stddev of the embedding "
      "initialiser.")
  embedding_l2: float = option(0.0, minimum=0.0)
  embedding_dropout: float = 0.0
  dropout: float = 0.0
  activation: str = option("relu", choices=ACTIVATIONS)

  def __post_init__(self):
    options.check_declared(self)
    # Lists arrive from JSON; tuples keep the config hashable and immutable.
    object.__setattr__(self, "expert_units",
                       _check_units("expert_units", self.expert_units, False))
    object.__setattr__(self, "bottom_units",
                       _check_units("bottom_units", self.bottom_units, False))
    object.__setattr__(self, "tower_units",
                       _check_units("tower_units", self.tower_units, True))
    if self.embedding_init_scale == 0:
      raise ConfigError("embedding_init_scale", "must be a positive number, "
                        f"got {self.embedding_init_scale!r}")
    _check_fraction("embedding_dropout", self.embedding_dropout)
    _check_fraction("dropout", self.dropout)


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """How ``compute_losses`` weighs and estimates the three risks.

  Attributes:
    loss: ``"naive"`` (CVR on clicks only), ``"esmm"`` (CVR only through
      CTCVR), ``"ipw"`` or ``"dr"`` (ESCM2's counterfactual risks), or
      ``"dr_jl"`` or ``"mrdr"`` (doubly robust joint learning, with the
      imputed error a function of the CVR prediction; paper mode only).
    lambda_c: Weight of the CVR / counterfactual risk. The paper tunes it small
      (about 0.1 to 1); 0.1 is the default.
    lambda_g: Weight of the global CTCVR risk; the paper's tuned value is 1.
    lambda_imp: Weight of the imputation risk R_imp (paper mode, ``dr``,
      ``dr_jl``, ``mrdr``).
      R_imp reaches the CVR tower only through the shared layers, where at
      weight 1 it is 20-35 times the CVR risk: measured on 250k simulated
      impressions (docs/results.md), weight 1 raised the entire-space CVR bias
      from +0.0145 to +0.0171 and cost 0.02 CVR and CTR AUC, while 0.1 matched
      weight 0. Hence 0.1.
    propensity_clip: ô is raised to at least this before it is inverted, so
      one IPS weight is at most 1 / propensity_clip. With CTR about 4 % the
      typical clicked weight is about 25; the default 0.01 caps weights at 100,
      four times that, so clipping touches only the tail of clicks whose pCTR
      is under a quarter of the mean, where a single weight would otherwise
      dominate the batch's variance, and leaves the bulk unbiased.
    max_ips_weight: Optional further cap on 1/ô (at least 1); None for none.
    stop_ips_gradient: If True the IPS weight passes no gradient into the CTR
      tower, which is then trained by L_ctr and L_ctcvr only; otherwise the
      counterfactual risk can lower itself by raising ô on clicks.
    stop_ctcvr_gradient: If True the global risk L_ctcvr passes no gradient
      into the CTR output (ô is a constant in ô·r̂): L_ctr alone fits ô, to
      the clicks, and L_ctcvr trains the CVR tower. Otherwise every
      conversion is a second positive label for ô as well.
    propensity: Where the click propensity ô of the IPS weight comes from:
      ``"model"``, the CTR tower's pCTR (ESCM2), or ``"label"``, a known
      propensity in ``labels["p_click"]`` (the simulator's true click
      probability). ``"label"`` checks the estimator apart from the
      propensity model (tests/test_oracle_propensity.py); the trainer's
      TFRecords carry no such label.
    self_normalized: Self-normalised IPS (SNIPS): every sum weighted by
      o/ô is divided by the batch's sum of o/ô instead of by |D|. Bounded by
      the largest δ, at the price of a bias of order 1/clicks per batch; off
      by default (docs/losses.md has the measurement).
    compat: ``"paper"`` or ``"paddlerec"``. PaddleRec hard-codes its epsilon,
      clip, cap and stop-gradient, so the paper-only fields above must keep
      their defaults under ``"paddlerec"``.
    epsilon: Probabilities are clipped to [epsilon, 1 - epsilon] in every BCE.
  """
  loss: str = option("ipw", choices=LOSSES)
  lambda_c: float = option(0.1, minimum=0.0)
  lambda_g: float = option(1.0, minimum=0.0)
  lambda_imp: float = option(0.1, minimum=0.0)
  propensity_clip: float = option(0.01, minimum=0.0, maximum=1.0)
  max_ips_weight: float | None = option(None, minimum=1.0)
  stop_ips_gradient: bool = True
  stop_ctcvr_gradient: bool = False
  propensity: str = option(
      "model", choices=PROPENSITIES,
      help="The IPS weight's click propensity: the CTR tower's pCTR (model) "
      "or a known p_click label (label; escm2-train's data carry none).")
  self_normalized: bool = False
  compat: str = option("paper", choices=COMPAT_MODES,
                       help="The paper's losses, or PaddleRec's escm2 losses.")
  epsilon: float = option(1e-7, minimum=_MIN_EPSILON, maximum=0.5)

  def __post_init__(self):
    options.check_declared(self)
    if not self.propensity_clip > 0.0:
      raise ConfigError("propensity_clip", "must be a number in (0, 1], got "
                        f"{self.propensity_clip!r}")
    if self.compat == "paddlerec":
      if self.loss in JOINT_LEARNING_LOSSES:
        raise ConfigError(
            "loss", f"{self.loss!r} exists only in paper mode: PaddleRec "
            "has no such estimator; use --compat=paper")
      for field in dataclasses.fields(self):
        value = getattr(self, field.name)
        if field.name in _PAPER_ONLY_FIELDS and value != field.default:
          raise ConfigError(
              field.name, f"{value!r} has no effect with --compat=paddlerec, "
              "which hard-codes PaddleRec's constants; keep the default "
              f"{field.default!r} or use --compat=paper")



def _check_required(config: Any, names: tuple[str, ...]) -> None:
  for name in names:
    if not getattr(config, name):
      raise ConfigError(name, "is required")


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
  """Where and how reproducibly a run executes.

  Attributes:
    seed: Seeds the weights, dropout and shuffles: equal seeds, equal models.
    deterministic: Also makes TensorFlow's ops deterministic (process-wide).
    distribution_strategy: ``default`` (this process), ``mirrored`` (this
      machine's devices), or ``multi_worker_mirrored`` or
      ``parameter_server``, which read their cluster from ``TF_CONFIG``.
    ps_min_shard_bytes: Under ``parameter_server``, a variable larger than
      this is split into ``min(servers, ceil(bytes / ps_min_shard_bytes))``
      shards, one per parameter server.
    thread_spinning: Let TensorFlow's idle threads spin before they sleep
      (process-wide, ``escm2_tf.threads``). Off, the trainer spends about a
      tenth less CPU on shared or small machines.
    intra_op_threads: Threads of TensorFlow's intra-op pool, which runs the
      parallel parts of one kernel (process-wide, ``escm2_tf.threads``); 0
      (default): half of the cores, at least 1, leaving the rest to the
      input pipeline. On 2 cores that is 1 thread, with which the trainer
      spends about a tenth less CPU and less wall time than with
      TensorFlow's pool of every core (docs/benchmarks.md).
  """
  seed: int = option(42, minimum=0)
  deterministic: bool = True
  distribution_strategy: str = option(DEFAULT_STRATEGY, choices=STRATEGIES,
                                      group="distribution")
  ps_min_shard_bytes: int = option(DEFAULT_MIN_SHARD_BYTES, minimum=1,
                                   group="distribution")
  thread_spinning: bool = False
  intra_op_threads: int = option(0, minimum=0)

  def __post_init__(self):
    options.check_declared(self)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """What a run trains, validates and is scored on, and how it reads it.

  Attributes:
    train_data: Glob of the training TFRecords (the converter's output).
    eval_data: Glob of the TFRecords scored for ``metrics.json`` at the end.
      Never used to choose the stopping epoch: that is ``validation_data``'s
      job.
    vocab_dir: The converter's ``vocab/`` directory of the training data.
    ground_truth: The simulator's ``ground_truth_*.csv`` of ``eval_data``; adds
      the bias metrics. Empty when the data is not simulated.
    validation_data: Glob of the TFRecords validated on after every epoch,
      which early stopping watches; it may share no file with ``train_data``
      or ``eval_data``. Empty (the default): a held-out slice of
      ``train_data`` (``validation_fraction``).
    validation_fraction: Without ``validation_data``, the share of the
      training records held out for validation, in (0, 0.5]: those whose
      ``sample_id`` hashes into it (``data.HashSplit``), the same records on
      every run and every worker; they are never trained on.
    min_count: Ids seen fewer times in the training data share OOV rows.
      Rare ids are memorised, not learnt: on ``escm2-synth`` defaults
      (200k impressions), raising it from 1 to 100 lifted the CTR tower's
      AUC from 0.626 to 0.692 (the true p_click's: 0.776), made its
      propensities correct the clicks' CVR from 0.0353 to 0.0240 (truth
      0.0168) and lowered the validation loss (docs/results.md). Lower it
      for data where most ids are frequent.
    stats_file: The converter's ``stats.json`` of the training data; empty
      for the one beside ``vocab_dir`` (``<vocab_dir>/../stats.json``).
    vocab_check_examples: Training examples read up front to check that the
      vocabulary belongs to the data; 0 skips the check.
    max_unknown_id_fraction: The largest share of a field's ids, in that
      sample, that may be missing from its vocabulary.
    input_cache_mb: Memory for parsed batches kept from one epoch to the
      next, which later epochs then neither read nor parse: the validation
      data's when their estimate (``data_size.parsed_bytes_estimate``)
      fits, then, with ``cache_training_batches``, the training data's if
      they fit the rest. 0 keeps nothing.
    cache_training_batches: Also keep the training batches when they fit
      ``input_cache_mb``: later epochs reuse the first epoch's batches in a
      new order instead of reshuffling the records.
  """
  train_data: str = option(group="data")
  eval_data: str = option(group="data")
  vocab_dir: str = option(group="data")
  ground_truth: str = option("", group="data")
  validation_data: str = option("", group="data")
  validation_fraction: float = option(0.1, group="data")
  min_count: int = option(100, minimum=1, group="data")
  stats_file: str = option("", group="data")
  vocab_check_examples: int = option(1000, minimum=0, group="data")
  max_unknown_id_fraction: float = option(0.5, minimum=0.0, maximum=1.0,
                                          group="data")
  input_cache_mb: int = option(2048, minimum=0, group="training")
  cache_training_batches: bool = option(False, group="training")

  def __post_init__(self):
    _check_required(self, ("train_data", "eval_data", "vocab_dir"))
    if (not options.is_number(self.validation_fraction)
        or not 0.0 < self.validation_fraction <= MAX_VALIDATION_FRACTION):
      raise ConfigError("validation_fraction", "must be in (0, "
                        f"{MAX_VALIDATION_FRACTION}], got "
                        f"{self.validation_fraction!r}")
    options.check_declared(self)


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
  """Where a run writes, how long it trains, and the optimizer.

  Attributes:
    model_dir: Where checkpoints, the backup, logs and the configs go.
    export_dir: Where to export the final SavedModel (``<version>/``); empty
      for no export.
    epochs: The most passes over the training data. Sparse id embeddings
      overfit after one or two; early stopping usually ends the run sooner.
    batch_size: Examples per training step.
    learning_rate: The optimizer's learning rate. At 1e-3, Adam's
      per-row steps (the same size for a non-click's small gradient as for a
      click's large one) pushed the rare ids' embeddings down within the
      first epoch on the demo data: the mean pCTR fell to 0.83 of the click
      rate, on the training data as well as held out; 3e-4 keeps it within
      1 % and reaches a better validation loss in two epochs
      (docs/training.md).
    optimizer: ``"sparse_adam"`` (the default: row-wise Adam for the
      embedding table, which updates only the rows a batch uses and catches a
      row up on dense Adam's updates when it returns; as accurate as Adam,
      several times faster with large vocabularies), ``"adam"`` (Keras'
      Adam, which updates every row at every step) or ``"lazy_adam"``
      (row-wise without the catch-up: a little faster, measurably less
      accurate); docs/benchmarks.md.
    steps_per_execution: Training steps per call into the graph. With
      the default strategy it changes the cost, not the result: every
      epoch is one pass over the training data, of a length counted once
      up front (a read without parsing), and a pass whose steps are not a
      multiple of it ends with a shorter call, so a run learns the same
      weights, bit for bit, at any value. 32 (the default) takes about a
      tenth less CPU per example than 1 on small networks
      (docs/training.md), with coarser progress updates. Under the cluster
      strategies, and ``mirrored`` with grouped steps, an epoch is instead
      a counted number of steps of endless input. ``multi_worker_mirrored``
      needs 1: TensorFlow's all-reduce of the embedding's sparse gradient
      (an all-gather of each worker's row count, then of the rows, padded
      when the counts differ) fails inside Keras' multi-step loop with
      "Shape mismatch in the collective instance", the workers' gathers of
      rows getting unequal shapes; no TensorFlow issue about it was found.
    steps_per_epoch: Training steps per epoch (of ``batch_size`` examples
      each); 0 for one pass over ``train_data``, counted up front (except
      under ``mirrored`` with single steps).
    early_stopping_patience: Epochs without improvement of
      ``early_stopping_monitor`` before stopping; the run then ends with the
      weights of its best epoch (also after a resume). 0 turns it off: the
      run trains ``epochs`` epochs and keeps the last weights, and without
      ``validation_data`` it holds nothing out and validates on nothing.
    early_stopping_monitor: The validation quantity early stopping watches:
      ``val_`` and a loss or metric name of the model (``val_loss``,
      ``val_ctcvr_loss``, ``val_auc_cvr``, ...); AUCs are maximised, losses
      minimised. The default, ``val_ctr_ctcvr_loss`` (L_ctr + L_ctcvr), is
      what every estimator fits on every impression, free of lambdas and
      IPS weights, so all estimators stop by the same rule; ``val_loss``
      adds the estimator's own CVR risk (for ``dr`` also the imputation
      risk, which rises fastest as the model overfits).
    base_rate_init: Start the output biases of the CTR and CVR towers (and
      the imputation tower of the doubly robust losses) at the training
      data's base rates, read from ``stats_file``: every prediction starts
      calibrated (``base_rates``).
    recalibrate: After training, move each output to where the estimator's
      risk puts it (``escm2_tf.recalibration``): the CTR logit shifted so
      that the mean pCTR over the validation data (the held-out slice; the
      training data when nothing is held out) equals the training data's
      click rate; the CVR logit shifted to the level naive (mean pCVR over
      the clicks = conversions per click) and esmm (mean pCTR·pCVR =
      conversions per impression) fix, or, for ipw, dr, dr_jl and mrdr,
      scaled by the slope that minimises the estimator's own CVR risk over
      the trained-on impressions (at most 2M) and shifted to the level of
      its IPS estimate of their entire-space CVR. An early-stopped run's mean
      prediction is otherwise wherever the last epoch's updates left it: on
      simulated worlds mean pCTR 3-9 % off, pCVR on clicks up to 52 % off,
      and a counterfactual CVR tower flat and, with some seeds, still at the
      clicked rate it started from (docs/training.md). Needs
      ``stats_file``.
  """
  model_dir: str = option(group="output")
  export_dir: str = option("", group="output")
  epochs: int = option(10, minimum=1)
  batch_size: int = option(1024, minimum=1)
  learning_rate: float = 3e-4
  optimizer: str = option(SPARSE_ADAM, choices=OPTIMIZERS)
  steps_per_execution: int = option(32, minimum=1)
  steps_per_epoch: int = option(0, minimum=0)
  early_stopping_patience: int = option(1, minimum=0)
  early_stopping_monitor: str = "val_ctr_ctcvr_loss"
  base_rate_init: bool = option(True, group="model")
  recalibrate: bool = option(True, group="model")

  def __post_init__(self):
    _check_required(self, ("model_dir",))
    if not 0.0 < self.learning_rate < math.inf:
      raise ConfigError("learning_rate", "must be a positive finite number, "
                        f"got {self.learning_rate!r}")
    if not self.early_stopping_monitor.startswith("val_"):
      raise ConfigError("early_stopping_monitor",
                        "must name a validation quantity (val_...), got "
                        f"{self.early_stopping_monitor!r}")
    options.check_declared(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
  """One training run, whole: what ``escm2-train`` runs and writes down.

  Each section is a frozen dataclass whose fields are ``escm2-train``'s flags
  of the same names (``escm2_tf.flagbind``); a field name is used in one
  section only, so ``replace`` and the flags need no section prefix. The
  trainer writes ``to_dict()`` into ``model_dir/config.json``; ``from_dict``
  reads it back (``escm2_tf.run_dir.load_config``).

  Attributes:
    runtime: The seed, op determinism and the distribution strategy.
    data: The training, validation and evaluation data.
    model: The network.
    loss: The estimator and how it weighs the risks.
    trainer: The outputs, the schedule and the optimizer.
  """
  runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
  data: DataConfig
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  loss: LossConfig = dataclasses.field(default_factory=LossConfig)
  trainer: TrainerConfig

  def __post_init__(self):
    for field in dataclasses.fields(self):
      if not isinstance(getattr(self, field.name), SECTIONS[field.name]):
        raise TypeError(f"ExperimentConfig.{field.name} must be a "
                        f"{SECTIONS[field.name].__name__}")
    if (self.runtime.distribution_strategy == MULTI_WORKER_MIRRORED
        and self.trainer.steps_per_execution > 1):
      # tests/test_multiworker.py checks that TensorFlow still fails so.
      raise ConfigError("steps_per_execution", "must be 1 with "
                        "multi_worker_mirrored (TensorFlow's padded "
                        "all-gather of the embedding's sparse gradient, "
                        "cross_device_utils.all_gather_indexed_slices, "
                        "fails inside Keras' multi-step loop)")

  @classmethod
  def create(cls, **values: Any) -> "ExperimentConfig":
    """A config from field values by their (flag) names, e.g. ``seed=1``."""
    by_section = _by_section(values)
    return cls(**{name: section(**by_section[name])
                  for name, section in SECTIONS.items()})

  def replace(self, **values: Any) -> "ExperimentConfig":
    """This config with the fields named by their (flag) names replaced."""
    return dataclasses.replace(self, **{
        name: dataclasses.replace(getattr(self, name), **section_values)
        for name, section_values in _by_section(values).items()
        if section_values})

  def to_dict(self) -> dict[str, Any]:
    """A JSON-ready dict, one key per section (tuples become lists)."""
    return to_dict(self)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "ExperimentConfig":
    """The inverse of ``to_dict``.

    Raises:
      ValueError: An unknown key, or a value the config refuses
        (``ConfigError``, which names the field).
      TypeError: A section that is not a mapping, or a missing required
        field.
    """
    return from_dict(cls, values)


# ExperimentConfig's fields and their types.
SECTIONS = {"runtime": RuntimeConfig, "data": DataConfig,
            "model": ModelConfig, "loss": LossConfig,
            "trainer": TrainerConfig}
# Field name -> its section; unique, as each is the flag of its name.
SECTION_OF = {field.name: section for section, cls in SECTIONS.items()
              for field in dataclasses.fields(cls)}


def _by_section(values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  grouped: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
  for name, value in values.items():
    if name not in SECTION_OF:
      raise ConfigError(name, "is not a field of ExperimentConfig")
    grouped[SECTION_OF[name]][name] = value
  return grouped


def to_dict(config: Any) -> dict[str, Any]:
  """A config dataclass (or ``ExperimentConfig``) as a JSON-ready dict."""
  return options.json_ready(config)


def from_dict(cls: type, values: Mapping[str, Any]) -> Any:
  """The config ``cls`` from ``to_dict``'s output; unknown keys are an error.

  Raises:
    ValueError: An unknown key, or a value the config refuses.
    TypeError: A section that is not a mapping, or a missing required field.
  """
  if not isinstance(values, Mapping):
    raise TypeError(f"{cls.__name__} must be a JSON object, got "
                    f"{type(values).__name__}")
  fields = {field.name: field for field in dataclasses.fields(cls)}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
  typed = {}
  for name, value in values.items():
    kind, _ = options.field_type(cls, name)
    if dataclasses.is_dataclass(kind):
      value = from_dict(kind, value)
    elif typing.get_origin(kind) is tuple and isinstance(value, list):
      value = tuple(value)
    typed[name] = value
  return cls(**typed)
