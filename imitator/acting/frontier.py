"""The fidelity/capability frontier on acting teachers: per-teacher figures of imitators
fine-tuned for outcome or process and of voting ensembles, in the form
`imitator.evaluation.frontier.frontier` pairs.

On the held-out teachers of `acting.train.evaluate`, over the last T_train trials of
`multiple` x T_train, teacher-forced and alone after T_train: fidelity is KL(teacher ||
agent) (forced) or KL(shadow teacher || agent) (alone), the figures' "err" with chance
1, so that their "NIE" is the mean KL; capability is the expected regret per trial
(the best arm's reward probability minus the policy's expected reward), the "loss",
beside the teacher's own regret in its own run.
"""

from __future__ import annotations

import jax
import numpy as np

from imitator.acting import closed_loop
from imitator.acting import train as acting_train

LABELS = {"fidelity": "KL", "capability": "regret / teacher's"}


def per_teacher(config, candidates: dict, multiple: int) -> dict:
  """{"chance": 1 [P], "teacher_loss": teacher regret [P], name: {mode: {"err", "loss":
  [P]}}} for `candidates` {name: (agent, params)} (shared params, not per teacher)."""
  fam, t = acting_train.family(config), config.acting.t_train
  p = config.eval.teachers
  k_hp, k_env, _ = jax.random.split(acting_train.keys(config)["eval"], 3)
  hp = fam.sample(k_hp, p)
  tables = jax.vmap(acting_train.bandit(config, multiple).tables)(jax.random.split(k_env, p))
  names = list(candidates)
  agents = tuple(candidates[n][0] for n in names)
  params = tuple(candidates[n][1] for n in names)
  sums = jax.jit(lambda hp, tables, params: closed_loop.windowed(
      fam, hp, agents, params, tables, t, t))(hp, tables, params)
  last = lambda v: np.asarray(v[multiple - 1], np.float64)
  out = {"chance": np.ones(p), "teacher_loss": last(sums["regret"])}
  for i, n in enumerate(names):
    out[n] = {"forced": {"err": last(sums["kl_forced"][i]),
                         "loss": last(sums["regret_forced"][i])},
              "alone": {"err": last(sums["kl_alone"][i]),
                        "loss": last(sums["regret_alone"][i])}}
  return out
