"""Teachers beyond gradient descent: the `beyond_gradient` family, a fifth each of the
main job's networks (linear or tanh-MLP, SGD or Adam, L2 pull to an anchor) and of four
learners that no gradient step expresses (learners.rules): a Kalman learner (Bayesian
linear regression with drifting weights), k nearest neighbours over a window of 64
stored examples, passive-aggressive (PA-I) and competitive prototypes; the main job's
task-switching regression stream. The argument picks the imitator:

    python -m launch.train --config=launch/configs/beyond_gradient.py --workdir=runs/beyond_system_id
    python -m launch.train --config=launch/configs/beyond_gradient.py:gradient --workdir=runs/beyond
    python -m launch.train --config=launch/configs/beyond_gradient.py:recurrent \\
        --workdir=runs/beyond_recurrent
    python -m launch.evaluate --workdir=runs/beyond_system_id --shifts=none --noforgetting \\
        --observe=1x

`system_id` (default; the best of the three here, per kind and overall: BUILD_NOTES,
"Teachers beyond gradient descent"): as launch/configs/system_id.py:main trains it,
with one particle per network and optimizer and one per rule (eight for knn, one per
number of neighbours). `gradient`: the main job's imitator and training (free-running
episodes in the last third). `recurrent`: the in_context recurrent imitator as
launch/configs/in_context.py trains it. report.md gets a table per learner kind
(`nie_by_kind`). `:smoke` shrinks any of them to seconds (tests).
"""

from launch.configs import default, in_context, system_id

IMITATORS = ("gradient", "recurrent", "system_id")


def get_config(arg=None):
  words = default.parse_arg(arg, IMITATORS + ("smoke",))
  smoke = ",smoke" if "smoke" in words else ""
  if len(words & set(IMITATORS)) > 1:
    raise ValueError(f"pick one imitator, not {sorted(words & set(IMITATORS))}.")
  if "recurrent" in words:
    config = in_context.get_config("recurrent" + smoke)
  elif "gradient" in words:
    config = default.get_config(smoke.strip(",") or None)
  else:
    config = system_id.get_config("main" + smoke)
  config.family.name = "beyond_gradient"
  return config
