"""Sampling-and-voting: K imitators of one kind run side by side, their behaviour pooled.

`EnsembleImitator(member, size)` has meta-params with a leading member axis [K, ...]
(e.g. K independent meta-trainings of the same config, stacked); every member keeps its
own fast state and observes the same stream (vmapped), and the ensemble behaves as the
mean of its members' behaviours: the mean prediction (regression) or the mean of the
class probabilities (classification). With `vote` (classification only) it behaves as
the majority vote instead: each class's share of the members whose most likely class it
is (a class no member picks gets probability 0, which D = KL(a || a_hat) charges at its
floor: a vote trades calibrated probabilities for agreement on the argmax). On unseen
steps each member goes on alone as it would by itself. An ensemble of K copies of one
imitator is that imitator (with `vote`: the one-hot of its most likely class).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from imitator.kinds.base import Imitator


@dataclasses.dataclass(frozen=True, eq=False)
class EnsembleImitator(Imitator):
  member: Imitator | None = None
  size: int = 1
  vote: bool = False

  def __post_init__(self):
    if self.member is None:
      raise ValueError("an ensemble needs a member imitator.")
    if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
      raise ValueError(f"ensemble size={self.size!r}: must be an integer >= 1.")
    if self.vote and self.task != "classification":
      raise ValueError(f"a majority vote needs classification; this ensemble's task is "
                       f"{self.task!r} (pool by the mean: vote=False).")

  @classmethod
  def of(cls, member: Imitator, metas: list,
         vote: bool = False) -> tuple["EnsembleImitator", dict]:
    """(ensemble, stacked meta-params) of the members' meta-params `metas`."""
    ens = cls(task=member.task, x_shape=member.x_shape, out_dim=member.out_dim,
              remat=member.remat, member=member, size=len(metas), vote=vote)
    return ens, jax.tree.map(lambda *m: jnp.stack(m), *metas)

  def init_meta(self, key):
    return jax.vmap(self.member.init_meta)(jax.random.split(key, self.size))

  def init(self, meta, key):
    # One key for every member: members differ by their meta-params only, so copies of
    # one imitator stay copies.
    return jax.vmap(self.member.init, in_axes=(0, None))(meta, key)

  def predict(self, meta, state, x):
    each = jax.vmap(self.member.predict, in_axes=(0, 0, None))(meta, state, x)
    if self.vote:
      each = jax.nn.one_hot(jnp.argmax(each, axis=-1), self.out_dim, dtype=each.dtype)
    return jnp.mean(each, axis=0)

  def observe(self, meta, state, x, y, a, seen=True):
    return jax.vmap(self.member.observe, in_axes=(0, 0, None, None, None, None))(
        meta, state, x, y, a, seen)
