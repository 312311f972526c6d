"""The README and docs/ state the present: the code's defaults, no history.

A doc quotes a flag's default in one form, which this test checks against
what the tool's ``--help`` prints (every flag, with its default)::

    `--min_count=100` (default)
    `escm2-synth --seed=0` (default)      when the tools' defaults differ

or in a table whose header reads ``| flag | default |`` (checked the same
way) or ``| field | default |`` (fields of one configuration dataclass, as the
Python API has them).

A flag's value on a line that says "default" in any other way, or a value in
parentheses right after a flag, fails the test: a default cannot be quoted
unchecked.
"""

import ast
import configparser
import dataclasses
import functools
import glob
import os
import re

from absl.testing import absltest

from escm2_pipelines import config as pipelines_config
from escm2_tf import config as config_lib
import testing

DOCS = sorted([os.path.join(testing.REPO, "README.md"),
               *glob.glob(os.path.join(testing.REPO, "docs", "**", "*.md"),
                          recursive=True)])
# `--flag=value` (default), optionally with the tool before the flag.
QUOTED_DEFAULT = re.compile(
    r"`(?:(escm2-\w+) )?--(\w+)=([^`\s]*)` \(default\)")
# A flag with a value, not in the checked form.
FLAG_VALUE = re.compile(r"`(?:escm2-\w+ )?--\w+=[^`\s]*`(?! \(default\))")
# A flag followed by a value in parentheses: a default quoted unchecked.
FLAG_THEN_VALUE = re.compile(r"`--\w+` \((?:default )?[-+]?[\d.]")
DEFAULT_WORD = re.compile(r"(?i)\bdefaults?\b")
ISSUE_NUMBER = re.compile(r"(?i)\bissues?\b[\s-]*#?\d|#\d+\b")
# A flag line of --help: two spaces, the flag, "=default" when it has one.
HELP_FLAG = re.compile(r"^  --(\w+)(?:=(\S*))?(?:\s|$)", re.MULTILINE)


def _tools() -> list[str]:
  """The console scripts the package installs."""
  parser = configparser.ConfigParser()
  parser.read(os.path.join(testing.REPO, "setup.cfg"))
  entries = parser["options.entry_points"]["console_scripts"]
  return [line.split("=")[0].strip() for line in entries.splitlines()
          if line.strip()]


@functools.cache
def _defaults() -> dict[str, dict[str, str]]:
  """{tool: {flag: default as --help prints it}}; "" when it has none."""
  defaults = {}
  for tool in _tools():
    result = testing.run_subprocess([testing.console_script(tool), "--help"])
    if result.returncode:
      raise AssertionError(f"{tool} --help: {result.stderr}")
    defaults[tool] = {name: value or "" for name, value in
                      HELP_FLAG.findall(result.stdout)}
  return defaults


def _same(quoted: str, actual: str) -> bool:
  if quoted == actual:
    return True
  try:
    return float(quoted) == float(actual)
  except ValueError:
    return quoted.lower() == actual.lower() and actual in ("true", "false")


def _lines():
  """(where, line) of every doc line, where = path:number."""
  for path in DOCS:
    with open(path, encoding="utf-8") as f:
      for number, line in enumerate(f, 1):
        yield f"{os.path.relpath(path, testing.REPO)}:{number}", line


def _check_default(tool: str | None, flag: str, quoted: str) -> str | None:
  """What is wrong with quoting ``quoted`` as ``flag``'s default, if any."""
  defaults = _defaults()
  tools = [tool] if tool else [name for name in defaults
                               if flag in defaults[name]]
  if not tools or tool and tool not in defaults:
    return f"--{flag}: no such flag of {tool or 'any tool'}"
  actual = {defaults[name].get(flag) for name in tools}
  if None in actual:
    return f"{tool} has no --{flag}"
  if len(actual) > 1:
    return (f"--{flag}: the tools' defaults differ ({sorted(actual)}); "
            "name the tool: `escm2-... --flag=value` (default)")
  (value,) = actual
  if not _same(quoted, value):
    return f"--{flag}: quoted default {quoted!r}, the code's is {value!r}"
  return None


