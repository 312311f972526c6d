"""Exports an ESCM2 model as a versioned SavedModel for TF Serving.

TF Serving watches a base directory and loads its highest integer-named
subdirectory. ``export_saved_model`` writes the version into a hidden
temporary directory beside the versions (a name the poller never parses as a
version) and renames it into place, so the poller sees either no version or
a complete one.

Versions default to the next integer after the highest existing one (1 for an
empty directory): small, ordered, and what TF Serving's ``--model_base_path``
expects. Concurrent exports that pick the same number do not overwrite each
other: the second rename fails.

Beside the model, the staged version gets its ``assets.extra/`` (warmup
requests, schema and the caller's extra assets; see ``serving_assets``)
before the rename, so it too is complete when the poller sees the version.
"""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import ctypes
import errno
import os
import shutil
import tempfile
from typing import Any, Callable, Mapping

import tensorflow as tf
import tf_keras as keras

from escm2_tf import serving
from escm2_tf import serving_assets

_TEMP_PREFIX = ".tmp-export-"
_RENAME_EXCHANGE = 2  # linux/fs.h; swaps two paths in one atomic step.
_AT_FDCWD = -100


def is_version_name(name: str) -> bool:
  """Whether TF Serving's file system poller reads ``name`` as a version."""
  return name.isascii() and name.isdigit()


def next_version(export_dir: str) -> int:
  """One above the highest integer version in ``export_dir``, or 1."""
  if not os.path.isdir(export_dir):
    return 1
  versions = [int(name) for name in os.listdir(export_dir)
              if is_version_name(name)]
  return max(versions, default=0) + 1


def resolve_saved_model(path: str) -> str:
  """A SavedModel directory itself, or the newest version under a base dir.

  Raises:
    FileNotFoundError: if ``path`` holds neither.
  """
  if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
    return path
  if tf.io.gfile.isdir(path):
    versions = sorted((int(name.rstrip("/")), name.rstrip("/"))
                      for name in tf.io.gfile.listdir(path)
                      if is_version_name(name.rstrip("/")))
    for _, name in reversed(versions):
      candidate = os.path.join(path, name)
      if tf.io.gfile.exists(os.path.join(candidate, "saved_model.pb")):
        return candidate
  raise FileNotFoundError(
      f"{path} is neither a SavedModel directory nor a base directory with "
      "integer version subdirectories holding saved_model.pb")


def load_serving_signature(
    path: str) -> tuple[str, Callable[..., dict[str, tf.Tensor]]]:
  """Loads the ``serving_default`` signature, as serving clients call it.

  Args:
    path: A SavedModel directory, or a base directory whose newest version
      is loaded.

  Returns:
    ``(directory loaded, signature)``.

  Raises:
    FileNotFoundError: if ``path`` holds no SavedModel.
    ValueError: if it does not load or has no ``serving_default``
      signature; the message is one line naming the directory.
  """
  directory = resolve_saved_model(path)
  try:
    signatures = tf.saved_model.load(directory).signatures
  except (OSError, ValueError, tf.errors.OpError) as error:
    reason = str(error).partition("\n")[0]
    raise ValueError(f"cannot load {directory}: {reason}") from None
  if serving.EXAMPLES_SIGNATURE not in signatures:
    raise ValueError(
        f"{directory} has no {serving.EXAMPLES_SIGNATURE} signature (it has "
        f"{', '.join(signatures) or 'none'})")
  return directory, signatures[serving.EXAMPLES_SIGNATURE]


def _exchange(first: str, second: str) -> bool:
  """Atomically swaps two paths if the OS offers it (Linux renameat2)."""
  try:
    renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
  except (AttributeError, OSError):
    return False
  result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD,
                     os.fsencode(second), _RENAME_EXCHANGE)
  if result == 0:
    return True
  code = ctypes.get_errno()
  if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
    return False  # The file system cannot swap; fall back to two renames.
  raise OSError(code, os.strerror(code), second)


def _replace(staged: str, target: str) -> None:
  """Puts ``staged`` at ``target``, replacing an existing version."""
  if _exchange(staged, target):
    shutil.rmtree(staged)  # Now holds the old version.
    return
  retired = tempfile.mkdtemp(prefix=_TEMP_PREFIX,
                             dir=os.path.dirname(target))
  old = os.path.join(retired, "old")
  os.rename(target, old)
  try:
    os.rename(staged, target)
  except OSError:
    os.rename(old, target)  # Put the old version back.
    shutil.rmtree(retired)
    raise
  shutil.rmtree(retired)


def export_saved_model(model: keras.Model, export_dir: str, *,
                       version: int | None = None, overwrite: bool = False,
                       extra_assets: Mapping[str, Any] | None = None) -> str:
  """Writes ``model`` to ``export_dir/<version>/`` with serving signatures.

  Args:
    model: An ESCM2 model: called on the ragged raw-id features of
      ``schema.serving_feature_spec()``, it returns at least ``ctr``, ``cvr``
      and ``ctcvr``.
    export_dir: The TF Serving base directory (a local path: the final step
      is an ``os.rename``). Created if missing.
    version: A positive integer; ``None`` for ``next_version(export_dir)``.
    overwrite: Replace an existing version instead of refusing.
    extra_assets: Name to JSON-ready value (dicts, or dataclasses), each
      written to ``assets.extra/<name>.json``.

  Returns:
    The path of the new version directory.

  Raises:
    FileExistsError: if the version exists and ``overwrite`` is False.
    ValueError: on a bad version or asset name.
  """
  extra_assets = dict(extra_assets or {})
  serving_assets.check_asset_names(extra_assets)
  if version is None:
    version = next_version(export_dir)
  if isinstance(version, bool) or not isinstance(version, int) or version < 1:
    raise ValueError(f"version must be a positive integer, got {version!r}")
  target = os.path.join(export_dir, str(version))
  if os.path.exists(target) and not overwrite:
    raise FileExistsError(
        errno.EEXIST, f"version {version} exists; pass overwrite=True to "
        "replace it", target)
  os.makedirs(export_dir, exist_ok=True)
  staged = tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=export_dir)
  try:
    # mkdtemp makes the directory private; the server may run as another user.
    os.chmod(staged, 0o755)
    module = serving.ServingModule(model)
    tf.saved_model.save(module, staged, signatures=module.signatures())
    serving_assets.write_assets_extra(staged, extra_assets)
    if os.path.exists(target):
      _replace(staged, target)
    else:
      os.rename(staged, target)
  except BaseException:
    shutil.rmtree(staged, ignore_errors=True)
    raise
  return target
