"""Writes a synthetic recorded-choices file (the tabular layout `launch.choices` reads):
members of the acting family, drawn from their priors and hidden, acting on their own
drifting bandits (`learners.environments`), one row per trial:

    python -m launch.simulate_choices --out=/tmp/choices.tsv --subjects=64 --trials=300 \\
        --rules=q_learning --seed=1 --one_based

The members' hyperparams go to OUT.members.json beside it, so a fit can be checked.
"""

import json

import jax
import numpy as np
from absl import flags

from launch import cli
from learners import acting, environments, recorded_choices

_OUT = flags.DEFINE_string("out", None, "File to write (.tsv/.txt: tabs; else commas).",
                           required=True)
_SUBJECTS = flags.DEFINE_integer("subjects", 64, "Number of simulated subjects.")
_TRIALS = flags.DEFINE_integer("trials", 300, "Trials per subject.")
_RULES = flags.DEFINE_list("rules", ["q_learning"], f"Rules drawn; allowed: {acting.RULES}.")
_ARMS = flags.DEFINE_integer("arms", 2, "Arms of the bandit.")
_KIND = flags.DEFINE_enum("kind", "drifting", ["drifting", "reversal"], "Bandit kind.")
_SEED = flags.DEFINE_integer("seed", 1, "Seed of the members and their bandits.")
_ONE_BASED = flags.DEFINE_boolean("one_based", True, "Write choices counting from 1.")


def main(argv):
  del argv
  for name, value in (("subjects", _SUBJECTS.value), ("trials", _TRIALS.value)):
    if value < 1:
      raise ValueError(f"--{name}={value}: must be >= 1.")
  family = acting.ActingFamily(arms=_ARMS.value, rules=tuple(_RULES.value))
  bandit = environments.Bandit(kind=_KIND.value, arms=_ARMS.value, horizon=_TRIALS.value)
  key = jax.random.key(_SEED.value)
  hp = family.sample(jax.random.fold_in(key, 0), _SUBJECTS.value)
  tables = jax.vmap(bandit.tables)(jax.random.split(jax.random.fold_in(key, 1),
                                                    _SUBJECTS.value))
  traj = jax.jit(lambda h, t: acting.population_rollout(family, h, t))(hp, tables)
  n = _SUBJECTS.value
  choices = recorded_choices.Choices(
      np.asarray([f"sim{i:03d}" for i in range(n)]), np.array(traj.choice, np.int32),
      np.array(traj.reward, np.float32), np.ones((n, _TRIALS.value), bool))
  recorded_choices.write(_OUT.value, choices, one_based=_ONE_BASED.value)
  members = [family.describe({k: v[i] for k, v in hp.items()}) for i in range(n)]
  with open(_OUT.value + ".members.json", "w") as f:
    json.dump(dict(zip(choices.subject.tolist(), members)), f, indent=1)
  print(f"wrote {n} subjects x {_TRIALS.value} trials to {_OUT.value} (members in "
        f"{_OUT.value}.members.json)")


if __name__ == "__main__":
  cli.run(main)
