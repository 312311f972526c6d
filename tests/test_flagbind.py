"""Tests of escm2_tf/flagbind.py and tool.py: fields -> flags -> configs."""

import contextlib
import dataclasses
import io
import os
from unittest import mock

from absl import flags
from absl.testing import absltest
from absl.testing import parameterized

import testing
from escm2_pipelines import config as convert_config
from escm2_tf import config as config_lib
from escm2_tf import flagbind
from escm2_tf import options
from escm2_tf import simulator
from escm2_tf import tool
from escm2_tf.options import ConfigError
from escm2_tf.options import option

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class _Example:
  """A config with a field of every kind.

  Attributes:
    path: Where things go. Required. A second sentence not in the help.
    count: How many, at least 1.
    rate: A rate, e.g. 0.5.
    mode: The mode.
    units: Layer sizes.
    cap: An optional cap.
    names: Some names.
    on: Whether it is on.
    specs: Specs that hold commas, one flag each.
  """
  path: str = option(group="output")
  count: int = option(3, minimum=1)
  rate: float = 0.5
  mode: str = option("a", choices=("a", "b"))
  units: tuple[int, ...] = (4, 2)
  cap: float | None = None
  names: tuple[str, ...] = option(("x",), choices=("x", "y"))
  on: bool = True
  specs: tuple[str, ...] = option((), repeatable=True)

  def __post_init__(self):
    if not self.path:
      raise ConfigError("path", "is required")
    options.check_declared(self)


def _flag_value(default):
  """A field's default as its flag holds it (lists of strings)."""
  if isinstance(default, tuple):
    return [str(value) for value in default]
  return default


def _binding(*sections):
  flag_values = flags.FlagValues()
  return (flagbind.Binding(*sections, flag_values=flag_values).define(),
          flag_values)


class FieldToFlagTest(absltest.TestCase):

  def test_flags_carry_type_default_choices_and_help(self):
    _, flag_values = _binding(flagbind.Section(_Example, "example"))
    expected = {"path": ("string", None), "count": ("int", 3),
                "rate": ("float", 0.5), "mode": ("string enum", "a"),
                "units": ("comma separated list of strings", ["4", "2"]),
                "cap": ("float", None), "names": (
                    "comma separated list of strings", ["x"]),
                "on": ("bool", True),
                "specs": ("multi string", [])}
    for name, (kind, default) in expected.items():
      self.assertEqual(flag_values[name].flag_type(), kind, name)
      self.assertEqual(flag_values[name].default, default, name)
    self.assertEqual(flag_values["mode"].parser.enum_values, ["a", "b"])
    self.assertEqual(flag_values["path"].help, "Where things go.")
    self.assertEqual(flag_values["rate"].help, "A rate, e.g. 0.5.")

  def test_zero_bounds_are_declared(self):
    self.assertEqual(option(0, minimum=0, maximum=0.0).metadata,
                     {"minimum": 0, "maximum": 0.0})

  def test_every_config_field_has_help(self):
    for config in (*config_lib.SECTIONS.values(), simulator.SimulatorConfig,
                   convert_config.ConvertConfig):
      for field in dataclasses.fields(config):
        self.assertNotEmpty(options.one_line_help(config, field),
                            f"{config.__name__}.{field.name}")

  def test_every_experiment_field_is_a_flag_of_its_name(self):
    binding, flag_values = _binding(*flagbind.TRAIN_SECTIONS)
    help_text = binding.help("x", "")
    for section in dataclasses.fields(config_lib.ExperimentConfig):
      section_type = config_lib.SECTIONS[section.name]
      for field in dataclasses.fields(section_type):
        self.assertIn(field.name, flag_values, f"{section.name}.{field.name}")
        self.assertIn(f"--{field.name}", help_text)
        if field.default is not dataclasses.MISSING:
          self.assertEqual(flag_values[field.name].value,
                           _flag_value(field.default), field.name)


