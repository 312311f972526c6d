r"""escm2-synth: writes simulated Ali-CCP logs with their ground truth.

Example:

  escm2-synth --output_dir=/tmp/aliccp --num_train=200000 --num_test=50000 \
      --seed=1 --ctr=0.04 --cvr=0.04

prints a JSON summary (rows, clicks, conversions, true mean rates, files).
An impossible setting exits with status 2 and one line naming its flag.
"""

import json
import sys
from typing import Sequence

from absl import app
from absl import flags

from escm2_tf import simulator

_USAGE_ERROR = 2
_DEFAULT = simulator.SimulatorConfig()

# Flags that other CLIs define too (--output_dir, --seed) allow override, so
# that the CLIs can load into one process (the test suite) and share one flag.
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None,
    "Directory for the generated files (created if needed).",
    allow_override=True)
_NUM_TRAIN = flags.DEFINE_integer("num_train", _DEFAULT.num_train,
                                  "Training impressions.")
_NUM_TEST = flags.DEFINE_integer("num_test", _DEFAULT.num_test,
                                 "Test impressions.")
_SEED = flags.DEFINE_integer("seed", _DEFAULT.seed,
                             "Seed of the world and both splits.",
                             allow_override=True)
_NUM_USERS = flags.DEFINE_integer("num_users", _DEFAULT.num_users, "Users.")
_NUM_ITEMS = flags.DEFINE_integer("num_items", _DEFAULT.num_items, "Items.")
_NUM_CATEGORIES = flags.DEFINE_integer(
    "num_categories", _DEFAULT.num_categories, "Item categories.")
_NUM_SHOPS = flags.DEFINE_integer("num_shops", _DEFAULT.num_shops, "Shops.")
_NUM_BRANDS = flags.DEFINE_integer("num_brands", _DEFAULT.num_brands,
                                   "Brands.")
_NUM_INTENTIONS = flags.DEFINE_integer(
    "num_intentions", _DEFAULT.num_intentions, "Item intentions.")
_NUM_POSITIONS = flags.DEFINE_integer(
    "num_positions", _DEFAULT.num_positions,
    "Values of the position field 301; later ranks share the last one.")
_CTR = flags.DEFINE_float("ctr", _DEFAULT.ctr,
                          "Target mean click probability, in (0, 1).")
_CVR = flags.DEFINE_float(
    "cvr", _DEFAULT.cvr,
    "Target mean conversion probability among clicks, in (0, 1).")
_IMPRESSIONS_PER_REQUEST = flags.DEFINE_integer(
    "impressions_per_request", _DEFAULT.impressions_per_request,
    "Mean impressions per request (per common_features row).")
_BEHAVIOUR_LENGTH = flags.DEFINE_integer(
    "behaviour_length", _DEFAULT.behaviour_length,
    "Approximate mean behaviour entries (*_14 fields) per user.")
_UNCLICKED_CONVERSION_RATE = flags.DEFINE_float(
    "unclicked_conversion_rate", _DEFAULT.unclicked_conversion_rate,
    "Fraction of unclicked impressions logged with conversion=1.")
_CLICK_CONVERSION_CORRELATION = flags.DEFINE_float(
    "click_conversion_correlation", _DEFAULT.click_conversion_correlation,
    "How much the conversion propensity shares with the click propensity, "
    "in [0, 1) (about the correlation of their logits); unset keeps the "
    "default conversion model (correlation about 0.6).")
_FORMAT = flags.DEFINE_enum("format", _DEFAULT.format, simulator.FORMATS,
                            "aliccp: Tianchi skeleton and common features; "
                            "paddlerec: PaddleRec's text format.")

# Every flag except output_dir is the SimulatorConfig field of its name.
_CONFIG_FLAGS = (_NUM_TRAIN, _NUM_TEST, _SEED, _NUM_USERS, _NUM_ITEMS,
                 _NUM_CATEGORIES, _NUM_SHOPS, _NUM_BRANDS, _NUM_INTENTIONS,
                 _NUM_POSITIONS, _CTR, _CVR, _IMPRESSIONS_PER_REQUEST,
                 _BEHAVIOUR_LENGTH, _UNCLICKED_CONVERSION_RATE, _FORMAT,
                 _CLICK_CONVERSION_CORRELATION)


def _fail(flag: str, message: str) -> int:
  holders = {holder.name: holder for holder in (_OUTPUT_DIR,) + _CONFIG_FLAGS}
  print(f"escm2-synth: error: --{flag}={holders[flag].value}: {message}",
        file=sys.stderr)
  return _USAGE_ERROR


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    print(f"escm2-synth: error: unexpected arguments {' '.join(argv[1:])!r}",
          file=sys.stderr)
    return _USAGE_ERROR
  if not _OUTPUT_DIR.value:
    return _fail(_OUTPUT_DIR.name, "is required")
  try:
    config = simulator.SimulatorConfig(
        **{holder.name: holder.value for holder in _CONFIG_FLAGS})
    summary = simulator.simulate(config, _OUTPUT_DIR.value)
  except simulator.ConfigError as error:
    return _fail(error.setting, str(error))
  print(json.dumps(summary, indent=2))
  return 0


def run() -> None:
  app.run(main)


if __name__ == "__main__":
  run()
