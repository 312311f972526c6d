"""Configuration fields declared once: type, default, accepted values, help.

A configuration dataclass declares each field once: its annotation, its
default, and its entry in the ``Attributes:`` section of the docstring (the
help text). ``option`` adds what an annotation cannot say: the accepted
values, bounds, and the help group of its flag. ``check_declared`` enforces
those declarations; every check raises ``ConfigError``, which names the field,
and every field is also the command-line flag of the same name
(``escm2_tf.flagbind``). Nothing here imports TensorFlow.
"""

import dataclasses
import inspect
import math
import numbers
import re
import types
import typing
from typing import Any, Sequence

CHOICES = "choices"
MINIMUM = "minimum"
MAXIMUM = "maximum"
GROUP = "group"
HELP = "help"
REPEATABLE = "repeatable"


class ConfigError(ValueError):
  """A configuration value that is invalid, missing, or does not fit others.

  The one error type of bad configuration: the trainer's, the simulator's and
  the converter's. The CLIs report it as one line naming the flag.

  Attributes:
    field: The field at fault, which is also the name of its flag.
    detail: What is wrong with it.
    choices: The accepted values, when they are a fixed set.
  """

  def __init__(self, field: str, detail: str, choices: Sequence[Any] = ()):
    super().__init__(f"{field}: {detail}")
    self.field = field
    self.detail = detail
    self.choices = tuple(choices)


def same_settings(stored: Any, current: Any) -> bool:
  """Whether ``stored`` holds the values of the dataclass ``current``.

  ``stored`` is ``dataclasses.asdict`` of one written earlier: a field added
  since counts at its default.
  """
  if not isinstance(stored, dict):
    return False
  defaults = {f.name: f.default for f in dataclasses.fields(current)
              if f.default is not dataclasses.MISSING}
  return {**defaults, **stored} == dataclasses.asdict(current)


# pylint: disable-next=redefined-builtin
def option(default: Any = dataclasses.MISSING, *, choices: Sequence[Any] = (),
           minimum: float | None = None, maximum: float | None = None,
           group: str = "", help: str = "", repeatable: bool = False) -> Any:
  """A dataclass field with what its flag and its checks need.

  Args:
    default: The field's default; none makes the field required.
    choices: The accepted values.
    minimum: The smallest accepted number (inclusive).
    maximum: The largest accepted number (inclusive).
    group: The help group of its flag; the dataclass's group when empty.
    help: One-line help; the first sentence of the docstring entry when empty.
    repeatable: A ``tuple[str, ...]`` field whose flag is given once per
      value (``--regime=a --regime=b``) instead of as a comma list, for
      values that hold commas.
  """
  metadata = {key: value for key, value in (
      (CHOICES, tuple(choices)), (MINIMUM, minimum), (MAXIMUM, maximum),
      (GROUP, group), (HELP, help), (REPEATABLE, repeatable))
              if value is not None and value is not False
              and value not in ((), "")}
  return dataclasses.field(default=default, metadata=metadata)


def field_type(cls: type, name: str) -> tuple[type, bool]:
  """A field's type without ``None``, and whether it may be ``None``."""
  hint = typing.get_type_hints(cls)[name]
  if typing.get_origin(hint) in (typing.Union, types.UnionType):
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return args[0], len(args) < len(typing.get_args(hint))
  return hint, False


def field_docs(cls: type) -> dict[str, str]:
  """The ``Attributes:`` docstring entries of ``cls``, one line each."""
  lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
  if "Attributes:" not in lines:
    return {}
  entries: dict[str, list[str]] = {}
  name, indent = None, None
  for line in lines[lines.index("Attributes:") + 1:]:
    if line and not line.startswith(" "):
      break
    match = re.match(r"^( +)(\w+): ?(.*)$", line)
    if match and indent in (None, len(match.group(1))):
      indent, name = len(match.group(1)), match.group(2)
      entries[name] = [match.group(3)]
    elif name and line.strip():
      entries[name].append(line.strip())
  return {key: " ".join(words).replace("``", "")
          for key, words in entries.items()}


def one_line_help(cls: type, field: dataclasses.Field) -> str:
  """The field's declared help, or the first sentence of its docstring."""
  if HELP in field.metadata:
    return field.metadata[HELP]
  text = field_docs(cls).get(field.name, "")
  return re.split(r"(?<!e\.g)(?<!i\.e)(?<=\.)\s+(?=[A-Z(])", text)[0]


def is_number(value: Any, integer: bool = False) -> bool:
  """A finite int or float (an int when ``integer``); bools are not."""
  if isinstance(value, bool):
    return False
  if integer:
    return isinstance(value, numbers.Integral)
  return isinstance(value, numbers.Real) and math.isfinite(value)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
  if value not in choices:
    raise ConfigError(name, f"must be one of {', '.join(map(str, choices))}; "
                      f"got {value!r}", choices)


def check_range(name: str, value: Any, minimum: float | None = None,
                maximum: float | None = None, integer: bool = False) -> None:
  """Raises unless ``value`` is a number in ``[minimum, maximum]``."""
  inside = is_number(value, integer) and (
      (minimum is None or value >= minimum)
      and (maximum is None or value <= maximum))
  if inside:
    return
  kind = "an integer" if integer else "a number"
  if maximum is None:
    bounds = f" >= {minimum}" if minimum is not None else ""
  else:
    bounds = f" in [{minimum if minimum is not None else '-inf'}, {maximum}]"
  raise ConfigError(name, f"must be {kind}{bounds}, got {value!r}")


def check_declared(config: Any) -> None:
  """Checks every field against its declared type, choices and bounds."""
  cls = type(config)
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    kind, optional = field_type(cls, field.name)
    if value is None and optional:
      continue
    if kind is bool and not isinstance(value, bool):
      raise ConfigError(field.name, f"must be true or false, got {value!r}")
    # A sequence field's declarations apply to each of its values.
    sequence = typing.get_origin(kind) is tuple
    declared = {CHOICES, MINIMUM, MAXIMUM} & set(field.metadata)
    if sequence and declared:
      kind = typing.get_args(kind)[0]
      if not value:
        raise ConfigError(field.name, "must name at least one value")
    elif sequence:
      continue
    for item in value if sequence else (value,):
      if CHOICES in field.metadata:
        check_choice(field.name, item, field.metadata[CHOICES])
      if MINIMUM in field.metadata or MAXIMUM in field.metadata:
        check_range(field.name, item, field.metadata.get(MINIMUM),
                    field.metadata.get(MAXIMUM), integer=kind is int)


def json_ready(value: Any) -> Any:
  """Dataclasses, mappings and tuples as JSON-ready dicts and lists."""
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return json_ready(dataclasses.asdict(value))
  if isinstance(value, dict):
    return {str(key): json_ready(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_ready(item) for item in value]
  return value
