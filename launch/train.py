"""Meta-trains an imitator: `python -m launch.train [--config=FILE[:arg]] [--workdir=DIR]`.

With no flags it runs `launch/configs/default.py` into a fresh directory under runs/.
A run restarted on the same workdir resumes; SIGTERM/SIGINT checkpoint and exit 0. On a
finished workdir it says so, reprints the summary and writes nothing. A restart may
change only the fields of imitator.workdir.RESUMABLE (steps, logging, evaluation and
checkpoint cadence, the eval block) unless --allow_config_change; a second process on a
workdir in use exits 2 naming the holder's pid.
"""

import datetime
import os
import shlex
import sys

from absl import flags, logging

from imitator import config_schema, parallel, train, workdir as workdir_lib
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
  config_schema.validate(config)  # before the fields it reads are trusted below
  config_schema.check_applicable(config, cli.file_config())
  workdir = _WORKDIR.value or os.path.join(
      "runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
  parallel.initialize_distributed(config.train.distributed)
  logging.info("workdir: %s", os.path.abspath(workdir))
  print(f"workdir: {os.path.abspath(workdir)}", flush=True)
  command = " ".join(["python -m launch.train"] + [shlex.quote(a) for a in sys.argv[1:]])
  result = train.train_and_evaluate(config, workdir, command=command,
                                    allow_config_change=_ALLOW_CONFIG_CHANGE.value)
  if result["status"] == "diverged":
    print(f"error: {result['message']}", flush=True)
    sys.exit(1)
  if result["status"] == "preempted":
    print(f"stopped at step {result['step']}; checkpoint in {workdir}; run the same "
          "command again to resume", flush=True)
    return
  if result["status"] == "complete":
    print(f"the run is complete (step {result['step']}, train.steps="
          f"{config.train.steps}); nothing to do. Its summary:", flush=True)
  rows = workdir_lib.training_rows(result["report"], result["t_train"])
  for line in workdir_lib.summary_lines(rows):
    print(line, flush=True)
  print(f"report: {os.path.join(os.path.abspath(workdir), 'eval', 'report.json')}",
        flush=True)


if __name__ == "__main__":
  cli.run(main)
