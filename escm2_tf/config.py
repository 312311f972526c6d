"""Configuration: the network (``ModelConfig``) and the run (``TrainConfig``).

``ModelConfig`` describes only the network; the loss lives in
``escm2_tf.losses.LossConfig``; ``TrainConfig`` is what ``escm2-train`` runs.
Nothing here imports TensorFlow, so the CLIs check their flags before it loads.
The trainer writes ``ModelConfig.to_dict()`` into ``model_dir/config.json`` and
the exporter rebuilds the network from it with ``ModelConfig.from_dict``.
"""

import dataclasses
from typing import Any, Mapping

BACKBONES = ("mmoe", "shared_bottom", "dcn")
POOLINGS = ("sum", "mean")
EMBEDDING_INITIALIZERS = ("uniform", "normal", "truncated_normal")
ACTIVATIONS = ("relu", "gelu", "swish", "tanh")
# Names the trainer accepts; escm2_tf.optimizers and escm2_tf.distribute
# implement them. Here so that configs check without importing TensorFlow.
ADAM = "adam"
LAZY_ADAM = "lazy_adam"
OPTIMIZERS = (ADAM, LAZY_ADAM)
DEFAULT_STRATEGY = "default"
MIRRORED = "mirrored"
MULTI_WORKER_MIRRORED = "multi_worker_mirrored"
PARAMETER_SERVER = "parameter_server"
STRATEGIES = (DEFAULT_STRATEGY, MIRRORED, MULTI_WORKER_MIRRORED,
              PARAMETER_SERVER)
# Smaller variables stay whole: every shard costs a remote call per step.
DEFAULT_MIN_SHARD_BYTES = 256 << 10
# Holding out more than half of the training data leaves too little to train.
MAX_VALIDATION_FRACTION = 0.5