class RoundTripTest(parameterized.TestCase):

  def test_defaults_build_the_default_configs(self):
    binding, flag_values = _binding(*flagbind.TRAIN_SECTIONS)
    flag_values(["prog", "--train_data=t", "--eval_data=e", "--vocab_dir=v",
                 "--model_dir=m"])
    self.assertEqual(
        binding.build(config_lib.ExperimentConfig),
        config_lib.ExperimentConfig.create(train_data="t", eval_data="e",
                                           vocab_dir="v", model_dir="m"))

  def test_flags_build_the_config(self):
    binding, flag_values = _binding(flagbind.Section(_Example, "example"))
    flag_values(["prog", "--path=p", "--count=7", "--rate=0.25", "--mode=b",
                 "--units=8,4,2", "--cap=3", "--names=y,x", "--noon",
                 "--specs=a:1,2", "--specs=b:3"])
    self.assertEqual(binding.build(_Example),
                     _Example(path="p", count=7, rate=0.25, mode="b",
                              units=(8, 4, 2), cap=3.0, names=("y", "x"),
                              on=False, specs=("a:1,2", "b:3")))
    self.assertEqual(sorted(binding.present()),
                     ["cap", "count", "mode", "names", "on", "path", "rate",
                      "specs", "units"])

  def test_overrides_win(self):
    binding, flag_values = _binding(flagbind.Section(_Example, "example"))
    flag_values(["prog", "--path=p", "--count=7"])
    self.assertEqual(binding.build(_Example, count=9).count, 9)

  @parameterized.parameters("demo.flags", "paddlerec.flags", "bigdata.flags")
  def test_users_flagfiles_still_parse(self, name):
    binding, flag_values = _binding(*flagbind.TRAIN_SECTIONS)
    flag_values(["prog", f"--flagfile={os.path.join(_REPO, 'configs', name)}"])
    binding.build(config_lib.ExperimentConfig)
    self.assertContainsSubset({"train_data", "loss"}, binding.present())


class ErrorTest(parameterized.TestCase):

  @parameterized.parameters(
      (["--count=0"], "--count: must be an integer >= 1, got 0"),
      (["--units=4,x"], "--units: expected comma-separated integers, got "
       "'4,x'"),
      (["--names=x,z"], "--names: must be one of x, y; got 'z'"),
      ([], "--path: is required"))
  def test_config_errors_name_the_flag(self, argv, line):
    binding, flag_values = _binding(flagbind.Section(_Example, "example"))
    flag_values(["prog", *argv] if argv else ["prog"])
    if argv:
      flag_values["path"].value = "p"
    with self.assertRaises(ConfigError) as caught:
      binding.build(_Example)
    self.assertEqual(flagbind.error_line(caught.exception), line)

  @parameterized.parameters(
      (["--cout=2"], "--cout: unknown flag; did you mean --count?"),
      (["--mode=c"], "--mode=c: value should be one of <a|b>"),
      (["--count=many"], "--count=many: expected an integer"),
      (["--rate=fast"], "--rate=fast: expected a number"))
  def test_parse_errors_name_the_flag(self, argv, line):
    _, flag_values = _binding(flagbind.Section(_Example, "example"))
    with self.assertRaises(flags.Error) as caught:
      flag_values(["prog", *argv])
    self.assertEqual(flagbind.usage_error(caught.exception), line)

  def test_model_errors_name_the_flag(self):
    with self.assertRaises(ConfigError) as caught:
      config_lib.ModelConfig(backbone="transformer")
    self.assertEqual(flagbind.error_line(caught.exception),
                     "--backbone: must be one of mmoe, shared_bottom, dcn; "
                     "got 'transformer'")
    self.assertEqual(caught.exception.choices, config_lib.BACKBONES)


def _tool(body=lambda settings: 0, **options_):
  binding, _ = _binding(flagbind.Section(_Example, "example"))
  return tool.Tool("escm2-x", "escm2-x: does x.", binding,
                   build=lambda flags_: flags_.build(_Example), body=body,
                   **options_)


