"""An acting teacher and agents side by side on one bandit: teacher-forced and alone.

The family is an `acting.ActingFamily` or any family with its protocol (`init_state`,
`policy_at`, `learn_at`; `learners.acting_networks`). Per teacher and trial t (tables:
`learners.environments`, common random numbers; x_t the context, if any):
- the teacher acts in its own copy: pi_t, choice c_t = choose(pi_t, v_t), reward r_t,
  then learns;
- each agent's *forced* track reads the teacher's history: its policy before c_t is
  scored by NLL(c_t) and KL(pi_t || agent), then it observes (c_t, r_t);
- each agent's *alone* track, on unseen trials, acts in its own copy of the environment
  (the same tables) and learns from its own rewards; beside it runs the *shadow
  teacher*: the hidden teacher fed the agent's choices and rewards, i.e. the policy the
  teacher would have on the agent's own history. Fidelity alone is KL(shadow || agent).
  On seen trials the alone track is the forced one and the shadow is the teacher.
`seen` is per teacher: trials t < cut[p]. The rollout is one `lax.scan` over windows of
trials with an inner scan, keeping per-window sums per teacher (constant memory in the
horizon); `trial_outputs` gives the per-trial values for the meta-objective instead.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from imitator import metrics
from learners import environments


class Track(NamedTuple):
  """One agent's states: forced, alone, the shadow teacher, and the alone track's last
  choice and reward (for behaviour counts; -1 before the first)."""

  forced: object
  alone: object
  shadow: object
  prev_choice: jax.Array
  prev_reward: jax.Array


class Carry(NamedTuple):
  teacher: object
  prev_choice: jax.Array
  prev_reward: jax.Array
  tracks: tuple
  t: jax.Array


def _where(cond, a, b):
  return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def init(family, hp, agents, params) -> Carry:
  """One teacher's carry (hp: its hyperparams); agents and their params for it."""
  teacher = family.init_state(hp)
  tracks = tuple(Track(a.init(p), a.init(p), teacher, jnp.asarray(-1, jnp.int32),
                       jnp.asarray(0.0)) for a, p in zip(agents, params))
  return Carry(teacher, jnp.asarray(-1, jnp.int32), jnp.asarray(0.0), tracks,
               jnp.zeros((), jnp.int32))


def trial(family, hp, agents, params, carry: Carry, row: environments.Tables, cut,
          with_alone: bool = True):
  """One trial of one teacher: (carry, outputs) with outputs a dict of per-agent lists
  `nll`, `kl_forced`, `kl_alone`, `counts_alone` [7], `regret_forced`, `regret_alone`,
  `log_policy_alone` [K], `choice_alone`, `reward_alone` and teacher `nll_true`,
  `counts` [7], `regret`, `seen`. kl_alone is 0 on seen trials, where counts_alone,
  choice_alone and reward_alone are the teacher's. Regret is expected: the best arm's
  reward probability minus the policy's expected reward. `with_alone=False` (static)
  promises every trial is seen: the alone tracks are not computed."""
  seen = carry.t < cut
  pi = family.policy_at(hp, carry.teacher, row.x)
  c = environments.choose(pi, row.v)
  r = environments.reward(row, c)
  teacher = family.learn_at(hp, carry.teacher, pi, c, r, row.x)
  regret = lambda policy: jnp.max(row.p) - policy @ row.p
  out = {"nll_true": metrics.choice_nll(jnp.log(jnp.maximum(pi, 1e-12)), c),
         "counts": metrics.behaviour_counts(carry.prev_choice, carry.prev_reward, c, r),
         "regret": regret(pi), "seen": seen, **{k: [] for k in PER_AGENT}}
  tracks = []
  for agent, p, tr in zip(agents, params, carry.tracks):
    lp = agent.log_policy(p, tr.forced, row.x)
    out["nll"].append(metrics.choice_nll(lp, c))
    out["kl_forced"].append(metrics.policy_kl(pi, lp))
    out["regret_forced"].append(regret(jnp.exp(lp)))
    forced = agent.observe(p, tr.forced, row.x, c, r, jnp.exp(lp))
    if not with_alone:
      for k, v in (("kl_alone", jnp.zeros_like(out["nll"][-1])),
                   ("counts_alone", out["counts"]), ("regret_alone", out["regret_forced"][-1]),
                   ("log_policy_alone", lp), ("choice_alone", c), ("reward_alone", r)):
        out[k].append(v)
      tracks.append(Track(forced, forced, teacher, c, r))
      continue

    lp_a = agent.log_policy(p, tr.alone, row.x)
    pi_a = jnp.exp(lp_a)
    c_a = environments.choose(pi_a, row.v)
    r_a = environments.reward(row, c_a)
    pi_s = family.policy_at(hp, tr.shadow, row.x)
    out["kl_alone"].append(jnp.where(seen, 0.0, metrics.policy_kl(pi_s, lp_a)))
    c_a, r_a = jnp.where(seen, c, c_a), jnp.where(seen, r, r_a)  # seen: the teacher's
    out["counts_alone"].append(
        metrics.behaviour_counts(tr.prev_choice, tr.prev_reward, c_a, r_a))
    out["regret_alone"].append(regret(pi_a))
    out["log_policy_alone"].append(lp_a)
    out["choice_alone"].append(c_a)
    out["reward_alone"].append(r_a)
    alone = agent.observe(p, tr.alone, row.x, c_a, r_a, pi_a)
    shadow = family.learn_at(hp, tr.shadow, pi_s, c_a, r_a, row.x)
    # Seen: the alone track is the forced one and the shadow is the teacher.
    tracks.append(Track(forced=forced, alone=_where(seen, forced, alone),
                        shadow=_where(seen, teacher, shadow),
                        prev_choice=c_a, prev_reward=r_a))
  return Carry(teacher, c, r, tuple(tracks), carry.t + 1), out


