"""The acting family: continual learners whose choices decide what they learn from.

A member chooses an arm of a bandit (`learners.environments`), is paid, and learns from
that reward alone. Hyperparams are a dict of arrays, one per field of `FIELDS`; `rule`
is an integer code into `RULES`, so a mixed population is one `vmap` (every member
carries the superset state; `lax.switch` picks the rule). Policies are computed before
the choice (the behaviour an observer would want, `policy`); the choice is drawn from it
with the trial's uniform (`environments.choose`); an observer sees the choice and the
reward, not the policy.

State (K arms): q [K] = 0.5, h [K] = 0, v [] = 0.5, a [K] = 1, b [K] = 1, n [K] = 0,
prev [K] = 0 (one-hot of the last choice), t [] = 0.

Policy:
- `q_learning` (Rescorla-Wagner): softmax(beta * q + perseveration * prev).
- `actor_critic`: softmax(beta * h + perseveration * prev).
- `thompson` (Bayesian, Beta-Bernoulli): the probability that each arm's draw from
  Beta(a, b) is the largest, P(k) = integral of pdf_k(x) prod_{j != k} cdf_j(x) dx by the
  midpoint rule on `GRID` points x_i of [lo, hi], where lo = max(0, min_k m_k - 8 s_k),
  hi = min(1, max_k m_k + 8 s_k) with m_k, s_k arm k's Beta mean and standard deviation
  (so peaked posteriors stay resolved); cdf_j(x_i) = (sum_{l < i} pdf_j(x_l) +
  pdf_j(x_i) / 2) / sum_l pdf_j(x_l), the same rule; P normalized. Choosing from it is
  Thompson sampling.
- `ucb`: one-hot of the first arm never chosen (n = 0), else of
  argmax q + ucb_c * sqrt(log(t) / n) (ties: the lowest arm).
- `epsilon_greedy`: (1 - epsilon) one-hot(argmax q) + epsilon / K (ties: the lowest arm).

Learning from (choice c, reward r), then prev = one_hot(c), t += 1:
- `q_learning`: d = r - q[c]; q[c] += (alpha_pos if d > 0 else alpha_neg) * d; every
  other arm forgets toward the prior: q[k] += forget * (0.5 - q[k]).
- `actor_critic`: d = r - v; v += alpha_pos * d; h += alpha_neg * d * (one_hot(c) - pi)
  with pi the policy of the trial; then h *= 1 - forget (leaky preferences).
- `thompson`: every arm's counts decay toward the prior, a = 1 + (1 - forget)(a - 1),
  b likewise; then a[c] += r, b[c] += 1 - r.
- `ucb`: n[c] += 1; q[c] += (r - q[c]) / n[c] (sample average).
- `epsilon_greedy`: q[c] += alpha_pos * (r - q[c]).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from learners import dispatch, environments
from learners.family import Prior

RULES = ("q_learning", "actor_critic", "thompson", "ucb", "epsilon_greedy")
FIELDS = {
    "rule": "how the member chooses and learns, a code into RULES",
    "alpha_pos": "step after a positive prediction error (critic step, actor_critic)",
    "alpha_neg": "step after a negative prediction error (actor step, actor_critic)",
    "beta": "softmax inverse temperature",
    "forget": "forgetting toward the prior per trial",
    "perseveration": "bonus to repeating the last choice (in logits)",
    "epsilon": "exploration probability (epsilon_greedy)",
    "ucb_c": "exploration bonus scale (ucb)",
}
PRIORS = {
    "alpha_pos": Prior("log_uniform", 0.05, 0.8),
    "alpha_neg": Prior("log_uniform", 0.05, 0.8),
    "beta": Prior("log_uniform", 1.0, 20.0),
    "forget": Prior("uniform", 0.0, 0.1),
    "perseveration": Prior("uniform", -1.0, 1.0),
    "epsilon": Prior("uniform", 0.01, 0.3),
    "ucb_c": Prior("log_uniform", 0.1, 2.0),
}
GRID = 128  # midpoints of the integral of Thompson's policy (error < 6e-4, tests)
PRIOR_VALUE = 0.5


class State(NamedTuple):
  q: jax.Array
  h: jax.Array
  v: jax.Array
  a: jax.Array
  b: jax.Array
  n: jax.Array
  prev: jax.Array
  t: jax.Array


class Trajectory(NamedTuple):
  """choice [T] int32, reward [T], policy [T, K] (before each choice)."""

  choice: jax.Array
  reward: jax.Array
  policy: jax.Array


@dataclasses.dataclass(frozen=True)
class ActingFamily:
  """The rules a population may use, and the number of arms."""

  name: str = "acting"
  arms: int = 2
  rules: tuple = RULES

  def __post_init__(self):
    if isinstance(self.arms, bool) or not isinstance(self.arms, int) or self.arms < 2:
      raise ValueError(f"acting family {self.name!r}: arms={self.arms!r} must be an "
                       "integer >= 2.")
    if not self.rules or any(r not in RULES for r in self.rules):
      raise ValueError(f"acting family {self.name!r}: rules {list(self.rules)}; allowed: "
                       f"a non-empty subset of {list(RULES)}.")

  def sample(self, key, n: int) -> dict:
    """n members' hyperparams {field: [n]}."""
    keys = dict(zip(FIELDS, jax.random.split(key, len(FIELDS))))
    codes = jnp.asarray([RULES.index(r) for r in self.rules], jnp.int32)
    hp = {"rule": codes[jax.random.randint(keys["rule"], (n,), 0, len(self.rules))]}
    hp.update({f: PRIORS[f].sample(keys[f], n) for f in PRIORS})
    return hp

  # The protocol a closed-loop rollout uses (`learners.acting_networks` has the same):
  # context x [D] is ignored by these rules.
  def init_state(self, hp, key=None) -> State:
    del hp, key
    return init(self.arms)

  def policy_at(self, hp, state: State, x=None):
    del x
    return policy(self, hp, state)

  def learn_at(self, hp, state: State, pi, choice, reward, x=None) -> State:
    del x
    return learn(self, hp, state, pi, choice, reward)

  def kinds(self, hp) -> list[str]:
    """Each member's rule name [P]."""
    return [RULES[int(c)] for c in hp["rule"]]

  def describe(self, hp) -> str:
    hp = {k: float(v) for k, v in hp.items()}
    rule = RULES[int(hp["rule"])]
    args = {"q_learning": ("alpha_pos", "alpha_neg", "beta", "forget", "perseveration"),
            "actor_critic": ("alpha_pos", "alpha_neg", "beta", "forget", "perseveration"),
            "thompson": ("forget",), "ucb": ("ucb_c",),
            "epsilon_greedy": ("alpha_pos", "epsilon")}[rule]
    return f"{rule}(" + ", ".join(f"{a}={hp[a]:.3g}" for a in args) + ")"


