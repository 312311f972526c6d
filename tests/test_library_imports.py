"""The library's imports run one way: escm2_tf never loads the converter.

``escm2_pipelines`` (the Beam converter) imports ``escm2_tf``; the reverse
would load Beam into training, serving and scoring and make a cycle. Every
module of the package is read as source, none imported, so a module that
fails to import (an optional extra missing) is checked too.
"""

import ast
import os
import pkgutil

from absl.testing import absltest
from absl.testing import parameterized

import escm2_tf

_FORBIDDEN = ("escm2_pipelines", "apache_beam")
# Bodies that do not run when their module is imported.
_DEFERRED = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _module_files(package: str = "escm2_tf",
                  directory: str = os.path.dirname(escm2_tf.__file__)
                  ) -> dict[str, str]:
  """Every module of ``package``, by name, to its source file.

  ``pkgutil.iter_modules`` lists a directory without importing it.
  """
  files = {package: os.path.join(directory, "__init__.py")}
  for info in pkgutil.iter_modules([directory]):
    name = f"{package}.{info.name}"
    path = os.path.join(directory, info.name)
    if info.ispkg:
      files.update(_module_files(name, path))
    else:
      files[name] = path + ".py"
  return files


def _imported_names(node: ast.AST) -> list[str]:
  if isinstance(node, ast.Import):
    return [alias.name for alias in node.names]
  if isinstance(node, ast.ImportFrom) and node.level == 0:
    return [node.module or ""]
  return []


def import_time_imports(source: str) -> list[tuple[int, str]]:
  """``(line, module)`` of the imports that run when ``source`` is imported.

  Imports inside functions are deferred to their calls and left out; those
  at module level, in classes and under ``if``/``try`` are kept.
  """
  found, pending = [], [ast.parse(source)]
  while pending:
    node = pending.pop()
    found.extend((node.lineno, name) for name in _imported_names(node))
    pending.extend(child for child in ast.iter_child_nodes(node)
                   if not isinstance(child, _DEFERRED))
  return sorted(found)


def _forbidden(name: str) -> bool:
  return any(name == package or name.startswith(package + ".")
             for package in _FORBIDDEN)


class ImportTimeImportsTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("plain", "import apache_beam as beam\n", [(1, "apache_beam")]),
      ("from", "from escm2_pipelines import rows\n",
       [(1, "escm2_pipelines")]),
      ("guarded", "try:\n  import apache_beam.io\nexcept ImportError:\n"
       "  pass\n", [(2, "apache_beam.io")]),
      ("in_class", "class A:\n  import escm2_pipelines.config\n",
       [(2, "escm2_pipelines.config")]),
      ("in_function", "def f():\n  import apache_beam\n", []),
      ("relative", "from . import schema\n", []),
  )
  def test_finds_what_runs_at_import(self, source, expected):
    self.assertEqual(import_time_imports(source), expected)

  def test_walks_the_whole_package(self):
    files = _module_files()
    for name in ("escm2_tf.scoring", "escm2_tf.formats.encode",
                 "escm2_tf.cli.predict", "escm2_tf.simulator.io"):
      self.assertIn(name, files)
    for path in files.values():
      self.assertTrue(os.path.isfile(path), path)


class LibraryImportsTest(absltest.TestCase):

  def test_no_module_imports_the_converter_or_beam(self):
    offending = []
    for name, path in sorted(_module_files().items()):
      with open(path, encoding="utf-8") as f:
        imports = import_time_imports(f.read())
      offending += [f"{path}:{line}: {module}" for line, module in imports
                    if _forbidden(module)]
    self.assertEmpty(offending, "escm2_tf imports " + "; ".join(offending))


if __name__ == "__main__":
  absltest.main()
