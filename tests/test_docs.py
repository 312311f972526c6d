"""The README and docs/ state the present: the code's defaults, no history.

A doc quotes a flag's default in one form, which this test checks against
what the tool's ``--help`` prints (every flag, with its default)::

    `--min_count=100` (default)
    `escm2-synth --seed=0` (default)      when the tools' defaults differ

A flag's value on a line that says "default" in any other way, or a value in
parentheses right after a flag, fails the test: a default cannot be quoted
unchecked.
"""

import configparser
import functools
import glob
import os
import re

from absl.testing import absltest

import testing

DOCS = sorted([os.path.join(testing.REPO, "README.md"),
               *glob.glob(os.path.join(testing.REPO, "docs", "**", "*.md"),
                          recursive=True)])
# `--flag=value` (default), optionally with the tool before the flag.
QUOTED_DEFAULT = re.compile(
    r"`(?:(escm2-\w+) )?--(\w+)=([^`\s]*)` \(default\)")
# A flag with a value, not in the checked form.
FLAG_VALUE = re.compile(r"`(?:escm2-\w+ )?--\w+=[^`\s]*`(?! \(default\))")
# A flag followed by a parenthesised value: how defaults were quoted before.
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