def init(arms: int) -> State:
  z = jnp.zeros((arms,))
  return State(q=z + PRIOR_VALUE, h=z, v=jnp.asarray(PRIOR_VALUE), a=z + 1.0, b=z + 1.0,
               n=z, prev=z, t=jnp.zeros((), jnp.int32))


def _thompson_policy(a, b):
  # Quadrature on the posteriors' own span with cumulative sums for the cdfs: no
  # incomplete beta function, whose series made long rollouts ~1000 x slower.
  m = a / (a + b)
  s = jnp.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
  lo = jnp.maximum(0.0, jnp.min(m - 8 * s))
  hi = jnp.minimum(1.0, jnp.max(m + 8 * s))
  x = lo + (hi - lo) * (jnp.arange(GRID) + 0.5) / GRID
  x = jnp.clip(x, 1e-7, 1 - 1e-7)
  log_pdf = (a[:, None] - 1) * jnp.log(x) + (b[:, None] - 1) * jnp.log1p(-x)
  # Unnormalized [K, GRID]: each arm's scale cancels in its cdf and its own normalization.
  pdf = jnp.exp(log_pdf - jnp.max(log_pdf, axis=1, keepdims=True))
  cdf = (jnp.cumsum(pdf, axis=1) - pdf / 2) / jnp.sum(pdf, axis=1, keepdims=True)
  pdf = pdf / jnp.sum(pdf, axis=1, keepdims=True)
  log_cdf = jnp.log(jnp.maximum(cdf, 1e-30))
  others = jnp.exp(jnp.sum(log_cdf, 0) - log_cdf)  # prod over j != k
  p = jnp.sum(pdf * others, axis=1)
  return p / jnp.sum(p)


