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

from imitator.runtime import checkpoint, parallel
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
    return _acting(config)
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


def _acting(config) -> None:
  """An acting config (`launch/configs/bandits.py`): its own loop and closed-loop report."""
  from imitator.acting import report as acting_report  # pylint: disable=import-outside-toplevel
  from imitator.acting import train as acting_train  # pylint: disable=import-outside-toplevel
  workdir = _workdir()
  print(f"workdir: {os.path.abspath(workdir)}", flush=True)
  command = " ".join(["python -m launch.train"] + [shlex.quote(a) for a in sys.argv[1:]])
  try:
    with signals.interruptible():
      result = acting_train.train_and_evaluate(config, workdir, command=command)
  except BaseException as e:  # pylint: disable=broad-except
    e = signals.as_interrupted(e)
    steps = checkpoint.saved_steps(os.path.abspath(workdir))
    saved = f"checkpoint at step {steps[-1]}" if steps else "nothing checkpointed yet"
    cli.exit_interrupted(f"interrupted ({e.name}): {saved} in {os.path.abspath(workdir)}; "
                         "run the same command again to go on", e.exit_code)
  if result["status"] == "preempted":
    cli.exit_interrupted(f"interrupted: {result['message']}", 143)
  if result["status"] == "complete":
    print(f"the run is complete (train.steps={config.train.steps}); nothing to do. Its "
          "summary:", flush=True)
  for line in acting_report.summary_lines(result):
    print(line, flush=True)
  print(f"report: {os.path.join(os.path.abspath(workdir), 'eval', 'report.json')}",
        flush=True)


if __name__ == "__main__":
  cli.run(main)
