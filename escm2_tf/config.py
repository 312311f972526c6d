"""Configuration of the ESCM2 network: embeddings, backbone and towers.

``ModelConfig`` describes only the network; the loss lives in
``escm2_tf.losses.LossConfig`` and the training loop in the trainer's config.
The trainer writes ``ModelConfig.to_dict()`` into ``model_dir/config.json`` and
the exporter rebuilds the network from it with ``ModelConfig.from_dict``.
"""

import dataclasses
from typing import Any, Mapping

BACKBONES = ("mmoe", "shared_bottom", "dcn")
POOLINGS = ("sum", "mean")
EMBEDDING_INITIALIZERS = ("uniform", "normal", "truncated_normal")
ACTIVATIONS = ("relu", "gelu", "swish", "tanh")


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