def _greedy(values):
  return jax.nn.one_hot(jnp.argmax(values), values.shape[0])


def policy(family: ActingFamily, hp, state: State):
  """The member's choice probabilities [K] before its next choice."""
  k = state.q.shape[0]
  branches = {
      "q_learning": lambda s: jax.nn.softmax(hp["beta"] * s.q + hp["perseveration"] * s.prev),
      "actor_critic": lambda s: jax.nn.softmax(hp["beta"] * s.h
                                               + hp["perseveration"] * s.prev),
      "thompson": lambda s: _thompson_policy(s.a, s.b),
      "ucb": lambda s: jnp.where(
          jnp.any(s.n == 0), jax.nn.one_hot(jnp.argmax(s.n == 0), k),
          _greedy(s.q + hp["ucb_c"] * jnp.sqrt(jnp.log(jnp.maximum(s.t, 1).astype(
              jnp.float32)) / jnp.maximum(s.n, 1.0)))),
      "epsilon_greedy": lambda s: (1 - hp["epsilon"]) * _greedy(s.q) + hp["epsilon"] / k,
  }
  return dispatch.switch(hp["rule"], RULES, family.rules, branches, state)


def learn(family: ActingFamily, hp, state: State, pi, choice, reward) -> State:
  """The state after choosing `choice` (with policy pi [K]) and being paid `reward`."""
  k = state.q.shape[0]
  one = jax.nn.one_hot(choice, k)

  def q_learning(s):
    d = reward - s.q[choice]
    alpha = jnp.where(d > 0, hp["alpha_pos"], hp["alpha_neg"])
    q = jnp.where(one > 0, s.q + alpha * d, s.q + hp["forget"] * (PRIOR_VALUE - s.q))
    return s._replace(q=q)

  def actor_critic(s):
    d = reward - s.v
    h = (s.h + hp["alpha_neg"] * d * (one - pi)) * (1 - hp["forget"])
    return s._replace(v=s.v + hp["alpha_pos"] * d, h=h)

  def thompson(s):
    a = 1 + (1 - hp["forget"]) * (s.a - 1) + one * reward
    b = 1 + (1 - hp["forget"]) * (s.b - 1) + one * (1 - reward)
    return s._replace(a=a, b=b)

  def ucb(s):
    n = s.n + one
    return s._replace(n=n, q=s.q + one * (reward - s.q) / jnp.maximum(n, 1.0))

  def epsilon_greedy(s):
    return s._replace(q=s.q + one * hp["alpha_pos"] * (reward - s.q))

  branches = {"q_learning": q_learning, "actor_critic": actor_critic, "thompson": thompson,
              "ucb": ucb, "epsilon_greedy": epsilon_greedy}
  state = dispatch.switch(hp["rule"], RULES, family.rules, branches, state)
  return state._replace(prev=one, t=state.t + 1)


def rollout(family, hp, tables: environments.Tables) -> Trajectory:
  """One member acting in its copy of the environment (tables [T, ...]): one scan.
  `family`: an ActingFamily or any family with its protocol (init_state, policy_at,
  learn_at)."""
  def trial(state, row):
    pi = family.policy_at(hp, state, row.x)
    c = environments.choose(pi, row.v)
    r = environments.reward(row, c)
    return family.learn_at(hp, state, pi, c, r, row.x), (c, r, pi)

  _, (c, r, pi) = jax.lax.scan(trial, family.init_state(hp), tables)
  return Trajectory(c, r, pi)


def population_rollout(family, hp, tables: environments.Tables):
  """vmap of `rollout`: hp {field: [P]}, tables with a leading axis P."""
  return jax.vmap(lambda h, tb: rollout(family, h, tb))(hp, tables)
