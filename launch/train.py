"""Meta-trains an imitator: `python -m launch.train [--config=FILE[:arg]] [--workdir=DIR]`.

With no flags it runs `launch/configs/default.py` into a fresh directory under runs/.
A run restarted on the same workdir resumes; SIGTERM/SIGINT checkpoint and exit 0.
"""

import datetime
import os
import shlex
import sys

from absl import flags, logging

from imitator import parallel, train
from launch import cli

_CONFIG = cli.define_config(
    os.path.join(os.path.dirname(__file__), "configs", "default.py"), lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Run directory (default: a fresh one under runs/).")


def main(argv):
  del argv
  config = cli.config_value(_CONFIG)
  workdir = _WORKDIR.value or os.path.join(
      "runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
  parallel.initialize_distributed(config.train.distributed)
  logging.info("workdir: %s", os.path.abspath(workdir))
  print(f"workdir: {os.path.abspath(workdir)}", flush=True)
  command = " ".join(["python -m launch.train"] + [shlex.quote(a) for a in sys.argv[1:]])
  result = train.train_and_evaluate(config, workdir, command=command)
  if result["status"] == "diverged":
    print(f"error: {result['message']}", flush=True)
    sys.exit(1)
  if result["status"] == "preempted":
    print(f"stopped at step {result['step']}; checkpoint in {workdir}; run the same "
          "command again to resume", flush=True)
    return
  for r in result["report"]["results"]:
    lo, hi = r["nie_ci"]
    print(f"{r['imitator']:>28s}  NIE {r['nie']:.4f}  [{lo:.4f}, {hi:.4f}]  "
          f"({r['n_teachers']} held-out teachers, horizon {r['horizon']})", flush=True)
  print(f"report: {os.path.join(os.path.abspath(workdir), 'eval', 'report.json')}",
        flush=True)


if __name__ == "__main__":
  cli.run(main)
