"""Continual-learning regularizers as composable parts of a learner's update.

Each part is switched by its own hyperparams (a strength of 0 turns it off), so a member
may combine several. Penalty gradients are closed forms added to the data gradient:
    L2 to anchor:  l2_strength * (w - anchor)            from l2/2 * ||w - anchor||^2
    online EWC:    ewc_strength * F * (w - anchor)       from ewc/2 * sum F (w - anchor)^2
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class Replay(NamedTuple):
  """Reservoir buffer: x [M, ...], y [M, ...], count = examples offered so far."""

  x: jax.Array
  y: jax.Array
  count: jax.Array


def penalty_grads(params, anchor, fisher, hparams):
  """Gradient of the L2-to-anchor and EWC penalties (zeros where a part is absent)."""
  def leaf(w, a, f):
    g = hparams["l2_strength"] * (w - a)
    if f is not None:
      g = g + hparams["ewc_strength"] * f * (w - a)
    return g
  if fisher is None:
    return jax.tree.map(lambda w, a: leaf(w, a, None), params, anchor)
  return jax.tree.map(leaf, params, anchor, fisher)


def update_fisher(fisher, grads, decay):
  """Online empirical Fisher: F <- decay * F + (1 - decay) * g^2 (g: batch gradient)."""
  return jax.tree.map(lambda f, g: decay * f + (1.0 - decay) * g * g, fisher, grads)


def update_anchor(anchor, params, rate):
  """anchor <- anchor + rate * (params - anchor); rate 0 keeps the initial weights."""
  return jax.tree.map(lambda a, w: a + rate * (w - a), anchor, params)


def replay_init(size: int, x_shape: tuple, y_shape: tuple, y_dtype) -> Replay:
  return Replay(x=jnp.zeros((size,) + tuple(x_shape), jnp.float32),
                y=jnp.zeros((size,) + tuple(y_shape), y_dtype),
                count=jnp.zeros((), jnp.int32))


def replay_indices(buffer: Replay, key, n: int):
  """n slots drawn uniformly from the filled part of the buffer (slot 0 when empty)."""
  filled = jnp.minimum(buffer.count, buffer.x.shape[0])
  return jax.random.randint(key, (n,), 0, jnp.maximum(filled, 1))


def reservoir_slots(count, size: int, key, n: int):
  """Where n new examples go: example number c = count + i takes slot c while the buffer
  fills, then slot j ~ U{0..c} if j < size (reservoir sampling), else slot `size` (dropped)."""
  c = count + jnp.arange(n)
  j = jax.random.randint(key, (n,), 0, c + 1)
  return jnp.where(c < size, c, jnp.where(j < size, j, size))


def replay_insert(buffer: Replay, x, y, slots) -> Replay:
  """Stores x[i], y[i] at slots[i] (`reservoir_slots`; slot `size` drops the example; of
  two examples drawing one slot, the later is kept)."""
  size, n = buffer.x.shape[0], x.shape[0]
  # A scatter applies repeated indices in an unspecified order (on some backends): drop
  # every example that a later one of the batch overwrites, so the result is defined.
  order = jnp.arange(n)
  overwritten = ((slots[:, None] == slots[None, :])
                 & (order[:, None] < order[None, :])).any(1)
  slots = jnp.where(overwritten, size, slots)
  return Replay(x=buffer.x.at[slots].set(x, mode="drop"),
                y=buffer.y.at[slots].set(y, mode="drop"),
                count=buffer.count + x.shape[0])


def perturbation(params, key):
  """Standard normal noise shaped like params, one key per leaf."""
  return optax.tree.random_like(key, params)


def shrink_perturb(params, shrink, perturb, noise):
  """w <- (1 - shrink) * w + perturb * eps with eps the `perturbation` noise; noise None
  takes its mean, 0 (shrink only)."""
  if noise is None:
    return jax.tree.map(lambda w: (1.0 - shrink) * w, params)
  return jax.tree.map(lambda w, e: (1.0 - shrink) * w + perturb * e, params, noise)
