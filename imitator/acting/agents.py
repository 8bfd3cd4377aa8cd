"""Agents that choose in a teacher's place: the recurrent imitator and the fitted model.

An agent has `init(params)` -> state, `log_policy(params, state, x)` -> log pi [K] of
the next choice given its context x [D] (D = 0 without one), and `observe(params,
state, x, choice, reward, pi)` -> state after a trial (pi: the agent's own policy). `per_teacher` says whether params carry a
leading teacher axis (a fit per teacher) or are shared (meta-params).

- `RecurrentImitator` (in_context, recurrent): a GRU over what an observer sees of each
  trial, [x_t, one_hot(c_t), r_t, one_hot(c_t) r_t] [D + 2K + 1]; h [H] starts at zero;
  a linear readout of h gives weights W [K, D + 1], and the logits of the choice at
  context x_t are W [x_t, 1] (with no context, the readout of h). It learns in-context:
  its fast state is h, its meta-params the cell and the readout.
- `ValueModel`: the family's `q_learning` rule with per-teacher hyperparams (the
  per-subject maximum-likelihood reference of `mle`).
- `Voting`: K agents of one kind that choose by the mean of their policies (params: a
  tuple of the members'), each member learning from the same trials.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from learners import acting

_LOG_FLOOR = 1e-12


class _Net(nnx.Module):

  def __init__(self, arms: int, hidden: int, features: int, rngs: nnx.Rngs):
    self.cell = nnx.GRUCell(features + 2 * arms + 1, hidden, rngs=rngs)
    # [K, D + 1] from h: the arms' logits are linear in [x, 1] with weights read from h,
    # so the policy's dependence on the context can itself be learned in-context.
    self.readout = nnx.Linear(hidden, arms * (features + 1), rngs=rngs)


@dataclasses.dataclass(frozen=True)
class RecurrentImitator:
  arms: int = 2
  hidden: int = 64
  features: int = 0
  per_teacher = False

  def __post_init__(self):
    for name, low in (("arms", 2), ("hidden", 1), ("features", 0)):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"recurrent imitator {name}={value!r}: must be an integer >= "
                         f"{low}.")
    # Abstract: only the graph is kept, no weights drawn.
    object.__setattr__(self, "_graph", nnx.graphdef(nnx.eval_shape(
        lambda: _Net(self.arms, self.hidden, self.features, nnx.Rngs(0)))))

  def init_meta(self, key) -> dict:
    return nnx.to_pure_dict(nnx.split(_Net(self.arms, self.hidden, self.features,
                                           nnx.Rngs(key)))[1])

  def _net(self, meta) -> _Net:
    return nnx.merge(self._graph, meta)

  def init(self, meta):
    del meta
    return jnp.zeros((self.hidden,))

  def log_policy(self, meta, h, x):
    weights = self._net(meta).readout(h).reshape(self.arms, self.features + 1)
    return jax.nn.log_softmax(weights @ jnp.concatenate([x, jnp.ones((1,))]))

  def observe(self, meta, h, x, choice, reward, pi):
    del pi
    one = jax.nn.one_hot(choice, self.arms)
    reward = jnp.asarray(reward, jnp.float32)
    token = jnp.concatenate([x, one, reward[None], one * reward])
    return self._net(meta).cell(h, token)[0]


@dataclasses.dataclass(frozen=True)
class ValueModel:
  """The `q_learning` rule of `learners.acting` with hyperparams per teacher."""

  arms: int = 2
  per_teacher = True

  @property
  def family(self) -> acting.ActingFamily:
    return acting.ActingFamily(arms=self.arms, rules=("q_learning",))

  def init(self, hp):
    del hp
    return acting.init(self.arms)

  def log_policy(self, hp, state, x):
    del x  # a context-free model: the field's standard for bandit choices
    return jnp.log(jnp.maximum(acting.policy(self.family, hp, state), _LOG_FLOOR))

  def observe(self, hp, state, x, choice, reward, pi):
    del x
    return acting.learn(self.family, hp, state, pi, choice, reward)


def log_policies(agent, params, choice, reward, x=None):
  """log pi_t [T, K] of one agent reading a recorded history (choice [T] int, -1 where
  padded: no trial, no update; reward [T]; contexts x [T, D], none by default): each
  policy is the one before its trial."""
  choice = jnp.asarray(choice, jnp.int32)
  x = jnp.zeros(choice.shape + (0,)) if x is None else x

  def trial(state, row):
    c, r, x_t = row
    lp = agent.log_policy(params, state, x_t)
    valid = c >= 0
    new = agent.observe(params, state, x_t, jnp.maximum(c, 0), jnp.where(valid, r, 0.0),
                        jnp.exp(lp))
    return jax.tree.map(lambda n, o: jnp.where(valid, n, o), new, state), lp

  _, lp = jax.lax.scan(trial, agent.init(params),
                       (choice, jnp.asarray(reward, jnp.float32), x))
  return lp


@dataclasses.dataclass(frozen=True)
class Voting:
  """K members of `agent` choosing by the mean of their policies (a stochastic choice
  has no majority to vote: the mean of probabilities is the vote's share per arm);
  params: a tuple of the members' params."""

  agent: object
  per_teacher = False

  def init(self, params):
    return tuple(self.agent.init(p) for p in params)

  def log_policy(self, params, state, x):
    pis = [jnp.exp(self.agent.log_policy(p, s, x)) for p, s in zip(params, state)]
    return jnp.log(jnp.maximum(sum(pis) / len(pis), _LOG_FLOOR))

  def observe(self, params, state, x, choice, reward, pi):
    return tuple(self.agent.observe(p, s, x, choice, reward,
                                    jnp.exp(self.agent.log_policy(p, s, x)))
                 for p, s in zip(params, state))
