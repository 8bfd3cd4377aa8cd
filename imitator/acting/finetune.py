"""Fine-tuning the acting imitator after imitation: the extra term of
`train.finetune` for acting runs and its overseer.

A fine-tuning run starts from a trained acting run's meta-params
(`train.finetune.source`) and trains on the imitation objective of `acting.train`
(`loss_fn`) plus `weight` x the sum over trials of an extra term of the imitator's
alone track (on seen trials that track reads the teacher's history, as in evaluation):

- `outcome`: minus the reward. Per trial, minus the policy's expected reward
  pi_t . p_t (p_t: the arms' reward probabilities, known for synthetic bandits), plus
  the score-function term of the future: -log pi_t(c_t) x (G_{t+1} - b_{t+1}) on unseen
  trials, G_{t+1} the discounted reward the imitator's own later choices earned
  (discount DISCOUNT), b the mean of G over the step's other teachers. Gradients flow through
  the imitator's state (it learns from its own choices), so this is a policy gradient
  through the closed loop.
- `process`: KL(overseer || imitator) per trial, the overseer's trusted learner (a member
  of the acting family, `overseer_member`) run on the imitator's own history: the policy
  the overseer would trust in the imitator's place, before that trial's reward. The
  overseer judges each choice by the learner it trusts, never by the reward it brings.
"""

from __future__ import annotations

import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from imitator import metrics
from imitator.acting import closed_loop
from learners import acting

# The supervised imitators' extras (imitator.training.finetune, a layer this one may not
# import), with the meanings of the module docstring.
EXTRAS = ("none", "outcome", "process")
# The trusted learner: the best mean reward among this many members drawn from the
# family's prior, on this many bandits of the alone horizon (the evaluation key's
# branch 3: neither training's nor the held-out teachers' bandits).
OVERSEER_CANDIDATES = 64
OVERSEER_BANDITS = 16
# Rewards further out weigh less in the score-function term: a horizon of ~10 trials,
# for variance; the expected immediate reward is exact.
DISCOUNT = 0.9
# launch.finetune's default step size on acting runs: the GRU's training rate / 3.
LEARNING_RATE = 1e-3


def overseer_member(fam, bandit, key) -> dict:
  """{field: scalar} hyperparams of the member of `fam` with the highest mean reward on
  OVERSEER_BANDITS bandits (`bandit`: an environments.Bandit) among OVERSEER_CANDIDATES
  drawn from the prior."""
  n, m = OVERSEER_CANDIDATES, OVERSEER_BANDITS
  k_hp, k_env = jax.random.split(key)
  hp = fam.sample(k_hp, n)

  @jax.jit
  def rewards(hp):
    rep = jax.tree.map(lambda v: jnp.repeat(v, m, axis=0), hp)
    tables = jax.vmap(bandit.tables)(jnp.tile(jax.random.split(k_env, m), (n,)))
    return acting.population_rollout(fam, rep, tables).reward.reshape(n, m, -1).mean((1, 2))

  reward = np.asarray(rewards(hp), np.float64)
  best = int(np.argmax(np.where(np.isfinite(reward), reward, -np.inf)))
  member = {f: v[best] for f, v in hp.items()}
  logging.info("the overseer trusts member %d of %s (reward rate %.3f; the candidates' "
               "median %.3f)", best, fam.name, reward[best], np.nanmedian(reward))
  return member


def discounted_future(reward, unseen, discount: float = DISCOUNT):
  """G_{t+1} [P, T]: sum over unseen s > t of discount^(s-t-1) reward_s (reward, unseen
  [P, T])."""
  def back(g, x):
    r, u = x
    return jnp.where(u, r, 0.0) + discount * g, g
  _, g = jax.lax.scan(back, jnp.zeros(reward.shape[:1]), (reward.T, unseen.T), reverse=True)
  return g.T


def extra_terms(kind: str, fam, hp, agent, meta, tables, cut, overseer=None,
                with_alone: bool = True, discount: float = DISCOUNT):
  """(imitation, extra, seen) per trial [P, T] for the `kind` of extra term (module
  docstring; zeros for 'none'): imitation is NLL on seen trials and KL(shadow || agent)
  on unseen ones, the meta-objective of `acting.train`."""
  follow = None
  if kind == "process":
    def step(o, row, out):
      pi_o = fam.policy_at(overseer, o, row.x)
      o = fam.learn_at(overseer, o, pi_o, out["choice_alone"], out["reward_alone"], row.x)
      return o, metrics.policy_kl(pi_o, out["log_policy_alone"])
    follow = (lambda: fam.init_state(overseer), step)
  out = closed_loop.trial_outputs(fam, hp, agent, meta, tables, cut, with_alone, follow)
  seen = out["seen"]
  imitation = jnp.where(seen, out["nll"], out["kl_alone"])
  if kind == "none":
    return imitation, jnp.zeros_like(imitation), seen
  if kind == "process":
    return imitation, out["follow"], seen
  lp = out["log_policy_alone"]
  expected = jnp.sum(jnp.exp(lp) * tables.p, -1)
  future = jax.lax.stop_gradient(discounted_future(out["reward_alone"], ~seen, discount))
  n = future.shape[0]  # the baseline leaves the teacher out: it must not see its choices
  advantage = future - (jnp.sum(future, 0, keepdims=True) - future) / max(n - 1, 1)
  chosen = jnp.take_along_axis(lp, out["choice_alone"][..., None], -1)[..., 0]
  return imitation, -(expected + jnp.where(seen, 0.0, chosen * advantage)), seen


def run_config(config, workdir: str, extra: str, weight: float, steps: int,
               learning_rate: float):
  """The config of a fine-tuning run of the acting run in `workdir` (its `config`,
  `acting.train.load_config`): train.finetune set, `steps` outer steps at
  `learning_rate`, evaluation at horizons 1 and 16 x T_train only."""
  if weight < 0 or steps < 1 or learning_rate <= 0:
    raise ValueError(f"--lambda={weight}, --steps={steps}, --learning_rate={learning_rate}:"
                     " allowed are lambda >= 0, steps >= 1, learning_rate > 0.")
  if extra not in EXTRAS:
    raise ValueError(f"--extra={extra!r}: allowed are {', '.join(EXTRAS)}.")
  config = config.copy_and_resolve_references()
  tcfg = config.train
  tcfg.finetune.source = os.path.abspath(workdir)
  tcfg.finetune.extra, tcfg.finetune.weight = extra, float(weight)
  tcfg.steps, tcfg.learning_rate = steps, learning_rate
  tcfg.log_every = tcfg.checkpoint_every = min(50, steps)
  config.eval.horizons = sorted({1, min(16, max(config.eval.horizons))})
  return config
