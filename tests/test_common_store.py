"""Tests of the on-disk table of common rows that the Tianchi joins read."""

import errno
import multiprocessing
import os
import pickle
import sqlite3

from absl.testing import absltest
from absl.testing import parameterized

import testing
from escm2_tf.formats import common_store


def _write_part(path, rows):
  writer = common_store.PartWriter(path)
  for row in rows:
    writer.append(row)
  writer.close()
  return path


def _build(directory, parts):
  """The table of ``parts`` (lists of rows); returns it and the duplicates."""
  builder = common_store.Builder(os.path.join(directory, "table.sqlite"))
  for k, rows in enumerate(parts):
    builder.add_part(_write_part(os.path.join(directory, f"part-{k}"), rows))
  duplicates = builder.finish()
  return common_store.Table(builder.path), duplicates


def _lookup_in_child(table, index, queue):
  queue.put(table[index])


class CommonStoreTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = testing.new_dir()

  def test_rows_of_every_part_and_the_duplicates(self):
    rows = [(f"u{k}", bytes([k % 256]) * (k + 1)) for k in range(10_000)]
    table, duplicates = _build(self.dir, [
        rows[:6000], rows[6000:], [("u7", b"again"), ("u9", b"x")],
        [("u7", b"third"), ("only", b"\x00\x01")]])
    self.assertEqual(duplicates, {"u7": 3, "u9": 2})
    self.assertEqual(table["u123"], rows[123][1])
    self.assertEqual(table["only"], b"\x00\x01")
    self.assertIn(table["u7"], (rows[7][1], b"again", b"third"))
    self.assertNotIn("u10000", table)
    self.assertIsNone(table.get("nobody"))
    with self.assertRaises(KeyError):
      _ = table["nobody"]
    self.assertLen(table, 10_001)
    self.assertEqual(set(table), {index for index, _ in rows} | {"only"})
    # The parts were merged and removed.
    self.assertEqual(os.listdir(self.dir), ["table.sqlite"])

  @parameterized.parameters(1, 3, 1000)
  def test_a_small_cache_gives_the_same_rows(self, cache_rows):
    rows = [(f"i{k}", f"entries of {k}".encode()) for k in range(50)]
    table, _ = _build(self.dir, [rows])
    table = common_store.Table(table.path, cache_rows=cache_rows)
    for k in [0, 1, 0, 2, 49, 3, 0, 1, 48, 49, 2] * 3:
      self.assertEqual(table[f"i{k}"], rows[k][1])

  def test_forked_and_pickled_copies_read_on_their_own(self):
    table, _ = _build(self.dir, [[("a", b"1"), ("b", b"22")]])
    self.assertEqual(table["a"], b"1")  # Opens this process's connection.
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_lookup_in_child, args=(table, "b", queue))
    child.start()
    self.assertEqual(queue.get(timeout=testing.SUBPROCESS_TIMEOUT_S), b"22")
    child.join()
    self.assertEqual(child.exitcode, 0)
    copy = pickle.loads(pickle.dumps(table))
    self.assertEqual((copy["a"], copy["b"]), (b"1", b"22"))

  def test_a_full_disk_is_an_enospc_error(self):
    path = os.path.join(self.dir, "part")
    writer = common_store.PartWriter(path)
    # The smallest file SQLite allows: the first batch of rows fills it.
    writer._connection.execute("PRAGMA max_page_count = 2")  # pylint: disable=protected-access
    with self.assertRaises(OSError) as raised:
      for k in range(5000):
        writer.append((f"u{k}", b"x" * 1000))
      writer.close()
    self.assertEqual(raised.exception.errno, errno.ENOSPC)
    self.assertIsInstance(raised.exception.__cause__, sqlite3.OperationalError)


if __name__ == "__main__":
  absltest.main()
