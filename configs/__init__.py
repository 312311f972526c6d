"""The shipped flagfiles, installed as ``escm2_tf.configs`` (package data).

``escm2_tf.configs.path("paddlerec")`` is the file a tool reads when given a
shipped config's name instead of a path; ``escm2-train`` takes the files as
``--flagfile=configs/NAME.flags`` from the repository root.
"""

import importlib.resources
import os

SUFFIX = ".flags"


def names() -> list[str]:
  """The shipped configs' names (their file names less ``.flags``)."""
  return sorted(entry.name[:-len(SUFFIX)]
                for entry in importlib.resources.files(__name__).iterdir()
                if entry.name.endswith(SUFFIX))


def path(name: str) -> str:
  """The file of the shipped config ``name`` (which ``names`` lists)."""
  return os.fspath(importlib.resources.files(__name__) / f"{name}{SUFFIX}")
