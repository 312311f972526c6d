"""escm2-export: exports a trained model_dir as a SavedModel for TF Serving.

  escm2-export --model_dir=runs/escm2_dr --export_dir=serving/escm2

Rebuilds the network from ``model_dir/config.json`` and the vocabularies it
names, restores the latest checkpoint in ``model_dir/checkpoints/`` and writes
``export_dir/<version>/``, with ``config.json`` and ``metrics.json`` copied
into its ``assets.extra/``. An existing version is refused unless
``--overwrite``.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import sys
from typing import Sequence

from absl import app
from absl import flags

from escm2_tf import export
from escm2_tf import run_dir

_USAGE_ERROR = 2
_EXISTS_ERROR = 1

# allow_override: escm2-train defines the same names and meanings; tests
# import several CLIs into one process.
_MODEL_DIR = flags.DEFINE_string(
    "model_dir", "", "The training run's directory (config.json, "
    "checkpoints/, metrics.json).", allow_override=True)
_EXPORT_DIR = flags.DEFINE_string(
    "export_dir", "", "TF Serving's model base path; the SavedModel goes to "
    "<export_dir>/<version>/.", allow_override=True)
_VERSION = flags.DEFINE_integer(
    "version", None, "The version number; default: one above the highest "
    "existing version, or 1.", lower_bound=1, allow_override=True)
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace the version if it exists; otherwise an "
    "existing version is an error.", allow_override=True)


def _fail(message: str, code: int) -> int:
  print(f"escm2-export: error: {message}", file=sys.stderr)
  return code


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    return _fail(f"unexpected arguments {' '.join(argv[1:])!r}", _USAGE_ERROR)
  for holder in (_MODEL_DIR, _EXPORT_DIR):
    if not holder.value:
      return _fail(f"--{holder.name}: is required", _USAGE_ERROR)
  try:
    model = run_dir.restore_model(_MODEL_DIR.value)
    assets = run_dir.run_assets(_MODEL_DIR.value)
  except (OSError, ValueError) as error:
    return _fail(f"--model_dir: {error}", _USAGE_ERROR)
  try:
    path = export.export_saved_model(model, _EXPORT_DIR.value,
                                     version=_VERSION.value,
                                     overwrite=_OVERWRITE.value,
                                     extra_assets=assets)
  except FileExistsError as error:
    return _fail(f"--export_dir: {error.filename} exists; pass --overwrite "
                 "to replace it", _EXISTS_ERROR)
  except OSError as error:
    return _fail(f"--export_dir: {error}", _USAGE_ERROR)
  print(f"Exported {path}")
  return 0


def run() -> None:
  app.run(main)
