"""The network, loss and schedule of an ``escm2-train`` flagfile.

The benchmark trains with the hyperparameters of a training flagfile (by
default the shipped ``paddlerec`` config, ``configs/paddlerec.flags``), read with ``escm2-train``'s own flags
(``flagbind.TRAIN_SECTIONS``), so the file means what it means to the trainer.
Data and output flags of the flagfile are ignored: the benchmark brings its
own data. Nothing here imports TensorFlow.
"""

import dataclasses
from typing import Sequence

from absl import flags

from escm2_tf import config as config_lib
from escm2_tf import configs
from escm2_tf import flagbind

# The trainer's flags the benchmark takes besides the model and the loss.
_SCHEDULE = ("batch_size", "learning_rate", "seed")


@dataclasses.dataclass(frozen=True)
class HParams:
  """What a flagfile fixes: the network, the loss and the schedule.

  Attributes:
    model: The network.
    loss: The loss.
    batch_size: Examples per step.
    learning_rate: The optimizer's learning rate.
    seed: Seeds weights, dropout and shuffles.
    ignored: Flags of the file the benchmark does not use.
  """
  model: config_lib.ModelConfig
  loss: config_lib.LossConfig
  batch_size: int
  learning_rate: float
  seed: int
  ignored: tuple[str, ...] = ()


def _line_of(path: str, text: str) -> int:
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if line.strip() == text:
        return number
  return 0


def _train_binding() -> flagbind.Binding:
  """``escm2-train``'s flags, apart from the process's own."""
  return flagbind.Binding(*flagbind.TRAIN_SECTIONS,
                          flag_values=flags.FlagValues()).define()


def experiment_config(args: Sequence[str]) -> config_lib.ExperimentConfig:
  """The config of an ``escm2-train`` command line (``--flagfile=``, ...).

  Raises:
    ValueError: A flag that does not parse or a value the config refuses.
  """
  binding = _train_binding()
  try:
    binding.flag_values(["escm2-train", *args])
    return binding.build(config_lib.ExperimentConfig)
  except flags.Error as e:
    raise ValueError(flagbind.usage_error(e)) from None
  except config_lib.ConfigError as e:
    raise ValueError(flagbind.error_line(e)) from None


def flagfile_path(name_or_path: str) -> str:
  """The file of a shipped config's name (``paddlerec``), else the path."""
  if name_or_path in configs.names():
    return configs.path(name_or_path)
  return name_or_path


def hparams_from_flagfile(path: str) -> HParams:
  """The network, loss and schedule of an ``escm2-train`` flagfile.

  Args:
    path: The flagfile, or the name of a shipped one (``flagfile_path``).

  Raises:
    FileNotFoundError: The flagfile does not exist.
    ValueError: A value that does not parse or that the configs refuse; the
      message names the file and the flag.
  """
  path = flagfile_path(path)
  with open(path, encoding="utf-8"):
    pass
  binding = _train_binding()
  try:
    unknown = binding.flag_values(["hparams", f"--flagfile={path}"],
                                  known_only=True)[1:]
    train = {**binding.values(config_lib.TrainerConfig),
             **binding.values(config_lib.RuntimeConfig)}
    model = binding.build(config_lib.ModelConfig)
    loss = binding.build(config_lib.LossConfig)
  except flags.Error as e:
    raise ValueError(f"{path}: {flagbind.usage_error(e)}") from None
  except config_lib.ConfigError as e:
    raise ValueError(f"{path}: {flagbind.error_line(e)}") from None
  for arg in unknown:
    if not arg.startswith("-"):
      raise ValueError(f"{path}:{_line_of(path, arg)}: expected --name=value, "
                       f"got {arg[:60]!r}")
  used = {field.name for config in (config_lib.ModelConfig,
                                    config_lib.LossConfig)
          for field in dataclasses.fields(config)} | set(_SCHEDULE)
  ignored = {arg.lstrip("-").split("=")[0] for arg in unknown}
  ignored |= set(binding.present()) - used
  return HParams(model, loss, **{name: train[name] for name in _SCHEDULE},
                 ignored=tuple(sorted(ignored)))