def dataclass_from_dict(cls: type, values: Mapping[str, Any]) -> Any:
  """Builds the dataclass ``cls`` from a dict; unknown keys are an error."""
  known = {field.name for field in dataclasses.fields(cls)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ValueError(f"Unknown {cls.__name__} field(s): {', '.join(unknown)}.")
  return cls(**values)


def _check_positive_int(name: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ValueError(
        f"ModelConfig.{name} must be a positive integer, got {value!r}.")


def _check_units(name: str, value: Any, allow_empty: bool) -> tuple[int, ...]:
  if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
    raise ValueError(
        f"ModelConfig.{name} must be a sequence of positive integers, got "
        f"{value!r}.")
  units = tuple(value)
  if not units and not allow_empty:
    raise ValueError(f"ModelConfig.{name} must name at least one layer size.")
  for unit in units:
    if isinstance(unit, bool) or not isinstance(unit, int) or unit <= 0:
      raise ValueError(
          f"ModelConfig.{name} must hold positive integers, got {value!r}.")
  return units


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"ModelConfig.{name} must be one of {', '.join(choices)}; "
                     f"got {value!r}.")


def _check_fraction(name: str, value: Any) -> None:
  if (isinstance(value, bool) or not isinstance(value, (int, float))
      or not 0.0 <= value < 1.0):
    raise ValueError(f"ModelConfig.{name} must be a number in [0, 1), got "
                     f"{value!r}.")


def _check_non_negative(name: str, value: Any, strictly: bool = False) -> None:
  if (isinstance(value, bool) or not isinstance(value, (int, float))
      or value < 0 or (strictly and value == 0)):
    bound = "positive" if strictly else "non-negative"
    raise ValueError(f"ModelConfig.{name} must be a {bound} number, got "
                     f"{value!r}.")


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
    seed: Seeds the initialisers and dropout, so equal seeds give equal
      weights; ``None`` leaves them to the global random state.
  """
  embedding_dim: int = 12
  backbone: str = "mmoe"
  num_experts: int = 8
  expert_units: tuple[int, ...] = (16,)
  bottom_units: tuple[int, ...] = (64, 32)
  num_cross_layers: int = 2
  cross_projection_dim: int | None = None
  tower_units: tuple[int, ...] = (8,)
  pooling: str = "sum"
  use_weights: bool = False
  oov_buckets: int = 1
  embedding_initializer: str = "uniform"
  embedding_init_scale: float = 0.05
  embedding_l2: float = 0.0
  embedding_dropout: float = 0.0
  dropout: float = 0.0
  activation: str = "relu"
  seed: int | None = None

  def __post_init__(self):
    _check_positive_int("embedding_dim", self.embedding_dim)
    _check_choice("backbone", self.backbone, BACKBONES)
    _check_positive_int("num_experts", self.num_experts)
    # Lists arrive from JSON; tuples keep the config hashable and immutable.
    object.__setattr__(self, "expert_units",
                       _check_units("expert_units", self.expert_units, False))
    object.__setattr__(self, "bottom_units",
                       _check_units("bottom_units", self.bottom_units, False))
    object.__setattr__(self, "tower_units",
                       _check_units("tower_units", self.tower_units, True))
    _check_positive_int("num_cross_layers", self.num_cross_layers)
    if self.cross_projection_dim is not None:
      _check_positive_int("cross_projection_dim", self.cross_projection_dim)
    _check_choice("pooling", self.pooling, POOLINGS)
    if not isinstance(self.use_weights, bool):
      raise ValueError(
          f"ModelConfig.use_weights must be a bool, got {self.use_weights!r}.")
    _check_positive_int("oov_buckets", self.oov_buckets)
    _check_choice("embedding_initializer", self.embedding_initializer,
                  EMBEDDING_INITIALIZERS)
    _check_non_negative("embedding_init_scale", self.embedding_init_scale,
                        strictly=True)
    _check_non_negative("embedding_l2", self.embedding_l2)
    _check_fraction("embedding_dropout", self.embedding_dropout)
    _check_fraction("dropout", self.dropout)
    _check_choice("activation", self.activation, ACTIVATIONS)
    if self.seed is not None and (isinstance(self.seed, bool)
                                  or not isinstance(self.seed, int)
                                  or self.seed < 0):
      raise ValueError(f"ModelConfig.seed must be a non-negative integer or "
                       f"None, got {self.seed!r}.")

  def to_dict(self) -> dict[str, Any]:
    """A JSON-ready dict (tuples become lists)."""
    return {name: list(value) if isinstance(value, tuple) else value
            for name, value in dataclasses.asdict(self).items()}

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
    """The inverse of ``to_dict``; unknown keys are an error, not ignored."""
    return dataclass_from_dict(cls, values)


class ConfigError(ValueError):
  """A training input that is invalid, missing, or does not fit the others.

  Attributes:
    field: The ``TrainConfig`` field at fault (also the CLI flag's name).
    detail: What is wrong with it.
  """

  def __init__(self, field: str, detail: str):
    super().__init__(f"{field}: {detail}")
    self.field = field
    self.detail = detail


def check_train_config(config: "TrainConfig") -> None:
  """Every field's value on its own: present, in range, a known name."""
  for name in ("train_data", "eval_data", "vocab_dir", "model_dir"):
    if not getattr(config, name):
      raise ConfigError(name, "is required")
  for name, low in (("epochs", 1), ("batch_size", 1), ("seed", 0),
                    ("min_count", 1), ("steps_per_execution", 1),
                    ("early_stopping_patience", 0),
                    ("vocab_check_examples", 0), ("steps_per_epoch", 0),
                    ("ps_min_shard_bytes", 1)):
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise ConfigError(name, f"must be an integer >= {low}, got {value!r}")
  if not 0.0 < config.learning_rate < float("inf"):
    raise ConfigError("learning_rate", "must be a positive finite number, "
                      f"got {config.learning_rate!r}")
  if config.optimizer not in OPTIMIZERS:
    raise ConfigError("optimizer", f"must be one of "
                      f"{', '.join(OPTIMIZERS)}, got "
                      f"{config.optimizer!r}")
  if not config.early_stopping_monitor.startswith("val_"):
    raise ConfigError("early_stopping_monitor",
                      "must name a validation quantity (val_...), got "
                      f"{config.early_stopping_monitor!r}")
  if (isinstance(config.validation_fraction, bool)
      or not isinstance(config.validation_fraction, (int, float))
      or not 0.0 < config.validation_fraction <= MAX_VALIDATION_FRACTION):
    raise ConfigError("validation_fraction", "must be in (0, "
                      f"{MAX_VALIDATION_FRACTION}], got "
                      f"{config.validation_fraction!r}")
  if not 0.0 <= config.max_unknown_id_fraction <= 1.0:
    raise ConfigError("max_unknown_id_fraction", "must be in [0, 1], got "
                      f"{config.max_unknown_id_fraction!r}")
  if config.distribution_strategy not in STRATEGIES:
    raise ConfigError("distribution_strategy", "must be one of "
                      f"{', '.join(STRATEGIES)}, got "
                      f"{config.distribution_strategy!r}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """What to train on, where to write, and how long.

  Attributes:
    train_data: Glob of the training TFRecords (the converter's output).
    eval_data: Glob of the TFRecords scored for ``metrics.json`` at the end.
      Never used to choose the stopping epoch: that is ``validation_data``'s
      job.
    vocab_dir: The converter's ``vocab/`` directory of the training data.
    model_dir: Where checkpoints, the backup, logs and the configs go.
    export_dir: Where to export the final SavedModel (``<version>/``); empty
      for no export.
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
    optimizer: ``"adam"`` (Keras' Adam) or ``"lazy_adam"`` (row-wise Adam for
      the embedding table: updates only the rows a batch uses, several times
      faster with large vocabularies; docs/benchmarks.md).
    seed: Seeds the weights, dropout and shuffles: equal seeds, equal models.
    deterministic: Also makes TensorFlow's ops deterministic (process-wide).
    min_count: Ids seen fewer times in the training data share OOV rows.
      Rare ids are memorised, not learnt: on ``escm2-synth`` defaults
      (200k impressions), raising it from 1 to 100 lifted the CTR tower's
      AUC from 0.626 to 0.692 (the true p_click's: 0.776), made its
      propensities correct the clicks' CVR from 0.0353 to 0.0240 (truth
      0.0168) and lowered the validation loss (docs/results.md). Lower it
      for data where most ids are frequent.
    steps_per_execution: Training steps per call into the graph; more is
      faster for small models, with coarser progress updates.
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
      the DR imputation tower) at the training data's base rates, read from
      ``stats_file``: every prediction starts calibrated (``base_rates``).
    stats_file: The converter's ``stats.json`` of the training data; empty
      for the one beside ``vocab_dir`` (``<vocab_dir>/../stats.json``).
    vocab_check_examples: Training examples read up front to check that the
      vocabulary belongs to the data; 0 skips the check.
    max_unknown_id_fraction: The largest share of a field's ids, in that
      sample, that may be missing from its vocabulary.
    distribution_strategy: One of ``STRATEGIES``; the cluster
      strategies read their cluster from ``TF_CONFIG``.
    steps_per_epoch: Training steps per epoch (of ``batch_size`` examples
      each); 0 for one pass over ``train_data``, counted up front when Keras
      must know it (cluster strategies, grouped steps).
    ps_min_shard_bytes: Under ``parameter_server``, a variable larger than
      this is split into ``min(servers, ceil(bytes / ps_min_shard_bytes))``
      shards, one per parameter server.
  """
  train_data: str
  eval_data: str
  vocab_dir: str
  model_dir: str
  export_dir: str = ""
  ground_truth: str = ""
  validation_data: str = ""
  validation_fraction: float = 0.1
  epochs: int = 10
  batch_size: int = 1024
  learning_rate: float = 3e-4
  optimizer: str = ADAM
  seed: int = 42
  deterministic: bool = True
  min_count: int = 100
  steps_per_execution: int = 1
  early_stopping_patience: int = 1
  early_stopping_monitor: str = "val_ctr_ctcvr_loss"
  base_rate_init: bool = True
  stats_file: str = ""
  vocab_check_examples: int = 1000
  max_unknown_id_fraction: float = 0.5
  distribution_strategy: str = DEFAULT_STRATEGY
  steps_per_epoch: int = 0
  ps_min_shard_bytes: int = DEFAULT_MIN_SHARD_BYTES

  def __post_init__(self):
    check_train_config(self)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
    """The inverse of ``to_dict``; unknown keys are an error."""
    return dataclass_from_dict(cls, values)
