"""The scripts of benchmarks/ import, and their --help lists their flags.

Nothing is timed: each script runs in a subprocess, once imported as a module
(which prints the flags its binding defines) and once as a program with
``--help``.
"""

import glob
import json
import os
import sys

from absl.testing import absltest
from absl.testing import parameterized

import testing

_SCRIPTS = sorted(glob.glob(os.path.join(testing.REPO, "benchmarks", "*.py")))
# Scripts meant for another environment (DeepCTR's), without escm2_tf, keep
# argparse; their flags are listed here.
_OWN_PARSER = {"deepctr_mmoe_bench": ("data_dir", "max_len", "batch_size",
                                      "epochs")}
# Imports a script as a module, not as __main__, and prints the names of the
# flags of its flagbind.Binding.
_IMPORT = """
import importlib.util, json, sys
from escm2_tf import flagbind
spec = importlib.util.spec_from_file_location("benchmark", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
bindings = [value for value in vars(module).values()
            if isinstance(value, flagbind.Binding)]
print(json.dumps([name for binding in bindings for name in binding.names()]))
"""


def _name(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


class BenchmarkScriptTest(parameterized.TestCase):

  def test_every_script_is_covered(self):
    self.assertGreaterEqual(len(_SCRIPTS), 5)

  @parameterized.named_parameters((_name(path), path) for path in _SCRIPTS)
  def test_imports_and_help_lists_its_flags(self, path):
    imported = testing.run_subprocess(testing.python_command(_IMPORT, path))
    self.assertEqual(imported.returncode, 0, imported.stderr)
    names = json.loads(imported.stdout.strip().splitlines()[-1])
    if _name(path) in _OWN_PARSER:
      self.assertEmpty(names)
      names = _OWN_PARSER[_name(path)]
    self.assertNotEmpty(names, "no flagbind.Binding in the module")
    result = testing.run_subprocess([sys.executable, path, "--help"])
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertEqual(result.stderr, "")
    for name in names:
      self.assertRegex(result.stdout, rf"\n  --(no)?{name}\b")


if __name__ == "__main__":
  absltest.main()
