"""The whole teacher family: linear and MLP networks (relu, tanh, gelu), four optimizers
(sgd, momentum, adam, rmsprop), every continual regularizer (L2 to anchor, online EWC,
reservoir replay, shrink-and-perturb, each on or off per teacher), one or two inner steps,
random initial weights as the family draws them; a task-switching regression stream, 4
examples a step. The `gradient` imitator (Kalman tracking, settling step-size
inference) is the best measured here (README); `system_id` runs one particle per
discrete member (32 here) and infers the continuous hyperparams and the weights.

    python -m launch.train --config=launch/configs/mixed.py --workdir=runs/mixed
    python -m launch.train --config=launch/configs/mixed.py --workdir=runs/mixed_sid \\
        --config.imitator.kind=system_id
    python -m launch.train --config=launch/configs/mixed.py:smoke --workdir=/tmp/mixed
    python -m launch.train --config=launch/configs/mixed.py:large --workdir=runs/mixed_large
    python -m launch.train --config=launch/configs/mixed.py:recurrent --workdir=runs/mixed_recurrent
    python -m launch.train --config=launch/configs/mixed.py:transformer \\
        --workdir=runs/mixed_transformer

`:large` is sized for one GPU or a TPU slice (more teachers per step, the horizon of the
main job, more outer steps); `:smoke` runs in seconds for tests; `:recurrent`,
`:transformer` (or any architecture of `in_context.py`) make the imitator the
in-context kind, trained as `in_context.py` trains it.
"""

from imitator.kinds.in_context import ARCHS
from launch.configs import default, in_context


def get_config(arg=None):
  words = default.parse_arg(arg, ("smoke", "large") + ARCHS)
  config = default.get_config()
  config.stream.batch = 4
  config.stream.horizon = 64
  config.family.name = "mixed"
  config.imitator.kind = "gradient"
  # Twice the teachers' width: the imitator's one MLP (one activation) stands in for
  # teachers with relu, tanh or gelu; at 64 it beats its width-32 self at 1 x and 16 x
  # (BUILD_NOTES, "Where the remaining error sits").
  config.imitator.gradient.width = 64
  config.imitator.system_id.mode = "refine"
  # The full meta-gradient through every particle's rollout takes ~10 min to compile
  # here; the evidence-only one (particle trajectories held fixed) a fraction of that.
  config.imitator.system_id.meta_grad = "evidence"
  config.train.steps = 200
  config.train.teachers = 8
  config.train.log_every = 20
  config.train.eval_every = 50
  config.train.checkpoint_every = 50
  config.train.warmup_steps = 10
  config.train.learning_rate = 1e-2
  config.eval.val_teachers = 32
  arch = in_context.arch_of(words)
  if arch:
    in_context.use_in_context(config, arch)
  if "large" in words:
    config.stream.horizon = 128
    config.train.steps = 2000
    config.train.teachers = 64
    config.eval.val_teachers = 128
    config.imitator.system_id.meta_grad = "full"
  if "smoke" in words:
    default.shrink_to_smoke(config)
  return config
