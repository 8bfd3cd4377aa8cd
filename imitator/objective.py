"""The imitation objective: unroll an imitator beside its teachers, truncated in windows.

`loss_and_grads` unrolls a batch of teachers' streams window by window (`window` steps;
0 is the whole horizon). Gradients flow within a window and through the imitator's
initial state in the first one; the state carried into later windows is a constant
(truncated backpropagation), so memory is bounded by the window, not the horizon.
The loss is the mean over teachers and steps of D(a_t, a_hat_t) (`imitator.metrics`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from imitator import metrics


def _unroll_batch(imitator, meta, states, xs, ys, as_, fresh=False):
  fn = lambda m, s, x, y, a: imitator.unroll(m, s, x, y, a, fresh=fresh)
  return jax.vmap(fn, in_axes=(None, 0, 0, 0, 0))(meta, states, xs, ys, as_)


def init_states(imitator, meta, keys):
  return jax.vmap(imitator.init, in_axes=(None, 0))(meta, keys)


def _window(arrays, start, window):
  """Steps [start, start + window) of [P, T, ...] arrays, sliced in place (no copy of
  the whole horizon, so memory stays bounded by the window)."""
  return tuple(jax.lax.dynamic_slice_in_dim(a, start, window, axis=1) for a in arrays)


def unroll(imitator, meta, keys, xs, ys, as_, window: int = 0):
  """a_hat [P, T, B, out] for teachers' streams xs [P, T, B, ...], run `window` steps at
  a time (0: all at once) so that long horizons need memory for one window only."""
  horizon = xs.shape[1]
  window = window or horizon
  if horizon % window:
    raise ValueError(f"window={window} must divide the horizon {horizon}.")
  states, first = _unroll_batch(imitator, meta, init_states(imitator, meta, keys),
                                xs[:, :window], ys[:, :window], as_[:, :window], fresh=True)
  if window == horizon:
    return first

  def body(states, start):
    return _unroll_batch(imitator, meta, states, *_window((xs, ys, as_), start, window))

  starts = jnp.arange(1, horizon // window) * window
  _, a_hat = jax.lax.scan(body, states, starts)
  a_hat = jnp.swapaxes(a_hat, 0, 1)
  a_hat = a_hat.reshape((a_hat.shape[0], horizon - window) + a_hat.shape[3:])
  return jnp.concatenate([first, a_hat], axis=1)


def loss_and_grads(imitator, meta, keys, xs, ys, as_, window: int = 0):
  """(mean imitation loss, its gradient w.r.t. meta) over P teachers [P, T, ...]."""
  horizon = xs.shape[1]
  window = window or horizon
  if horizon % window:
    raise ValueError(f"train.truncation={window} must divide the horizon {horizon}.")
  n = horizon // window

  def window_loss(meta, states, xw, yw, aw, fresh=False):
    states, a_hat = _unroll_batch(imitator, meta, states, xw, yw, aw, fresh)
    return metrics.step_error(imitator.task, aw, a_hat).mean(), states

  def first(meta):
    return window_loss(meta, init_states(imitator, meta, keys), xs[:, :window],
                       ys[:, :window], as_[:, :window], fresh=True)

  (loss, states), grads = jax.value_and_grad(first, has_aux=True)(meta)
  if n == 1:
    return loss, grads

  def body(carry, start):
    states, loss_sum, grad_sum = carry
    (l, states), g = jax.value_and_grad(window_loss, has_aux=True)(
        meta, jax.lax.stop_gradient(states), *_window((xs, ys, as_), start, window))
    return (states, loss_sum + l, jax.tree.map(jnp.add, grad_sum, g)), None

  (_, loss, grads), _ = jax.lax.scan(body, (states, loss, grads),
                                     jnp.arange(1, n) * window)
  return loss / n, jax.tree.map(lambda g: g / n, grads)