def _split_top_level(cell: str) -> list[str]:
  """"8, (16,)" -> ["8", "(16,)"]: commas outside brackets separate."""
  parts, depth, current = [], 0, ""
  for char in cell:
    depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(char, 0)
    if char == "," and not depth:
      parts.append(current.strip())
      current = ""
    else:
      current += char
  return parts + [current.strip()]


def _default_tables():
  """(where, kind, names, values) of every row of a defaults table."""
  for path in DOCS:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
    kind = None
    for number, line in enumerate(lines, 1):
      cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
      if not line.startswith("|"):
        kind = None
      elif len(cells) > 1 and cells[1] == "default" and cells[0] in (
          "flag", "field"):
        kind = cells[0]
      elif kind and not set(cells[0]) <= set("-: "):
        names = re.findall(r"`(?:--)?(\w+)`", cells[0])
        where = f"{os.path.relpath(path, testing.REPO)}:{number}"
        yield where, kind, names, _split_top_level(cells[1])


def _literal(text: str):
  text = text.strip("`")
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _config_classes() -> list[type]:
  """The configuration dataclasses whose fields the docs' tables list."""
  return [value for module in (config_lib, pipelines_config)
          for value in vars(module).values()
          if dataclasses.is_dataclass(value) and isinstance(value, type)]


def _field_defaults(names: list[str]) -> dict[str, object] | None:
  """The defaults of the one config class that has every name, if any."""
  for cls in _config_classes():
    fields = {field.name: field for field in dataclasses.fields(cls)}
    if set(names) <= set(fields):
      return {name: fields[name].default for name in names}
  return None


class DocsTest(absltest.TestCase):

  def test_docs_exist(self):
    self.assertIn(os.path.join(testing.REPO, "README.md"), DOCS)
    self.assertGreater(len(DOCS), 5)

  def test_quoted_defaults_are_the_codes(self):
    problems, quoted = [], 0
    for where, line in _lines():
      for tool, flag, value in QUOTED_DEFAULT.findall(line):
        quoted += 1
        problem = _check_default(tool or None, flag, value)
        if problem:
          problems.append(f"{where}: {problem}")
    self.assertEmpty(problems)
    self.assertGreater(quoted, 10)

  def test_default_tables_are_the_codes(self):
    problems, rows = [], 0
    for where, kind, names, values in _default_tables():
      rows += 1
      if len(names) != len(values):
        problems.append(f"{where}: {len(names)} names, {len(values)} values")
        continue
      if kind == "flag":
        problems += [f"{where}: {problem}" for name, value in zip(
            names, values) if (problem := _check_default(
                None, name, value.strip("`")))]
        continue
      defaults = _field_defaults(names)
      if defaults is None:
        problems.append(f"{where}: no configuration class has {names}")
        continue
      for name, value in zip(names, values):
        if _literal(value) != defaults[name]:
          problems.append(f"{where}: {name}: quoted {value}, the code's is "
                          f"{defaults[name]!r}")
    self.assertEmpty(problems)
    self.assertGreater(rows, 20)

  def test_defaults_are_quoted_in_the_checked_form(self):
    problems = []
    for where, line in _lines():
      unchecked = FLAG_THEN_VALUE.findall(line)
      # "default" said other than by a checked quote makes a value suspect.
      rest = QUOTED_DEFAULT.sub("", line)
      if DEFAULT_WORD.search(rest):
        unchecked += FLAG_VALUE.findall(rest)
      problems += [f"{where}: {text}" for text in unchecked]
    self.assertEmpty(problems, "quote a default as `--flag=value` (default)")

  def test_no_issue_numbers(self):
    found = [f"{where}: {line.strip()}" for where, line in _lines()
             if ISSUE_NUMBER.search(line)]
    self.assertEmpty(found)

  def test_the_checker_sees_a_wrong_default(self):
    self.assertIsNone(_check_default("escm2-train", "min_count",
                                     _defaults()["escm2-train"]["min_count"]))
    self.assertIn("the code's is", _check_default(None, "epochs", "1000"))
    self.assertIn("no such flag", _check_default(None, "no_such_flag", "1"))


if __name__ == "__main__":
  absltest.main()
