"""`gradient` imitator of SGD-trained MLP teachers (width 16, tanh, random init) on the
task-switching linear-regression stream: the imitator's fast network is the teachers'
architecture and its update rule is meta-learned.

    python -m launch.train --config=launch/configs/gradient.py --workdir=runs/gradient
    python -m launch.train --config=launch/configs/gradient.py:smoke --workdir=/tmp/g
"""

from launch.configs import default


def get_config(arg=None):
  words = default.parse_arg(arg, ("smoke",))
  config = default.get_config()
  config.family.name = "sgd_mlp"
  config.family.width = 16
  config.imitator.kind = "gradient"
  if "smoke" in words:
    default.shrink_to_smoke(config)
  return config
