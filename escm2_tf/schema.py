"""The Ali-CCP schema: the single source of truth for fields, labels and specs.

The converter (``pipelines/``), the tf.data input (``escm2_tf.data``), the model's
inputs and the serving signatures all derive their feature names, dtypes and
parsing specs from this module.

Ali-CCP (Tianchi dataset 408) stores user-side features once per user request in
``common_features_*.csv`` and joins them to impressions in
``sample_skeleton_*.csv`` through ``common_feature_index``. Every feature is a
``(field_id, feature_id, value)`` triple; ``value`` is 1.0 for most fields and a
weight for the user-behaviour fields (the ``*_14`` ones).
"""

import dataclasses
import enum
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
  import tensorflow as tf


class Source(enum.Enum):
  """Where a field lives in the raw Tianchi release."""
  COMMON = "common"  # common_features_*.csv, one row per user request.
  SAMPLE = "sample"  # sample_skeleton_*.csv, one row per impression.


@dataclasses.dataclass(frozen=True)
class Field:
  """One Ali-CCP feature field.

  Attributes:
    name: The Ali-CCP field id, e.g. ``"109_14"``. Also the tf.Example feature
      name and the model input name.
    source: Whether the raw release stores it with the user (common) or with
      the impression (sample).
    group: ``"user"``, ``"item"``, ``"cross"`` or ``"context"``.
    multi_valued: Whether an impression usually carries several ids.
    weighted: Whether the raw value is a meaningful weight (behaviour counts)
      that the converter keeps in ``weight_name(field)``.
    description: What the field means.
  """
  name: str
  source: Source
  group: str
  multi_valued: bool
  weighted: bool
  description: str


def _user(name: str, description: str, multi: bool = False) -> Field:
  return Field(name, Source.COMMON, "user", multi, multi, description)


def _sample(name: str, group: str, description: str,
            multi: bool = False) -> Field:
  return Field(name, Source.SAMPLE, group, multi, False, description)


# The user id field, for readers that group records by user.
USER_ID = "101"

# The 23 fields PaddleRec's escm2 uses, in PaddleRec's order.
FIELDS: tuple[Field, ...] = (
    _user(USER_ID, "user id"),
    _user("109_14", "user's clicked categories (behaviour)", multi=True),
    _user("110_14", "user's clicked shops (behaviour)", multi=True),
    _user("127_14", "user's clicked brands (behaviour)", multi=True),
    _user("150_14", "user's clicked intentions (behaviour)", multi=True),
    _user("121", "user profile category"),
    _user("122", "user group"),
    _user("124", "user gender"),
    _user("125", "user age"),
    _user("126", "user consumption level 1"),
    _user("127", "user consumption level 2"),
    _user("128", "user occupation"),
    _user("129", "user geography"),
    _sample("205", "item", "item id"),
    _sample("206", "item", "item category"),
    _sample("207", "item", "item shop"),
    _sample("210", "item", "item intentions", multi=True),
    _sample("216", "item", "item brand"),
    _sample("508", "cross", "user-item category cross"),
    _sample("509", "cross", "user-item shop cross"),
    _sample("702", "cross", "user-item brand cross"),
    _sample("853", "cross", "user-item intention cross", multi=True),
    _sample("301", "context", "position / scenario"),
)

FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)
FIELDS_BY_NAME: Mapping[str, Field] = {f.name: f for f in FIELDS}
COMMON_FIELDS: tuple[str, ...] = tuple(
    f.name for f in FIELDS if f.source is Source.COMMON)
SAMPLE_FIELDS: tuple[str, ...] = tuple(
    f.name for f in FIELDS if f.source is Source.SAMPLE)
MULTI_VALUED_FIELDS: tuple[str, ...] = tuple(
    f.name for f in FIELDS if f.multi_valued)
WEIGHTED_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS if f.weighted)

# Labels and the example key, as named in tf.Example records.
CLICK = "click"
CONVERSION = "conversion"
LABELS: tuple[str, ...] = (CLICK, CONVERSION)
SAMPLE_ID = "sample_id"

# The model's outputs, float32 [B] each: what the heads emit, the risks read,
# the serving signatures return and escm2-predict writes. They live here,
# beside the labels, because the layers and the risk functions sit below the
# task (``escm2_tf.task``), which decides which of them an estimator needs.
CTR = "ctr"
CVR = "cvr"
CTCVR = "ctcvr"
# The imputation tower's output, trained, never served: dr's imputed CVR
# cross-entropy, dr_jl's and mrdr's pseudo-label of the conversion.
IMPUTATION = "imputation"
# The name of the joint-learning estimators' imputation tower (a sigmoid,
# started at the CVR's log-odds); its output is still IMPUTATION.
PSEUDO_LABEL = "pseudo_label"
# The served probabilities, in the order of every output file.
OUTPUT_NAMES: tuple[str, ...] = (CTR, CVR, CTCVR)

# Id 0 never occurs in Ali-CCP; padded dense inputs use it for "no value".
PAD_ID = 0


def weight_name(field: str) -> str:
  """The tf.Example feature holding the per-id weights of a weighted field."""
  if field not in WEIGHTED_FIELDS:
    raise ValueError(f"Field {field!r} carries no weights; weighted fields are "
                     f"{', '.join(WEIGHTED_FIELDS)}.")
  return f"{field}_w"


WEIGHT_NAMES: tuple[str, ...] = tuple(weight_name(f) for f in WEIGHTED_FIELDS)


def feature_spec(with_labels: bool = True, with_weights: bool = True,
                 with_sample_id: bool = False) -> dict[str, "tf.io.RaggedFeature | tf.io.FixedLenFeature"]:
  """The tf.io.parse_example spec for the converter's tf.Example records.

  Every field is a ragged int64 list of raw Ali-CCP feature ids (a field may be
  absent from an impression). Weights are ragged float32 lists aligned with
  their field's ids.

  Args:
    with_labels: Include ``click`` and ``conversion`` (scalar int64).
    with_weights: Include the behaviour weights of ``WEIGHTED_FIELDS``.
    with_sample_id: Include ``sample_id`` (scalar string).

  Returns:
    A dict from feature name to parsing spec.
  """
  # Imported here so that the text-only tools (simulator, parsers) start
  # without loading TensorFlow.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  spec = {name: tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64)
          for name in FIELD_NAMES}
  if with_weights:
    spec.update({name: tf.io.RaggedFeature(tf.float32,
                                           row_splits_dtype=tf.int64)
                 for name in WEIGHT_NAMES})
  if with_labels:
    spec.update({name: tf.io.FixedLenFeature([], tf.int64) for name in LABELS})
  if with_sample_id:
    spec[SAMPLE_ID] = tf.io.FixedLenFeature([], tf.string, default_value="")
  return spec


def serving_feature_spec() -> dict[str, "tf.io.RaggedFeature"]:
  """The spec of serialized requests: the fields and weights, no labels."""
  return feature_spec(with_labels=False, with_weights=True)
