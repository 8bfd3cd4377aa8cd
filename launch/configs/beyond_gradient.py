"""Teachers beyond gradient descent: the `beyond_gradient` family, a fifth each of the
main job's networks (linear or tanh-MLP, SGD or Adam, L2 pull to an anchor) and of four
learners that no gradient step expresses (learners.rules): a Kalman learner (Bayesian
linear regression with drifting weights), k nearest neighbours over a window of 64
stored examples, passive-aggressive (PA-I) and competitive prototypes; the main job's
task-switching regression stream. The argument picks the imitator:

    python -m launch.train --config=launch/configs/beyond_gradient.py --workdir=runs/beyond
    python -m launch.train --config=launch/configs/beyond_gradient.py:recurrent \\
        --workdir=runs/beyond_recurrent
    python -m launch.evaluate --workdir=runs/beyond --shifts=none --noforgetting --observe=1x

`gradient` (default): the main job's imitator and training (free-running episodes in
the last third). `recurrent`: the in_context recurrent imitator as
launch/configs/in_context.py trains it. report.md gets a table per learner kind
(`nie_by_kind`). `system_id` does not run here: its particles learn by gradient steps.
`:smoke` shrinks either to seconds (tests).
"""

from launch.configs import default, in_context

IMITATORS = ("gradient", "recurrent")


def get_config(arg=None):
  words = default.parse_arg(arg, IMITATORS + ("smoke",))
  smoke = ",smoke" if "smoke" in words else ""
  if "recurrent" in words:
    config = in_context.get_config("recurrent" + smoke)
  else:
    config = default.get_config(smoke.strip(",") or None)
  config.family.name = "beyond_gradient"
  return config
