"""Meta-trains an imitator: `python -m launch.train [--config=FILE[:arg]] [--workdir=DIR]`.

With no flags it runs `launch/configs/default.py` into a fresh directory under runs/.
A run restarted on the same workdir resumes. SIGTERM/SIGINT exit 143/130 with one line
on stderr saying what is saved and how to continue: in the training loop after a
checkpoint of the step it was in; before the loop (restoring, compiling) or during the
final evaluation at once (nothing is lost that was saved before). On a finished workdir
it says so, reprints the summary and writes nothing. A restart may
change only the fields of imitator.runtime.workdir.RESUMABLE (steps, logging, evaluation and
checkpoint cadence, the eval block) unless --allow_config_change; a second process on a
workdir in use exits 2 naming the holder's pid.
"""

from imitator.runtime import signals

if __name__ == "__main__":
  signals.install()  # before the heavy imports: from here on no signal is lost

import datetime  # pylint: disable=wrong-import-position
import os
import shlex
import sys

from absl import flags, logging

from imitator.runtime import parallel
from imitator.training import config_schema
from launch import cli

_CONFIG = cli.define_config(
    os.path.join(os.path.dirname(__file__), "configs", "default.py"), lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Run directory (default: a fresh one under runs/).")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_boolean(
    "allow_config_change", False, "Resume a run with a config that differs from its "
    "config.json in more than steps, logging, evaluation and checkpoint cadence (the old "
    "config is kept as config.before-step<N>.json).")


def main(argv):
  del argv
  config = cli.config_value(_CONFIG)
  if "acting" in config:
    workdir = _workdir()
    print(f"workdir: {os.path.abspath(workdir)}", flush=True)
    return cli.acting_train_and_report(config, workdir, " ".join(
        ["python -m launch.train"] + [shlex.quote(a) for a in sys.argv[1:]]))
  config_schema.validate(config)  # before the fields it reads are trusted below
  config_schema.check_applicable(config, cli.file_config())
  workdir = _workdir()
  parallel.initialize_distributed(config.train.distributed)
  logging.info("workdir: %s", os.path.abspath(workdir))
  print(f"workdir: {os.path.abspath(workdir)}", flush=True)
  command = " ".join(["python -m launch.train"] + [shlex.quote(a) for a in sys.argv[1:]])
  cli.train_and_report(config, workdir, command, _ALLOW_CONFIG_CHANGE.value)


def _workdir() -> str:
  return _WORKDIR.value or os.path.join(
      "runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))


if __name__ == "__main__":
  cli.run(main)
