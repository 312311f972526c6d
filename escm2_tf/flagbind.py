"""Command-line flags derived from the configuration dataclasses.

Every tool declares its flags as the fields of frozen dataclasses
(``escm2_tf.options``); a ``Binding`` of ``Section``s defines one absl flag
per field (``define``), of the same name, type, default and accepted values,
with the field's docstring entry as help. It builds the dataclasses back from
the parsed flags (``build``; a dataclass of bound dataclasses, such as
``ExperimentConfig``, section by section), so a flagfile is just those flags,
and reports a ``ConfigError`` as one line naming the flag (``error_line``).
Nothing is defined at import: a tool defines its flags when it runs
(``escm2_tf.tool``), so tools and tests share one process without clashes.

A script (``benchmarks/``) binds its own flags the same way:

  @dataclasses.dataclass(frozen=True)
  class SweepFlags:
    \"\"\"What to sweep.

    Attributes:
      work_dir: Where the data go.
      seeds: Seeds to run.
    \"\"\"
    work_dir: str = option("/tmp/sweep", group="data")
    seeds: tuple[int, ...] = (0, 1)

  TOOL = tool.Tool(
      "sweep", __doc__,
      flagbind.Binding(flagbind.Section(SweepFlags, "benchmark"),
                       *flagbind.TRAIN_SECTIONS),
      build=lambda binding: (binding.build(SweepFlags),
                             binding.build(config.ExperimentConfig)),
      body=_sweep)  # _sweep(settings) -> exit status

  if __name__ == "__main__":
    TOOL.run()

``TRAIN_SECTIONS`` are ``escm2-train``'s flags (every ``ExperimentConfig``
field); leave them out, or ``exclude`` fields of a ``Section``, for a script
that fixes them itself.
"""

import dataclasses
import re
import textwrap
from typing import Any, Sequence

from absl import flags

from escm2_tf import config as config_lib
from escm2_tf import options
from escm2_tf.options import ConfigError

# Help groups in this order; others in the order they appear.
_GROUPS = ("input", "data", "size", "world", "conversion", "benchmark",
           "model", "loss", "training", "distribution", "serving", "output")
_COLUMN = 34
_WIDTH = 100


@dataclasses.dataclass(frozen=True)
class Section:
  """The fields of one configuration dataclass that become flags.

  Attributes:
    config: The dataclass.
    group: The help group of its fields that declare none.
    exclude: Fields that get no flag (another section's flag sets them).
  """
  config: type
  group: str
  exclude: tuple[str, ...] = ()

  def fields(self) -> list[dataclasses.Field]:
    return [field for field in dataclasses.fields(self.config)
            if field.name not in self.exclude]


# escm2-train's flags, one per field of ExperimentConfig's sections; a
# training flagfile holds these (the benchmark reads one too).
TRAIN_SECTIONS = (
    Section(config_lib.DataConfig, "data"),
    Section(config_lib.TrainerConfig, "training"),
    Section(config_lib.RuntimeConfig, "training"),
    Section(config_lib.LossConfig, "loss"),
    Section(config_lib.ModelConfig, "model"))


def _flag_default(field: dataclasses.Field, kind: type) -> Any:
  if field.default is dataclasses.MISSING:
    return None
  if kind is tuple and field.default is not None:
    return [str(value) for value in field.default]
  return field.default


def _define(section: Section, field: dataclasses.Field,
            flag_values: flags.FlagValues) -> None:
  kind, _ = options.field_type(section.config, field.name)
  kind = tuple if getattr(kind, "__origin__", kind) is tuple else kind
  default = _flag_default(field, kind)
  text = options.one_line_help(section.config, field)
  common = {"flag_values": flag_values}
  choices = field.metadata.get(options.CHOICES)
  if choices and kind is str:
    flags.DEFINE_enum(field.name, default, choices, text, **common)
  elif kind is bool:
    flags.DEFINE_boolean(field.name, default, text, **common)
  elif kind is int:
    flags.DEFINE_integer(field.name, default, text, **common)
  elif kind is float:
    flags.DEFINE_float(field.name, default, text, **common)
  elif kind is tuple and field.metadata.get(options.REPEATABLE):
    flags.DEFINE_multi_string(field.name, default, text, **common)
  elif kind is tuple:
    flags.DEFINE_list(field.name, default, text, **common)
  else:
    flags.DEFINE_string(field.name, default, text, **common)


