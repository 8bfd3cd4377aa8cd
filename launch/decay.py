"""The decay experiment: how fast B decays once only A is practised, across width,
regularizer and overlap, and whether an imitator forgets the way its teacher does.

    python -m launch.decay --config=launch/configs/decay.py --workdir=W
    python -m launch.decay --config=launch/configs/decay.py:imitator --workdir=W \\
        --imitator_workdir=W0

Writes W/decay/cells/<cell-id>.json as each cell finishes (whole or not at all), then
W/decay/report.json, report.md and the PNGs (imitator.decay.sweep, imitator.decay.report).
A killed sweep run again skips the cells already written with the same settings. Bad
grid values exit 2 with a message naming the value and what is allowed, before anything
runs.
"""

import os

from absl import flags

from imitator.decay import sweep as decay_sweep
from launch import cli
from launch.configs import default

_CONFIG = cli.define_config(
    os.path.join(os.path.dirname(__file__), "configs", "decay.py"), lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (writes WORKDIR/decay).",
                               required=True)
_IMITATOR_WORKDIR = flags.DEFINE_string(
    "imitator_workdir", None, "A trained imitator's workdir (python -m launch.train): its "
    "best checkpoint watches every covered teacher.")


def main(argv):
  del argv
  config = cli.config_value(_CONFIG)
  decay_sweep.run(config, _WORKDIR.value, _IMITATOR_WORKDIR.value,
                  imitator_defaults=default.get_config())
  print(f"report: {os.path.join(os.path.abspath(_WORKDIR.value), 'decay', 'report.md')}",
        flush=True)


if __name__ == "__main__":
  cli.run(main)
