"""The field's reference imitator of bandit choices: a per-subject maximum-likelihood fit
of the value learner, exactly `learners.acting`'s `q_learning` rule (Rescorla-Wagner with
asymmetric steps, forgetting toward the prior, perseveration, softmax choice).

The model is the family's own (`acting.policy` and `acting.learn` of a one-rule
`ActingFamily`), run over a recorded history: it learns from every recorded trial and
is scored (log-likelihood of the recorded choice under the policy before it) on the
trials marked `score`. Padding (choice -1) is no trial: no learning, never scored.

The fit maximizes the likelihood by Adam on unconstrained parameters, each mapped into a
box by a sigmoid (in log space for the fields whose prior is log-uniform):
- alpha_pos, alpha_neg, forget: their `acting.PRIORS` ranges, the support of the family
  this imitates; they also keep the fit off the degenerate edges (alpha -> 0 trades
  against beta, forget -> 1 erases the values).
- beta: from its prior's low to `BETA_MAX`, well past the prior's high because short or
  near-deterministic histories push the MLE up; finite because a subject who always
  takes the better arm has its MLE at infinity.
- perseveration: [-PERSEVERATION_MAX, PERSEVERATION_MAX], wider than the prior so that a
  sticky person is not clipped, finite because a subject who never switches has its MLE
  at infinity.
Each subject keeps the best of `restarts` starts drawn from the prior (the best iterate
of each run, so the answer is never worse than a point it visited).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import optax

from learners import acting

FIELDS = ("alpha_pos", "alpha_neg", "beta", "forget", "perseveration")
RULE = acting.RULES.index("q_learning")
BETA_MAX = 50.0
PERSEVERATION_MAX = 5.0
# Starts drawn at a box's edge would sit where the sigmoid is flat: pulled this far in.
EDGE = 0.02


def _box(field):
  """(low, high, log) of a field's fitted range."""
  prior = acting.PRIORS[field]
  log = prior.kind == "log_uniform"
  low, high = {"beta": (prior.low, BETA_MAX),
               "perseveration": (-PERSEVERATION_MAX, PERSEVERATION_MAX)}.get(
                   field, (prior.low, prior.high))
  return (math.log(low), math.log(high), log) if log else (low, high, log)


BOXES = tuple(_box(f) for f in FIELDS)


def constrain(u) -> dict:
  """Unconstrained u [..., len(FIELDS)] -> hp {field: [...]} inside the boxes."""
  hp = {}
  for i, (f, (low, high, log)) in enumerate(zip(FIELDS, BOXES)):
    x = low + jax.nn.sigmoid(u[..., i]) * (high - low)
    hp[f] = jnp.exp(x) if log else x
  return hp


def unconstrain(hp) -> jax.Array:
  """hp {field: [...]} inside the boxes -> u [..., len(FIELDS)] (edges pulled in by EDGE)."""
  cols = []
  for f, (low, high, log) in zip(FIELDS, BOXES):
    x = jnp.log(hp[f]) if log else hp[f]
    frac = jnp.clip((x - low) / (high - low), EDGE, 1 - EDGE)
    cols.append(jnp.log(frac) - jnp.log1p(-frac))
  return jnp.stack(cols, -1)


def log_policies(hp, choice, reward, arms) -> jax.Array:
  """log pi_t(k) [T, K] of the model with hyperparams hp {field: []} on one recorded
  history (choice [T] int, reward [T]): the model learns from every recorded trial
  (padding: choice -1 -> no update, and its row is irrelevant)."""
  family = acting.ActingFamily(arms=arms, rules=("q_learning",))
  hp = {**{f: hp[f] for f in FIELDS}, "rule": jnp.asarray(RULE, jnp.int32)}

  def trial(state, row):
    c, r = row
    valid = c >= 0
    pi = acting.policy(family, hp, state)
    # A padded reward may be anything (NaN): zeroed, or its gradient would poison hp's.
    new = acting.learn(family, hp, state, pi, jnp.maximum(c, 0), jnp.where(valid, r, 0.0))
    state = jax.tree.map(lambda n, o: jnp.where(valid, n, o), new, state)
    return state, jnp.log(jnp.maximum(pi, 1e-30))

  _, logpi = jax.lax.scan(trial, acting.init(arms),
                          (jnp.asarray(choice, jnp.int32), jnp.asarray(reward, jnp.float32)))
  return logpi


def nll(hp, choice, reward, score, arms) -> jax.Array:
  """Mean negative log-likelihood per scored trial []: the model runs over the whole
  history (choice, reward, score [T]); only trials with score True (and a choice) count;
  0 when none does."""
  choice = jnp.asarray(choice, jnp.int32)
  logpi = log_policies(hp, choice, reward, arms)
  chosen = jnp.take_along_axis(logpi, jnp.maximum(choice, 0)[:, None], 1)[:, 0]
  w = (jnp.asarray(score, bool) & (choice >= 0)).astype(logpi.dtype)
  return -jnp.sum(w * chosen) / jnp.maximum(jnp.sum(w), 1.0)


def _descend(u0, loss, steps, learning_rate):
  """Adam from u0 [F]: the best iterate and its loss ([F], [])."""
  opt = optax.adam(learning_rate)
  value_and_grad = jax.value_and_grad(loss)

  def step(carry, _):
    u, opt_state, best_u, best = carry
    value, g = value_and_grad(u)
    # NaN never compares better, so a run that blows up keeps its last good point.
    better = value < best
    best_u, best = jnp.where(better, u, best_u), jnp.where(better, value, best)
    updates, opt_state = opt.update(g, opt_state, u)
    return (optax.apply_updates(u, updates), opt_state, best_u, best), None

  (u, _, best_u, best), _ = jax.lax.scan(
      step, (u0, opt.init(u0), u0, jnp.asarray(jnp.inf)), None, length=steps)
  value = loss(u)
  better = value < best
  return jnp.where(better, u, best_u), jnp.where(better, value, best)


@functools.partial(jax.jit, static_argnames=("arms", "steps", "restarts"))
def fit(key, choice, reward, score, arms, *, steps=300, restarts=8,
        learning_rate=0.05) -> dict:
  """Per-subject MLE on the scored trials: choice/reward/score [S, T] -> hp {field: [S]}
  (plus "rule" [S] = the q_learning code), best of `restarts` random starts drawn from
  `acting.PRIORS`, by Adam on the unconstrained parameters (boxes: module docstring);
  vmapped over subjects and restarts, one jit per shape."""
  family = acting.ActingFamily(arms=arms, rules=("q_learning",))

  def subject(key, c, r, s):
    u0 = unconstrain(family.sample(key, restarts))  # [R, F]
    u, value = jax.vmap(lambda u: _descend(
        u, lambda u: nll(constrain(u), c, r, s, arms), steps, learning_rate))(u0)
    return u[jnp.argmin(value)]

  keys = jax.random.split(key, choice.shape[0])
  hp = constrain(jax.vmap(subject)(keys, choice, reward, score))
  return {**hp, "rule": jnp.full(choice.shape[:1], RULE, jnp.int32)}
