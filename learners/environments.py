"""Environments of acting teachers: k-armed bandits whose answer depends on the choice.

An environment is drawn whole from its key as tables over time, so that a teacher and
an imitator acting in their own copies share every random number (common random
numbers) and a rollout is one `lax.scan` over the tables:

- p [T, K]: each arm's reward probability at each trial;
- u [T, K]: uniforms deciding rewards: choosing arm k at trial t pays
  r = 1 if u[t, k] < p[t, k] else 0 (whichever learner chooses it);
- v [T]: the uniform that turns a policy into a choice (`choose`);
- x [T, D]: the context shown before each choice (D = 0 without one).

Kinds (`KINDS`):
- `drifting`: p[0] ~ U(0.2, 0.8) per arm, then a Gaussian random walk clipped to [0, 1]:
  p[t + 1] = clip(p[t] + drift * N(0, 1), 0, 1).
- `reversal` (probabilistic reversal learning): one arm pays with `high`, the others with
  `low`; the better arm (uniform at the start) moves to another uniformly drawn arm every
  `reversal_every` trials.
- `contextual`: a context x_t ~ N(0, I_D) (the synthetic streams' inputs) before each
  choice; arm k pays with p[t, k] = sigmoid(gain * w[task_t, k] . x_t / sqrt(D)), where
  the hidden per-arm tasks w [tasks, K, D] ~ N(0, 1) switch as the supervised streams'
  tasks do: task_t = (t // switch_every) mod tasks.
Keys: p from fold_in(key, 0) (the reversal's arms and the contextual tasks too), u from
fold_in(key, 1), v from fold_in(key, 2), x from fold_in(key, 3).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

KINDS = ("drifting", "reversal", "contextual")


class Tables(NamedTuple):
  """p [T, K], u [T, K], v [T], x [T, D] (a leading teacher axis when batched)."""

  p: jax.Array
  u: jax.Array
  v: jax.Array
  x: jax.Array


@dataclasses.dataclass(frozen=True)
class Bandit:
  """A k-armed bandit environment (static: sizes and kind)."""

  kind: str = "drifting"
  arms: int = 2
  horizon: int = 200
  drift: float = 0.05
  reversal_every: int = 50
  high: float = 0.8
  low: float = 0.2
  features: int = 8
  tasks: int = 2
  switch_every: int = 100
  gain: float = 3.0

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"bandit kind {self.kind!r}; allowed: {list(KINDS)}.")
    for name, low in (("arms", 2), ("horizon", 1), ("reversal_every", 1), ("features", 1),
                      ("tasks", 1), ("switch_every", 1)):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"bandit {name}={value!r} must be an integer >= {low}.")
    if not 0.0 <= self.low <= self.high <= 1.0:
      raise ValueError(f"bandit low={self.low!r}, high={self.high!r}: need "
                       "0 <= low <= high <= 1.")
    if not self.drift >= 0.0:
      raise ValueError(f"bandit drift={self.drift!r} must be >= 0.")
    if not self.gain >= 0.0:
      raise ValueError(f"bandit gain={self.gain!r} must be >= 0.")

  @property
  def context_dim(self) -> int:
    """D: the width of x (0 without a context)."""
    return self.features if self.kind == "contextual" else 0

  def tables(self, key) -> Tables:
    """The environment drawn from key: Tables of one teacher's copy."""
    t, k = self.horizon, self.arms
    k_p = jax.random.fold_in(key, 0)
    x = jax.random.normal(jax.random.fold_in(key, 3), (t, self.context_dim))
    if self.kind == "contextual":
      w = jax.random.normal(k_p, (self.tasks, k, self.context_dim))
      task = (jnp.arange(t) // self.switch_every) % self.tasks
      p = jax.nn.sigmoid(self.gain * jnp.einsum("tkd,td->tk", w[task], x)
                         / jnp.sqrt(self.context_dim))
    elif self.kind == "drifting":
      k0, k_walk = jax.random.split(k_p)
      p0 = jax.random.uniform(k0, (k,), minval=0.2, maxval=0.8)

      def walk(p, noise):
        return jnp.clip(p + self.drift * noise, 0.0, 1.0), p

      _, p = jax.lax.scan(walk, p0, jax.random.normal(k_walk, (t, k)))
    else:
      k0, k_moves = jax.random.split(k_p)
      first = jax.random.randint(k0, (), 0, k)
      # Each reversal moves the better arm by 1..K-1 places: always to another arm.
      shifts = jax.random.randint(k_moves, (t // self.reversal_every + 1,), 1, k)
      best = (first + jnp.cumsum(shifts) - shifts[0]) % k
      best_t = best[jnp.arange(t) // self.reversal_every]
      p = jnp.where(jax.nn.one_hot(best_t, k) > 0, self.high, self.low)
    u = jax.random.uniform(jax.random.fold_in(key, 1), (t, k))
    v = jax.random.uniform(jax.random.fold_in(key, 2), (t,))
    return Tables(p.astype(jnp.float32), u, v, x)


def reward(tables_t: Tables, arm):
  """The reward of choosing `arm` at one trial (tables_t: one row of each table)."""
  return (tables_t.u[arm] < tables_t.p[arm]).astype(jnp.float32)


def choose(policy, v):
  """The choice of a policy [K] given the trial's uniform v: the first arm whose
  cumulative probability exceeds v (inverse CDF; the last arm if rounding leaves none)."""
  below = jnp.cumsum(policy) <= v
  return jnp.minimum(jnp.sum(below), policy.shape[-1] - 1).astype(jnp.int32)
