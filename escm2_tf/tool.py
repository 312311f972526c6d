"""A command-line tool: its flags, its settings, and the opening they share.

Every ``escm2-*`` tool is a ``Tool``: its flags (a ``flagbind.Binding``), how
its settings are built from them, and its body. ``Tool.run`` is the console
script: it defines the flags (when the tool runs, not when its module is
imported), parses the command line with the tool's own ``--help``, sets the
log levels of ``--verbosity`` and calls ``Tool.main``. ``Tool.main`` is the
opening every tool shares: arguments the tool does not take, and a
``ConfigError`` from its settings or its body, become one line naming the flag
(``escm2-x: error: --flag: what is wrong``) and exit status 2, before
TensorFlow or Beam load; Ctrl-C is one line and exit status 130.

  TOOL = tool.Tool("escm2-x", __doc__,
                   flagbind.Binding(flagbind.Section(XFlags, "input")),
                   build=lambda binding: binding.build(XFlags), body=_run)

  def run():  # The console script.
    TOOL.run()

Tests run ``Tool.main`` in their process, its flags defined and set inside
``absl.testing.flagsaver`` (``tests/testing.py``'s ``run_main``).
"""

import dataclasses
import sys
from typing import Any, Callable, Sequence

from absl import app
from absl import flags

from escm2_tf import console
from escm2_tf import flagbind
from escm2_tf.options import ConfigError

USAGE_ERROR = 2
INTERRUPTED = 130
_HELP_ARGS = ("-h", "-?", "-help", "--help", "-helpshort", "--helpshort")
_HELPFULL_ARGS = ("-helpfull", "--helpfull")


def fail(program: str, message: str, status: int = USAGE_ERROR) -> int:
  """Prints ``program: error: message`` to stderr; returns ``status``."""
  print(f"{program}: error: {message}", file=sys.stderr)
  return status


@dataclasses.dataclass(frozen=True)
class Tool:
  """A command-line tool.

  Attributes:
    program: Its name, which starts its error lines.
    doc: The text its ``--help`` starts with (its module's docstring).
    binding: Its flags.
    build: Its settings from the parsed flags; raises ``ConfigError``.
    body: Runs the tool on the settings (and, with ``known_only`` or
      ``passes_args``, the arguments its flags left); returns the exit status
      (None for 0) and may raise ``ConfigError``.
    known_only: Leave flags it does not define in the arguments, for
      ``body`` (Beam's pipeline options); otherwise arguments are an error.
    passes_args: Give ``body`` the arguments after ``--`` (another tool's
      flags); otherwise arguments are an error.
    check_args: With ``known_only``, checks the arguments left before the
      settings are built; raises ``ConfigError``.
    interrupted: What a Ctrl-C prints.
  """
  program: str
  doc: str
  binding: flagbind.Binding
  build: Callable[[flagbind.Binding], Any]
  body: Callable[..., int | None]
  known_only: bool = False
  passes_args: bool = False
  check_args: Callable[[list[str]], None] | None = None
  interrupted: str = "interrupted"

  def main(self, argv: Sequence[str]) -> int:
    """Builds the settings from the parsed flags and runs the body.

    Args:
      argv: The program's name and the arguments the flags left.

    Returns:
      The exit status: the body's, or 2 after one line on stderr.
    """
    args = list(argv[1:])
    takes_args = self.known_only or self.passes_args
    if args and not takes_args:
      return fail(self.program, f"unexpected arguments {' '.join(args)!r}")
    try:
      if args and self.check_args:
        self.check_args(args)
      settings = self.build(self.binding)
      status = (self.body(settings, args) if takes_args
                else self.body(settings))
    except ConfigError as error:
      return fail(self.program, flagbind.error_line(error))
    return status or 0

  def parse(self, argv: list[str]) -> list[str]:
    """``app.run``'s flags parser: the tool's help, one-line errors."""
    flag_values = self.binding.flag_values
    if any(arg in _HELP_ARGS for arg in argv[1:]):
      print(self.binding.help(self.program, self.doc))
      sys.exit(0)
    if any(arg in _HELPFULL_ARGS for arg in argv[1:]):
      # absl's own --helpfull, with exit status 0 like --help.
      print(flag_values.get_help())
      sys.exit(0)
    try:
      return flag_values(argv, known_only=self.known_only)
    except flags.Error as error:
      sys.exit(fail(self.program, flagbind.usage_error(error)))

  def run(self) -> None:
    """The console script: defines the flags, parses, runs ``Tool.main``."""
    self.binding.define()

    def guarded(argv: list[str]) -> int | None:
      # Here, not in the parser: app.run resets absl's logger after parsing.
      console.configure(flags.FLAGS["verbosity"].value)
      try:
        return self.main(argv)
      except KeyboardInterrupt:
        return fail(self.program, self.interrupted, INTERRUPTED)

    app.run(guarded, flags_parser=self.parse)
