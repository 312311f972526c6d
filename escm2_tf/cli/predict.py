r"""escm2-predict: batch scoring through an exported SavedModel.

Reads impressions, sends them as serialized tf.Examples through the
SavedModel's ``serving_default`` signature (exactly what TF Serving runs), and
writes ``sample_id,ctr,cvr,ctcvr`` to a CSV, one row per input record, in
input order; a record without a ``sample_id`` gets an empty one.

  escm2-predict --saved_model=serving/escm2 --data='data/test/part-*' \
      --output=scores.csv
  escm2-predict --saved_model=serving/escm2/3 --input_format=aliccp \
      --data=sample_skeleton_test.csv \
      --common_features=common_features_test.csv --output=scores.csv

``--input_format=tfrecord`` reads the converter's TFRecords (GZIP when the
file name ends in ``.gz``); ``paddlerec`` and ``aliccp`` read the raw text
formats. For ``aliccp`` the common features are first encoded into an SQLite
table in a temporary directory (``TMPDIR``; about 1 kB a user, 0.6 GB for
the full release), which the impressions are joined with, as the converter
joins them: memory stays bounded whatever the number of users.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import dataclasses

from escm2_tf import config as config_lib
from escm2_tf import flagbind
from escm2_tf import tool
from escm2_tf import options
from escm2_tf.formats import encode
from escm2_tf.options import ConfigError
from escm2_tf.options import option

_PROGRAM = "escm2-predict"


@dataclasses.dataclass(frozen=True)
class PredictFlags:
  """What to score, with which model, and where the scores go.

  Attributes:
    saved_model: A SavedModel version directory, or a base directory whose
      highest version is used.
    data: Glob of the input files.
    input_format: Format of data.
    common_features: Glob of the common_features_*.csv files (input_format
      aliccp only).
    max_values_per_field: Raw formats: the most ids kept per field and row,
      the heaviest by value, as escm2-convert keeps; 0 keeps all. Use the
      value the training data was converted with.
    batch_size: Examples per signature call.
    output: The CSV to write: sample_id,ctr,cvr,ctcvr.
  """
  saved_model: str = option("", group="input")
  data: str = option("", group="input")
  input_format: str = option("tfrecord",
                             choices=config_lib.SCORING_INPUT_FORMATS,
                             group="input")
  common_features: str | None = option(None, group="input")
  max_values_per_field: int = option(
      encode.DEFAULT_MAX_VALUES_PER_FIELD, minimum=0, group="input")
  batch_size: int = option(4096, minimum=1, group="input")
  output: str = option("", group="output")

  def __post_init__(self):
    for name in ("saved_model", "data", "output"):
      if not getattr(self, name):
        raise ConfigError(name, "is required")
    options.check_declared(self)
    if (self.input_format == "aliccp") != bool(self.common_features):
      raise ConfigError("common_features", "is required with, and only "
                        "with, --input_format=aliccp")


def _predict(settings: PredictFlags) -> int:
  from escm2_tf import scoring  # pylint: disable=g-import-not-at-top
  try:
    files = scoring.files("data", settings.data)
    common = (scoring.files("common_features", settings.common_features)
              if settings.common_features else ())
    signature = scoring.load_signature(settings.saved_model)
    batches = scoring.read_batches(
        files, settings.input_format, settings.batch_size, common,
        settings.max_values_per_field)
    count = scoring.score(signature, batches, settings.output)
  except OSError as error:
    return tool.fail(_PROGRAM, f"--output: cannot write "
                     f"{settings.output}: {error.strerror or error}")
  print(f"Scored {count} examples into {settings.output}")
  return 0


TOOL = tool.Tool(_PROGRAM, __doc__,
                 flagbind.Binding(flagbind.Section(PredictFlags, "input")),
                 build=lambda binding: binding.build(PredictFlags),
                 body=_predict)


def run() -> None:
  TOOL.run()