class ToolTest(parameterized.TestCase):

  def run_main(self, tool_, argv, *flag_args):
    tool_.binding.flag_values(["escm2-x", *flag_args])
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
      status = tool_.main(["escm2-x", *argv])
    return status, stderr.getvalue()

  def test_builds_the_settings_and_runs_the_body(self):
    seen = []
    status, stderr = self.run_main(
        _tool(lambda settings: seen.append(settings) or 3), [], "--path=p",
        "--count=5")
    self.assertEqual((status, stderr), (3, ""))
    self.assertEqual(seen, [_Example(path="p", count=5)])

  def test_config_error_of_the_settings_is_one_line(self):
    body = mock.Mock()
    status, stderr = self.run_main(_tool(body), [])
    self.assertEqual((status, stderr),
                     (2, "escm2-x: error: --path: is required\n"))
    body.assert_not_called()

  def test_config_error_of_the_body_is_one_line(self):
    def body(settings):
      raise ConfigError("count", f"{settings.count} is too many")
    status, stderr = self.run_main(_tool(body), [], "--path=p")
    self.assertEqual((status, stderr),
                     (2, "escm2-x: error: --count: 3 is too many\n"))

  def test_arguments_are_refused_unless_known_only(self):
    status, stderr = self.run_main(_tool(), ["a", "b"], "--path=p")
    self.assertEqual((status, stderr),
                     (2, "escm2-x: error: unexpected arguments 'a b'\n"))
    seen = []
    status, _ = self.run_main(
        _tool(lambda settings, args: seen.append(args), known_only=True,
              check_args=seen.append), ["--runner=x"], "--path=p")
    self.assertEqual((status, seen), (0, [["--runner=x"], ["--runner=x"]]))

  def test_passes_args_gives_the_body_what_follows_the_double_dash(self):
    seen = []
    tool_ = _tool(lambda settings, args: seen.append((settings.count, args)),
                  passes_args=True)
    # The flags after "--" are another tool's, even one of the same name.
    argv = tool_.binding.flag_values(
        ["escm2-x", "--path=p", "--count=5", "--", "--count=9", "--other"])
    status = tool_.main(argv)
    self.assertEqual((status, seen), (0, [(5, ["--count=9", "--other"])]))
    with self.assertRaises(flags.UnrecognizedFlagError):
      tool_.binding.flag_values(["escm2-x", "--path=p", "--other"])

  def test_cli_modules_define_no_flags_at_import(self):
    modules = ["escm2_pipelines.cli"] + [
        f"escm2_tf.cli.{name}" for name in ("bench", "evaluate", "export",
                                             "predict", "study", "synth",
                                             "train")]
    code = ("import importlib, sys\nfrom absl import flags\n"
            "names = set()\nfor name in sys.argv[1:]:\n"
            "  names |= set(importlib.import_module(name).TOOL.binding.names())"
            "\nprint(len(names), sorted(names & set(flags.FLAGS)))")
    result = testing.run_subprocess(testing.python_command(code, *modules))
    self.assertEqual(result.returncode, 0, result.stderr)
    count, defined = result.stdout.split(" ", 1)
    self.assertGreater(int(count), 100)
    self.assertEqual(defined.strip(), "[]")


class HelpTest(absltest.TestCase):

  def test_groups_and_defaults(self):
    binding, _ = _binding(flagbind.Section(_Example, "example"))
    text = binding.help("escm2-x", "escm2-x: does x.")
    self.assertStartsWith(text, "escm2-x: does x.\n")
    self.assertLess(text.index("Example flags:"), text.index("Output flags:"))
    self.assertRegex(text, r"(?m)^  --count=3 +How many, at least 1\.$")
    self.assertRegex(text, r"(?m)^  --mode=a +<a\|b>: The mode\.$")
    self.assertRegex(text, r"(?m)^  --path +Where things go\.$")
    self.assertIn("--helpfull", text)


if __name__ == "__main__":
  absltest.main()