class Binding:
  """The flags of a CLI, derived from its configuration dataclasses."""

  def __init__(self, *sections: Section,
               flag_values: flags.FlagValues = flags.FLAGS):
    self.sections = sections
    self.flag_values = flag_values

  def define(self) -> "Binding":
    """Defines the flags in ``flag_values``; returns the binding.

    Raises:
      absl.flags.DuplicateFlagError: A flag of that name is defined already.
    """
    for section in self.sections:
      for field in section.fields():
        _define(section, field, self.flag_values)
    return self

  def _section(self, config: type) -> Section:
    for section in self.sections:
      if section.config is config:
        return section
    raise KeyError(f"{config.__name__} is not bound")

  def values(self, config: type) -> dict[str, Any]:
    """The bound fields of ``config`` as the flags hold them, typed."""
    section = self._section(config)
    values = {}
    for field in section.fields():
      value = self.flag_values[field.name].value
      kind, _ = options.field_type(config, field.name)
      if getattr(kind, "__origin__", None) is tuple and value is not None:
        value = (_integers(field.name, value) if kind.__args__[0] is int
                 else tuple(text.strip() for text in value))
      values[field.name] = value
    return values

  def build(self, config: type, **overrides: Any) -> Any:
    """``config`` from the flags and ``overrides``.

    A field whose type is a dataclass (a section of ``ExperimentConfig``) is
    built from its own bound flags.

    Raises:
      ConfigError: A value the dataclass refuses; names the field (= flag).
    """
    if any(section.config is config for section in self.sections):
      return config(**{**self.values(config), **overrides})
    return config(**{
        field.name: self.build(options.field_type(config, field.name)[0])
        for field in dataclasses.fields(config)}, **overrides)

  def names(self) -> list[str]:
    """The names of the bound flags."""
    return [field.name for section in self.sections
            for field in section.fields()]

  def present(self) -> list[str]:
    """The bound flags given on the command line or in a flagfile."""
    return [name for name in self.names()
            if self.flag_values[name].present]

  def help(self, program: str, doc: str) -> str:
    """``--help``: the tool's docstring, then its flags by group."""
    groups: dict[str, list[str]] = {}
    for section in self.sections:
      for field in section.fields():
        group = field.metadata.get(options.GROUP, section.group)
        groups.setdefault(group, []).append(
            _flag_help(self.flag_values[field.name]))
    lines = [textwrap.dedent(doc).strip(), ""]
    # Groups of their own go before the outputs, which come last.
    order = sorted(groups, key=lambda group: (
        _GROUPS.index(group) if group in _GROUPS
        else _GROUPS.index("output") - 0.5))
    for group in order:
      entries = groups[group]
      lines += [f"{group.capitalize()} flags:"] + entries + [""]
    lines += [
        "Common flags:",
        _entry("--flagfile=FILE", "Read flags from FILE, one per line "
               "(configs/*.flags)."),
        _entry("--verbosity=1", "Also show TensorFlow's and Beam's logs."),
        _entry("--helpfull", "Every flag, including absl's."), ""]
    return "\n".join(lines).replace("{program}", program)


def _integers(name: str, texts: Sequence[str]) -> tuple[int, ...]:
  try:
    return tuple(int(text) for text in texts)
  except ValueError:
    raise ConfigError(name, "expected comma-separated integers, got "
                      f"{','.join(texts)!r}") from None


def _entry(left: str, text: str) -> str:
  indent = " " * _COLUMN
  if len(left) + 4 > _COLUMN:
    return (f"  {left}\n" + textwrap.fill(
        text, _WIDTH, initial_indent=indent, subsequent_indent=indent))
  return textwrap.fill(text, _WIDTH, initial_indent=f"  {left}".ljust(_COLUMN),
                       subsequent_indent=indent)


def _flag_help(flag: flags.Flag) -> str:
  default = flag.default_as_str
  left = f"--{flag.name}" if default in (None, "''", '""') else (
      f"--{flag.name}={default.strip(chr(39))}")
  return _entry(left, flag.help)


def error_line(error: ConfigError) -> str:
  """``--flag: what is wrong``: every field is the flag of its name."""
  return f"--{error.field}: {error.detail}"


def usage_error(error: flags.Error) -> str:
  """absl's parse errors as ``--flag=value: what is wrong``."""
  if isinstance(error, flags.UnrecognizedFlagError):
    message = f"--{error.flagname}: unknown flag"
    match = re.search(r"Did you mean: (.*) \?", str(error))
    if match:
      message += "; did you mean " + ", ".join(
          f"--{name}" for name in match.group(1).split(", ")) + "?"
    return message
  message = re.sub(r"^flag ", "", str(error))
  message = re.sub(r"invalid literal for int\(\) with base 10: .*",
                   "expected an integer", message)
  message = re.sub(r"could not convert string to float: .*",
                   "expected a number", message)
  return message.replace("ERROR:: Unable to open flagfile: ",
                         "--flagfile: cannot open: ")
