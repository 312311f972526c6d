"""Tests of escm2_tf.allocator: the system allocator's setting, malloc's."""

import escm2_tf  # pylint: disable=unused-import  # Selects Keras 2 first.

import os
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized

from escm2_tf import allocator


class UseSystemAllocatorTest(parameterized.TestCase):
  """oneDNN's allocator is set to malloc; the user's setting wins."""

  @parameterized.named_parameters(
      ("default", {}, "1"),
      ("user_setting", {"TF_ONEDNN_USE_SYSTEM_ALLOCATOR": "0"}, "0"))
  def test_setting(self, environ, expected):
    with mock.patch.dict(os.environ, environ, clear=True):
      allocator.use_system_allocator()
      self.assertEqual(os.environ["TF_ONEDNN_USE_SYSTEM_ALLOCATOR"], expected)


class MallocTest(parameterized.TestCase):
  """The malloc settings run with glibc and do nothing without it."""

  def test_large_blocks_are_mapped_from_256_kib(self):
    library = mock.Mock()
    with mock.patch("ctypes.CDLL", return_value=library):
      allocator.map_large_blocks()
    # glibc's M_MMAP_THRESHOLD, oneDNN's threshold for its pool.
    library.mallopt.assert_called_once_with(-3, 256 * 1024)

  def test_free_pages_are_trimmed(self):
    library = mock.Mock()
    with mock.patch("ctypes.CDLL", return_value=library):
      allocator.release_free_memory()
    library.malloc_trim.assert_called_once_with(0)

  @parameterized.named_parameters(
      ("map_large_blocks", allocator.map_large_blocks),
      ("release_free_memory", allocator.release_free_memory))
  def test_runs_on_this_c_library(self, function):
    function()

  @parameterized.named_parameters(
      ("map_large_blocks", allocator.map_large_blocks),
      ("release_free_memory", allocator.release_free_memory))
  def test_without_a_c_library(self, function):
    with mock.patch("ctypes.CDLL", side_effect=OSError("no library")):
      function()


if __name__ == "__main__":
  absltest.main()
