"""`system_id` imitator: the family itself, with each teacher's optimizer (one particle
per choice: sgd, momentum, adam, rmsprop) and continuous hyperparams inferred from its
behaviour, amortized by an encoder and refined through the differentiable rollout.

    python -m launch.train --config=launch/configs/system_id.py --workdir=runs/sysid
    python -m launch.train --config=launch/configs/system_id.py:smoke --workdir=/tmp/s
"""

from launch.configs import default


def get_config(arg=None):
  words = default.parse_arg(arg, ("smoke",))
  config = default.get_config()
  config.family.name = "optimizers_linear"
  config.imitator.kind = "system_id"
  config.imitator.system_id.mode = "both"
  config.train.steps = 400
  if "smoke" in words:
    default.shrink_to_smoke(config)
  return config
