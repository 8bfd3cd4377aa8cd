"""Fine-tunes a trained imitator: `python -m launch.finetune --workdir=W --extra=E --lambda=L`.

    python -m launch.finetune --workdir=runs/default --extra=outcome --lambda=0.3
    python -m launch.finetune --workdir=runs/default --extra=process --lambda=1 --out=runs/ft

A short second phase from W's best meta-params, on the objective of
`imitator.training.finetune`: imitation + lambda * D(b, a_hat), b the labels (`outcome`)
or the overseer's trusted learner (`process`); `--extra=none` continues plain imitation
(the lambda = 0 control). Only the imitator is trained; its baselines are W's. From the
first step half of each step's teachers are seen for a drawn number of steps and the
imitator scored alone after it, as in the last third of W's training. It writes a new
workdir (default W/finetune/<extra>_<lambda>) that `launch.evaluate` reads as any run's;
its config is W's with train.finetune set, train.steps=--steps, train.learning_rate=
--learning_rate, validation only at the end (so that the best checkpoint is the last).
Restarting the same command resumes; signals and errors as in `launch.train`.

On an acting run (`launch/configs/bandits.py`) the extra term is minus the reward
(`outcome`, a policy gradient through the closed loop) or KL from the overseer's trusted
learner run on the imitator's own choices (`process`): `imitator.acting.finetune`.
"""

from imitator.runtime import signals

if __name__ == "__main__":
  signals.install()  # before the heavy imports: from here on no signal is lost

import os  # pylint: disable=wrong-import-position
import shlex
import sys

from absl import flags

from imitator.acting import finetune as acting_finetune
from imitator.acting import train as acting_train
from imitator.runtime import workdir as workdir_lib
from imitator.training import finetune
from launch import cli
from launch.configs import default

_WORKDIR = flags.DEFINE_string("workdir", None, "The trained run to start from.",
                               required=True)
_EXTRA = flags.DEFINE_enum("extra", "outcome", finetune.EXTRAS,
                           "The extra term: outcome (labels), process (the overseer's "
                           "trusted learner) or none (plain imitation).")
_LAMBDA = flags.DEFINE_float("lambda", 1.0, "Weight of the extra term (>= 0).")
_STEPS = flags.DEFINE_integer("steps", 100, "Outer steps of fine-tuning.")
_LEARNING_RATE = flags.DEFINE_float(
    "learning_rate", None, "Peak meta step size (default 1e-2; 1e-3 on acting runs).")
_OUT = flags.DEFINE_string("out", None,
                           "Workdir to write (default: WORKDIR/finetune/EXTRA_LAMBDA).")


def main(argv):
  del argv
  command = " ".join(["python -m launch.finetune"] + [shlex.quote(a) for a in sys.argv[1:]])
  workdir = _OUT.value or finetune.out_dir(_WORKDIR.value, _EXTRA.value, _LAMBDA.value)
  if "acting" in (workdir_lib.read_saved_config(_WORKDIR.value) or {}):
    config = acting_finetune.run_config(acting_train.load_config(_WORKDIR.value),
                                        _WORKDIR.value, _EXTRA.value, _LAMBDA.value,
                                        _STEPS.value, _LEARNING_RATE.value
                                        or acting_finetune.LEARNING_RATE)
    print(f"workdir: {os.path.abspath(workdir)}", flush=True)
    return cli.acting_train_and_report(config, workdir, command)
  config = finetune.run_config(_WORKDIR.value, default.get_config(), _EXTRA.value,
                               _LAMBDA.value, _STEPS.value,
                               _LEARNING_RATE.value or finetune.LEARNING_RATE)
  print(f"workdir: {os.path.abspath(workdir)}", flush=True)
  cli.train_and_report(config, workdir, command)


if __name__ == "__main__":
  cli.run(main)
