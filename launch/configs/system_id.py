"""`system_id` imitator: the family itself, with each teacher's optimizer (one particle
per choice: sgd, momentum, adam, rmsprop) and continuous hyperparams inferred from its
behaviour, amortized by an encoder and refined through the differentiable rollout.

    python -m launch.train --config=launch/configs/system_id.py --workdir=runs/sysid
    python -m launch.train --config=launch/configs/system_id.py:smoke --workdir=/tmp/s
    python -m launch.train --config=launch/configs/system_id.py:main --workdir=runs/system_id

`:main` imitates the main job's teachers (`small_mixed`: 4 particles, linear or MLP x SGD
or Adam) with each particle's weights tracked by a Kalman filter, 200 outer steps, half
of each step's teachers run alone after their first 16..64 of 128 steps.
"""

from launch.configs import default


def get_config(arg=None):
  words = default.parse_arg(arg, ("smoke", "main"))
  config = default.get_config()
  config.family.name = "optimizers_linear"
  config.imitator.kind = "system_id"
  config.imitator.system_id.mode = "both"
  config.train.steps = 400
  if "main" in words:
    config.family.name = "small_mixed"
    config.imitator.system_id.tracker = "kalman"
    config.train.steps = 200
    config.train.free_running.start_fraction = 0.0
  if "smoke" in words:
    default.shrink_to_smoke(config)
  return config
