"""pytest's setup of absl: the flags count as parsed.

Under pytest nobody parses absl's command line, but absltest reads its own
flags (``--test_tmpdir`` for ``create_tempdir``). The tools' flags are defined
only when a test runs one (``testing.run_main``, ``testing.tool_flags``).
"""

from absl import flags

flags.FLAGS.mark_as_parsed()
