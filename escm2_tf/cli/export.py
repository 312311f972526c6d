"""escm2-export: exports a trained model_dir as a SavedModel for TF Serving.

  escm2-export --model_dir=runs/escm2_dr --export_dir=serving/escm2

Rebuilds the network from ``model_dir/config.json`` and the vocabularies it
names, restores the latest checkpoint in ``model_dir/checkpoints/`` and writes
``export_dir/<version>/``, with ``config.json`` and ``metrics.json`` copied
into its ``assets.extra/``. An existing version is refused unless
``--overwrite``.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import dataclasses

from escm2_tf import flagbind
from escm2_tf import tool
from escm2_tf.options import ConfigError
from escm2_tf.options import option

_PROGRAM = "escm2-export"
_EXISTS_ERROR = 1


@dataclasses.dataclass(frozen=True)
class ExportFlags:
  """What to export, and where.

  Attributes:
    model_dir: The training run's directory (config.json, checkpoints/,
      metrics.json).
    export_dir: TF Serving's model base path; the SavedModel goes to
      <export_dir>/<version>/.
    version: The version number; default: one above the highest existing
      version, or 1.
    overwrite: Replace the version if it exists; otherwise an existing
      version is an error.
  """
  model_dir: str = option(None, group="input")
  export_dir: str = option(None, group="output")
  version: int | None = option(None, minimum=1, group="output")
  overwrite: bool = option(False, group="output")

  def __post_init__(self):
    for name in ("model_dir", "export_dir"):
      if not getattr(self, name):
        raise ConfigError(name, "is required")


def _export(settings: ExportFlags) -> int:
  # pylint: disable=g-import-not-at-top
  from escm2_tf import export
  from escm2_tf import run_dir
  # pylint: enable=g-import-not-at-top
  try:
    model = run_dir.restore_model(settings.model_dir)
    assets = run_dir.run_assets(settings.model_dir)
  except (OSError, ValueError) as error:
    return tool.fail(_PROGRAM, f"--model_dir: {error}")
  try:
    path = export.export_saved_model(model, settings.export_dir,
                                     version=settings.version,
                                     overwrite=settings.overwrite,
                                     extra_assets=assets)
  except FileExistsError as error:
    return tool.fail(_PROGRAM, f"--export_dir: {error.filename} exists; "
                     "pass --overwrite to replace it", _EXISTS_ERROR)
  except OSError as error:
    return tool.fail(_PROGRAM, f"--export_dir: {error}")
  print(f"Exported {path}")
  return 0


TOOL = tool.Tool(_PROGRAM, __doc__,
                 flagbind.Binding(flagbind.Section(ExportFlags, "output")),
                 build=lambda binding: binding.build(ExportFlags),
                 body=_export)


def run() -> None:
  TOOL.run()
