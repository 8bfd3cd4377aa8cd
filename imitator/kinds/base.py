"""The imitator protocol (DESIGN §2).

An imitator is a static object (sizes, the task, a graphdef) with pure methods over its
meta-params `meta` (a pytree of arrays, what the outer loop trains) and a fast `state`
(what `observe` changes inside a stream):

    init_meta(key) -> meta
    init(meta, key) -> state
    predict(meta, state, x [n, ...]) -> a_hat [n, out]     (probabilities for classification)
    observe(meta, state, x [B, ...], y, a [B, out], seen) -> state
    unroll(meta, state, xs [L, B, ...], ys, as_, fresh, seen [L]) -> (state, a_hat [L, B, out])

An imitator sees only x, y and the teacher's behaviour a: never hyperparams or weights.
A step is *seen* when a is the teacher's behaviour; on an *unseen* step (the imitator
runs alone, in the teacher's place) `a` carries nothing and is never read (it may be
NaN): each kind goes on from x, y and its own predictions only. `unroll` predicts each
step before observing it; the default is a `lax.scan`, which sequence models override
with a parallel form that must agree with it. `fresh=True` promises that `state` is
straight from `init` (a model may skip empty memory); `seen=None` is every step seen.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def all_seen(xs):
  """seen [L] for every step of xs [L, ...] seen."""
  return jnp.ones(xs.shape[:1], bool)


def seen_or_own(seen, a, own):
  """The behaviour an imitator reads: a where the step is seen, else its own prediction
  own (a constant of the meta-gradient, as a sampled token is in scheduled sampling)."""
  return jnp.where(seen, a, jax.lax.stop_gradient(own))


@dataclasses.dataclass(frozen=True, eq=False)
class Imitator:
  """Base class: `task` and `out_dim` of the behaviour; `x_shape` of one input."""

  task: str
  x_shape: tuple
  out_dim: int
  remat: bool = False

  @property
  def in_dim(self) -> int:
    n = 1
    for s in self.x_shape:
      n *= s
    return n

  def init_meta(self, key):
    raise NotImplementedError

  def init(self, meta, key):
    raise NotImplementedError

  def predict(self, meta, state, x):
    raise NotImplementedError

  def observe(self, meta, state, x, y, a, seen=True):
    raise NotImplementedError

  def unroll(self, meta, state, xs, ys, as_, fresh: bool = False, seen=None):
    del fresh
    def step(state, inputs):
      x, y, a, s = inputs
      a_hat = self.predict(meta, state, x)
      return self.observe(meta, state, x, y, a, s), a_hat

    if self.remat:
      step = jax.checkpoint(step)
    return jax.lax.scan(step, state, (xs, ys, as_, all_seen(xs) if seen is None else seen))

  # helpers shared by the kinds

  def behaviour(self, out, log_temperature=0.0):
    """Raw outputs [n, out] -> behaviour: values, or softmax(out / temperature)."""
    if self.task == "classification":
      return jax.nn.softmax(out * jnp.exp(-log_temperature), axis=-1)
    return out

  def target_features(self, y):
    """Labels as features [B, out]: regression values, or one-hot classes."""
    if self.task == "classification":
      return jax.nn.one_hot(y, self.out_dim)
    return y
