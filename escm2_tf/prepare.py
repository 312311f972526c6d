"""Simulated data, converted: ``escm2-synth`` then ``escm2-convert`` in one call.

    summary = prepare.prepare_dataset(data_dir, simulator.SimulatorConfig())
    layout.examples(data_dir, layout.TRAIN)  # the training TFRecords

The study, the bench, the benchmarks and the tests make their data here, laid
out as ``escm2_tf.layout`` describes. This is not part of ``layout`` because it
runs the converter: the converter's package (``escm2_pipelines``) loads Beam,
which ``layout`` must not, and imports ``escm2_tf`` itself. So ``convert_raw``
imports it when called: a top-level import would be a cycle, and would make
every user of ``escm2_tf`` wait the seconds Beam takes to load.
"""

import os
from typing import Any, Callable, Mapping

from escm2_tf import layout
from escm2_tf import simulator


def simulate_raw(config: simulator.SimulatorConfig, data_dir: str,
                 progress: Callable[[str], None] | None = None
                 ) -> dict[str, Any]:
  """Simulates the raw logs and ground truth into ``data_dir``'s ``raw/``.

  Returns:
    The simulator's summary (``simulator.simulate``).
  """
  return simulator.simulate(config, layout.raw_dir(data_dir), progress)


def convert_raw(data_dir: str, raw_format: str = "aliccp",
                num_shards: Mapping[str, int] | None = None,
                **converter_options: Any) -> dict[str, dict[str, Any]]:
  """Converts every split of ``data_dir``'s ``raw/`` into ``data_dir/{split}``.

  Args:
    data_dir: Holds ``raw/`` as ``simulate_raw`` writes it.
    raw_format: The format of the raw logs, one of ``layout.RAW_FORMATS``.
    num_shards: TFRecord shards per split; the converter's default for a
      split left out.
    **converter_options: Further ``escm2_pipelines.convert.convert``
      settings, e.g. ``max_values_per_field``.

  Returns:
    The converter's ``stats.json`` of each split, keyed by split.
  """
  # pylint: disable-next=import-outside-toplevel
  from escm2_pipelines import convert
  raw = layout.raw_dir(data_dir)
  stats = {}
  for split in layout.SPLITS:
    names = layout.raw_file_names(raw_format, split)
    if raw_format == "paddlerec":
      inputs = {"input": os.path.join(raw, names["paddlerec"])}
    else:
      inputs = {"skeleton": os.path.join(raw, names["skeleton"]),
                "common_features": os.path.join(raw, names["common"])}
    if num_shards and split in num_shards:
      inputs["num_shards"] = num_shards[split]
    stats[split] = convert.convert(
        layout.split_dir(data_dir, split), input_format=raw_format,
        **inputs, **converter_options)
  return stats


def remove_raw_logs(data_dir: str, raw_format: str = "aliccp") -> None:
  """Deletes the raw logs of ``data_dir``, keeping the ground truth."""
  for split in layout.SPLITS:
    for role, name in layout.raw_file_names(raw_format, split).items():
      if role != "ground_truth":
        os.remove(os.path.join(layout.raw_dir(data_dir), name))


def prepare_dataset(data_dir: str, config: simulator.SimulatorConfig,
                    num_shards: Mapping[str, int] | None = None,
                    keep_raw_logs: bool = True,
                    **converter_options: Any) -> dict[str, Any]:
  """Simulates ``config`` and converts it, all under ``data_dir``.

  Args:
    data_dir: Where the data goes; its ``raw/`` and split directories must
      not exist or be empty.
    config: What to simulate (its ``format`` is the raw format converted).
    num_shards: TFRecord shards per split (see ``convert_raw``).
    keep_raw_logs: Without, the raw logs are deleted once converted; the
      ground truth stays.
    **converter_options: Further converter settings (see ``convert_raw``).

  Returns:
    The simulator's summary without its ``files``, each split's entry
    with the converter's ``rows_written``.
  """
  summary = simulate_raw(config, data_dir)
  summary.pop("files")
  stats = convert_raw(data_dir, config.format, num_shards,
                      **converter_options)
  for split in layout.SPLITS:
    summary[split]["rows_written"] = stats[split]["rows_written"]
  if not keep_raw_logs:
    remove_raw_logs(data_dir, config.format)
  return summary
