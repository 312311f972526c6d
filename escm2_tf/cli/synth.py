r"""escm2-synth: writes simulated Ali-CCP logs with their ground truth.

Example:

  escm2-synth --output_dir=/tmp/aliccp --num_train=200000 --num_test=50000 \
      --seed=1 --ctr=0.04 --cvr=0.04

prints a summary (rows, clicks, conversions, true mean rates, files; as JSON
with --json). An impossible setting exits with status 2 and one line naming
its flag.
"""

import dataclasses
import json
import os
import sys
from typing import Any

from escm2_tf import flagbind
from escm2_tf import layout
from escm2_tf import simulator
from escm2_tf import tool
from escm2_tf.options import ConfigError
from escm2_tf.options import option

_PROGRAM = "escm2-synth"


@dataclasses.dataclass(frozen=True)
class _Output:
  """Where the simulated logs go.

  Attributes:
    output_dir: Directory for the generated files (created if needed).
    json: Print the summary as JSON (rows, clicks, conversions, true mean
      rates, files) instead of as text.
  """
  output_dir: str = option(None, group="output")
  json: bool = option(False, group="output")

  def __post_init__(self):
    if not self.output_dir:
      raise ConfigError("output_dir", "is required")


def _text_summary(summary: dict[str, Any], output_dir: str) -> str:
  lines = [f"{_PROGRAM}: wrote {len(summary['files'])} files to {output_dir}"]
  for split in layout.SPLITS:
    part = summary[split]
    lines.append(
        f"  {split}: {part['rows']:,} impressions, {part['clicks']:,} clicks, "
        f"{part['conversions']:,} conversions; true CTR "
        f"{part['true_ctr']:.4f}, true CVR {part['true_cvr_all']:.4f} "
        f"(clicked: {part['true_cvr_clicked']:.4f})")
  lines.append("  files: " + ", ".join(
      os.path.basename(path) for path in summary["files"]))
  return "\n".join(lines)


def _synth(settings: tuple[_Output, simulator.SimulatorConfig]) -> int:
  output, config = settings
  summary = simulator.simulate(
      config, output.output_dir,
      progress=lambda line: print(f"{_PROGRAM}: {line}", file=sys.stderr,
                                  flush=True))
  print(json.dumps(summary, indent=2) if output.json
        else _text_summary(summary, output.output_dir))
  return 0


TOOL = tool.Tool(
    _PROGRAM, __doc__,
    flagbind.Binding(flagbind.Section(_Output, "output"),
                     flagbind.Section(simulator.SimulatorConfig, "world")),
    build=lambda binding: (binding.build(_Output),
                           binding.build(simulator.SimulatorConfig)),
    body=_synth)


def run() -> None:
  TOOL.run()


if __name__ == "__main__":
  run()
