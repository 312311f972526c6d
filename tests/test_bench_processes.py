"""Tests of escm2_tf.bench.processes: the stage measurements of benchmarks."""

import os
import subprocess
import sys

from absl.testing import absltest

from escm2_tf.bench import processes
import testing

# A child that holds about 200 MiB until its grandchild, which shares its
# stdin, reads that stdin to the end: the test decides when the child exits.
_HOLD = ("import subprocess, sys\n"
         "block = bytearray(200 << 20)\n"
         "subprocess.run([sys.executable, '-c', 'import sys; "
         "sys.stdin.read()'], check=True)\n")


class ProcessesTest(absltest.TestCase):

  def test_tree_rss_counts_this_process(self):
    self.assertGreater(processes.tree_rss(os.getpid()), 1 << 20)

  def test_peak_rss_sees_the_child_and_cpu_is_counted(self):
    before = processes.children_cpu_seconds()
    child = subprocess.Popen([sys.executable, "-c", _HOLD],
                             stdin=subprocess.PIPE)
    sampler = processes.PeakRss(child, interval=0.05)
    try:
      testing.wait_until(lambda: sampler.peak > 200 << 20,
                         "sample of the child's 200 MiB")
    finally:
      child.stdin.close()
    self.assertEqual(child.wait(timeout=testing.SUBPROCESS_TIMEOUT_S), 0)
    self.assertGreater(sampler.join(), 200 << 20)
    self.assertGreater(processes.children_cpu_seconds(), before)

  def test_dir_bytes(self):
    root = testing.new_dir()
    os.makedirs(os.path.join(root, "a"))
    for path, size in (("x", 10), ("a/y", 7)):
      with open(os.path.join(root, path), "wb") as f:
        f.write(b"\0" * size)
    self.assertEqual(processes.dir_bytes(root), 17)


if __name__ == "__main__":
  absltest.main()
