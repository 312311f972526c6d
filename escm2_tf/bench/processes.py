"""Measuring child processes: CPU seconds, peak memory of a tree, bytes written.

The benchmark scripts run each stage as its own process (as a user would) and
measure it from outside; nothing here imports TensorFlow.
"""

import os
import resource
import subprocess
import threading
import time

_SAMPLE_SECONDS = 0.2


def children_cpu_seconds() -> float:
  """User plus system seconds of the children this process has waited for."""
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def tree_rss(root: int) -> int:
  """Resident bytes of ``root`` and all its descendants, from /proc."""
  children: dict[int, list[int]] = {}
  rss: dict[int, int] = {}
  page = os.sysconf("SC_PAGE_SIZE")
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      with open(f"/proc/{entry}/stat") as f:
        stat = f.read().rsplit(")", 1)[1].split()
    except OSError:
      continue
    children.setdefault(int(stat[1]), []).append(int(entry))
    rss[int(entry)] = int(stat[21]) * page
  total, stack = 0, [root]
  while stack:
    pid = stack.pop()
    total += rss.get(pid, 0)
    stack += children.get(pid, [])
  return total


def dir_bytes(path: str) -> int:
  """The bytes of every file under ``path``; files that vanish count 0."""
  total = 0
  for root, _, names in os.walk(path):
    for name in names:
      try:
        total += os.path.getsize(os.path.join(root, name))
      except OSError:
        pass
  return total


class PeakRss:
  """Samples a running process tree's resident memory until it exits.

  Start it right after the process; ``join`` once the process has ended
  returns the peak in bytes.
  """

  def __init__(self, process: subprocess.Popen,
               interval: float = _SAMPLE_SECONDS):
    self._process = process
    self._interval = interval
    self.peak = 0
    self._thread = threading.Thread(target=self._sample, daemon=True)
    self._thread.start()

  def _sample(self) -> None:
    while self._process.poll() is None:
      self.peak = max(self.peak, tree_rss(self._process.pid))
      time.sleep(self._interval)

  def join(self) -> int:
    self._thread.join()
    return self.peak
