"""Giving the memory TensorFlow frees on the CPU back to the system.

With oneDNN (TensorFlow's default on x86) the CPU allocator serves every
allocation of 256 KiB or more from a BFC pool that grows to the largest
total ever live at once and never shrinks, so one short step with large
tensors keeps its peak for the rest of the process:
``counterfactual_refit.counterfactual_refit``, Newton's method through
nested gradient tapes over up to 2M rows, kept about 250 MB of that pool
resident through the final evaluation at 1M training impressions, and the
final evaluation's numpy columns never reuse it (docs/rehearsal.md).
``use_system_allocator`` sends those allocations to malloc instead,
``map_large_blocks`` has malloc return each large block when it is freed,
and ``release_free_memory`` returns what malloc still keeps. None of them
changes a computed value.
"""

import ctypes
import os

# Read by TensorFlow once, at the CPU allocator's first allocation.
_SYSTEM_ALLOCATOR_ENV = "TF_ONEDNN_USE_SYSTEM_ALLOCATOR"
# glibc's mallopt parameter, and oneDNN's own threshold for large blocks.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 256 * 1024


def use_system_allocator() -> None:
  """Has oneDNN's CPU allocator use malloc, unless the user chose.

  Takes effect only if TensorFlow has not allocated a tensor yet in this
  process.
  """
  os.environ.setdefault(_SYSTEM_ALLOCATOR_ENV, "1")


def map_large_blocks() -> None:
  """Has malloc map every block of 256 KiB or more on its own (glibc).

  Such a block goes back to the system when it is freed; otherwise glibc
  raises the threshold to the largest block freed (up to 32 MiB) and keeps
  the freed ones in its arenas.
  """
  mallopt = _c_function("mallopt")
  if mallopt is not None:
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)


def release_free_memory() -> None:
  """Returns malloc's free pages to the system (glibc; elsewhere a no-op).

  glibc keeps freed blocks below its mmap threshold, which rises to 32 MiB
  as large blocks are freed, inside its arenas.
  """
  trim = _c_function("malloc_trim")
  if trim is not None:
    trim(0)


def _c_function(name: str):
  """The process's C function ``name``, or None where it has none."""
  try:
    # The symbols the process has loaded, its C library's among them.
    return getattr(ctypes.CDLL(None), name)
  except (OSError, AttributeError, TypeError):
    return None
