"""The users' encoded common rows in an SQLite file: the Tianchi join's table.

Each impression of the Tianchi format is joined with its user's common row,
in the converter's local runner and in ``escm2-predict --input_format=aliccp``.
Holding every user's row in memory costs about 1 kB per user, in every
process that touches the pages (about 2 GB for the release's 730K users in
the converter's main process and two workers); here the rows live on disk
instead:

* the converter's tasks that encode a range of common rows each write them
  to their own part file (``PartWriter``), so no worker sends them through a
  pipe and the main process never holds them;
* a ``Builder`` appends every part to one table as the parts arrive
  (``Builder.add_part``, SQL inside SQLite), or takes the rows itself
  (``append``: ``escm2-predict``, one process), then indexes the table and
  finds the indexes that appear more than once (``Builder.finish``);
* each joining process opens the file read-only (``Table``): a dict-like
  lookup by ``common_feature_index`` with a small cache, as the rows of one
  user's impressions are usually adjacent.

Memory is then a few MB of SQLite page cache and of cache per process,
whatever the number of users; the file takes about the encoded size (0.6 GB
for the release).
"""

import collections
import errno
import os
import sqlite3
from typing import Iterator, Mapping, Optional

# Rows cached per worker; a user's impressions rarely span more.
CACHE_ROWS = 4096
_CREATE = "CREATE TABLE commons (idx TEXT NOT NULL, entries BLOB NOT NULL)"
_INSERT = "INSERT INTO commons VALUES (?, ?)"
_PART_BATCH = 4096


def _connect(path: str, read_only: bool = False) -> sqlite3.Connection:
  if read_only:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)
  connection = sqlite3.connect(path)
  # A scratch file, deleted with the run: no journal, no syncs.
  connection.execute("PRAGMA journal_mode = OFF")
  connection.execute("PRAGMA synchronous = OFF")
  return connection


class _DiskFull:
  """Turns SQLite's "database or disk is full" into ``OSError(ENOSPC)``.

  The converter recognises a full disk by that errno and reports it as such.
  """

  def __init__(self, path: str):
    self._path = path

  def __enter__(self):
    return self

  def __exit__(self, kind, error, traceback):
    if isinstance(error, sqlite3.OperationalError) and "full" in str(error):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC),
                    self._path) from error
    return False


class PartWriter:
  """Writes ``(common_feature_index, entries)`` rows to a new part file.

  Rows go to SQLite ``_PART_BATCH`` at a time, so a worker holds no more.
  """

  def __init__(self, path: str):
    self.path = path
    self._rows: list[tuple[str, bytes]] = []
    with _DiskFull(path):
      self._connection = _connect(path)
      self._connection.execute(_CREATE)

  def append(self, row: tuple[str, bytes]) -> None:
    self._rows.append(row)
    if len(self._rows) >= _PART_BATCH:
      self._flush()

  def _flush(self) -> None:
    with _DiskFull(self.path):
      self._connection.executemany(_INSERT, self._rows)
    self._rows.clear()

  def close(self) -> None:
    self._flush()
    with _DiskFull(self.path):
      self._connection.commit()
    self._connection.close()


class Builder(PartWriter):
  """Appends rows and part files into one table; ``finish`` indexes it."""

  def add_part(self, part: str) -> None:
    """Appends every row of ``part``, then deletes it."""
    with _DiskFull(self.path):
      self._connection.execute("ATTACH DATABASE ? AS part", (part,))
      self._connection.execute(
          "INSERT INTO commons SELECT idx, entries FROM part.commons")
      self._connection.commit()
      self._connection.execute("DETACH DATABASE part")
    os.remove(part)

  def finish(self) -> dict[str, int]:
    """Indexes the table and closes it.

    Returns:
      The rows of every ``common_feature_index`` that appears more than
      once (a join must reject its impressions: which row is the user's?).
    """
    self._flush()
    with _DiskFull(self.path):
      self._connection.execute("CREATE INDEX by_idx ON commons (idx)")
      duplicates = dict(self._connection.execute(
          "SELECT idx, COUNT(*) FROM commons GROUP BY idx "
          "HAVING COUNT(*) > 1"))
      self._connection.commit()
    self._connection.close()
    return duplicates


class Table(Mapping[str, bytes]):
  """The finished table, read-only, as a mapping from index to entries.

  Picklable and safe to fork: each process opens its own connection on first
  use. An index that appears more than once maps to one of its rows.
  """

  def __init__(self, path: str, cache_rows: int = CACHE_ROWS):
    self.path = path
    self._cache_rows = cache_rows
    self._connection: Optional[sqlite3.Connection] = None
    self._pid: Optional[int] = None
    self._cache: collections.OrderedDict = collections.OrderedDict()

  def __getstate__(self):
    return {"path": self.path, "cache_rows": self._cache_rows}

  def __setstate__(self, state):
    self.__init__(state["path"], state["cache_rows"])

  def _query(self, sql: str, *parameters) -> sqlite3.Cursor:
    if self._pid != os.getpid():
      # A connection must not cross a fork: open this process's own.
      self._connection = _connect(self.path, read_only=True)
      self._pid = os.getpid()
      self._cache.clear()
    return self._connection.execute(sql, parameters)

  def __getitem__(self, index: str) -> bytes:
    entries = self._cache.get(index)
    if entries is not None:
      self._cache.move_to_end(index)
      return entries
    row = self._query("SELECT entries FROM commons WHERE idx = ? LIMIT 1",
                      index).fetchone()
    if row is None:
      raise KeyError(index)
    self._cache[index] = entries = row[0]
    if len(self._cache) > self._cache_rows:
      self._cache.popitem(last=False)
    return entries

  def __iter__(self) -> Iterator[str]:
    for (index,) in self._query("SELECT DISTINCT idx FROM commons"):
      yield index

  def __len__(self) -> int:
    return self._query("SELECT COUNT(DISTINCT idx) FROM commons").fetchone()[0]
