"""Real data: teachers are online softmax classifiers (linear, SGD from near-zero weights)
on the 8x8 handwritten digits of scikit-learn, permuted-pixel tasks switching every 32
steps, 4 examples a step. The `digits` TFDS builder prepares the data offline into
`--config.stream.data_dir` (default ~/tensorflow_datasets) on first use.

    python -m launch.train --config=launch/configs/digits.py --workdir=runs/digits
    python -m launch.train --config=launch/configs/digits.py:smoke --workdir=/tmp/d
"""

from launch.configs import default


def get_config(arg=None):
  words = default.parse_arg(arg, ("smoke",))
  config = default.get_config()
  config.stream.kind = "dataset"
  config.stream.dataset = "digits"
  config.stream.protocol = "permuted"
  config.stream.batch = 4
  config.stream.task_switch_every = 32
  config.family.name = "sgd_linear"
  config.imitator.kind = "gradient"
  if "smoke" in words:
    default.shrink_to_smoke(config)
  return config
