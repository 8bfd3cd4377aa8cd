"""Acting teachers whose policy is one of the family's networks (contextual bandits).

A member is a member of a `learners.family` preset (network, optax optimizer, continual
regularizers, learning rate, ...; non-gradient rules too when the preset has them) whose
outputs [K] are its values of the K arms for the context x [D], plus a softmax inverse
temperature `beta` (the acting family's prior):

- policy: softmax(beta * Q(x)), Q = the member's outputs on x;
- learning (Q-learning on bandit rewards): one `learners.learner.step` on (x, y) with
  y = Q(x) except y[c] = r for the chosen arm c, so the squared-error gradient moves
  only the chosen arm's value toward its reward (the other arms' targets equal their
  outputs, with zero error), through the member's optimizer and regularizers.

Hyperparams: the preset's fields, `beta`, and `key` (uint32 key data [2] of the initial
weights and the member's own draws, e.g. replay slots), so that a teacher is its
hyperparams alone.
"""

from __future__ import annotations

import dataclasses

import jax

from learners import acting, family as family_lib, learner, networks, optimizers


@dataclasses.dataclass(frozen=True)
class NetworkActingFamily:
  """Members of the `preset` family acting on K arms from contexts of width `features`."""

  name: str = "network_acting"
  arms: int = 2
  features: int = 8
  preset: str = "small_mixed"

  def __post_init__(self):
    for field, low in (("arms", 2), ("features", 1)):
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"network acting family: {field}={value!r} must be an integer "
                         f">= {low}.")
    if self.preset not in family_lib.FAMILIES:
      raise ValueError(f"network acting family: preset {self.preset!r}; allowed: "
                       f"{sorted(family_lib.FAMILIES)}.")

  @property
  def network(self) -> family_lib.Family:
    return family_lib.from_config({"name": self.preset}, "regression", (self.features,),
                                  self.arms)

  def sample(self, key, n: int) -> dict:
    hp = self.network.sample(jax.random.fold_in(key, 0), n)
    hp["beta"] = acting.PRIORS["beta"].sample(jax.random.fold_in(key, 1), n)
    hp["key"] = jax.random.key_data(jax.random.split(jax.random.fold_in(key, 2), n))
    return hp

  def init_state(self, hp, key=None) -> learner.LearnerState:
    del key
    return learner.init(self.network, hp, jax.random.wrap_key_data(hp["key"]))

  def values(self, hp, state, x):
    """Q(x) [K] of one member."""
    return learner.state_outputs(self.network, hp, state, x[None])[0]

  def policy_at(self, hp, state, x):
    return jax.nn.softmax(hp["beta"] * self.values(hp, state, x))

  def learn_at(self, hp, state, pi, choice, reward, x):
    del pi
    q = self.values(hp, state, x)
    y = q.at[choice].set(reward)
    return learner.step(self.network, hp, state, x[None], y[None])[0]

  def kinds(self, hp) -> list[str]:
    """Each member's network and optimizer names [P]."""
    return [f"{networks.NETWORKS[int(n)]}+{optimizers.OPTIMIZERS[int(o)]}"
            for n, o in zip(hp["network"], hp["optimizer"])]

  def describe(self, hp) -> str:
    net = {k: v for k, v in hp.items() if k not in ("beta", "key")}
    return f"{self.network.describe(net)}, beta={float(hp['beta']):.3g}"