def trial_outputs(family, hp, agent, meta, tables: environments.Tables, cut,
                  with_alone: bool = True, follow=None):
  """Per-trial outputs of `trial` for one shared-params agent on P teachers: hp {field:
  [P]}, tables [P, T, ...], cut [P] -> {key: [P, T, ...]} (the agent's lists unwrapped);
  `with_alone=False` when every cut is T. `follow` (optional): (init, step) of a
  second observer of the alone track, `step(state, row, out) -> (state, y)` after each
  trial, its y returned as "follow"."""
  def one(h, tb, c):
    def body(carry, row):
      carry, f = carry
      carry, out = trial(family, h, (agent,), (meta,), carry, row, c, with_alone)
      out = {k: v[0] if isinstance(v, list) else v for k, v in out.items()}
      if follow is not None:
        f, out["follow"] = follow[1](f, row, out)
      return (carry, f), out
    f0 = follow[0]() if follow is not None else ()
    return jax.lax.scan(body, (init(family, h, (agent,), (meta,)), f0), tb)[1]
  return jax.vmap(one)(hp, tables, cut)


PER_AGENT = ("nll", "kl_forced", "kl_alone", "counts_alone", "regret_forced",
             "regret_alone", "log_policy_alone", "choice_alone", "reward_alone")
WINDOW_KEYS = ("nll_true", "counts", "regret", "nll", "kl_forced", "kl_alone",
               "counts_alone", "regret_forced", "regret_alone")


def windowed(family, hp, agents, params, tables: environments.Tables, cut: int,
             window: int) -> dict:
  """Per-window means over each teacher's trials: hp {field: [P]}, tables [P, T, ...] with T a
  multiple of window, params per agent (a leading P axis if `agent.per_teacher`).
  Returns {"nll_true", "regret": [W, P], "counts": [W, P, 7] (sums), and per agent
  lists of "nll", "kl_forced", "kl_alone", "regret_forced", "regret_alone" [W, P],
  "counts_alone" [W, P, 7] (sums)}."""
  p_axis = tuple(0 if a.per_teacher else None for a in agents)
  n = tables.v.shape[1]
  w = n // window
  # [W, window, P, ...]: the outer scan walks windows, the inner one their trials.
  rows = jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1).reshape(
      (w, window) + a.shape[:1] + a.shape[2:]), tables)

  def per_teacher_trial(carry, row, h, prm):
    return trial(family, h, agents, prm, carry, row, cut)

  step = jax.vmap(per_teacher_trial, in_axes=(0, 0, 0, p_axis))

  def reduce(k, v):
    return v.sum(0) if k.startswith("counts") else v.mean(0)

  def window_sums(carry, window_rows):
    carry, outs = jax.lax.scan(lambda c, row: step(c, row, hp, params), carry, window_rows)
    return carry, {k: [reduce(k, v) for v in outs[k]] if isinstance(outs[k], list)
                   else reduce(k, outs[k]) for k in WINDOW_KEYS}

  carry0 = jax.vmap(lambda h, prm: init(family, h, agents, prm), in_axes=(0, p_axis))(
      hp, params)
  _, sums = jax.lax.scan(window_sums, carry0, rows)
  return sums
