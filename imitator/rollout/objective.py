"""The imitation objective: unroll an imitator beside its teachers, truncated in windows.

`unroll` runs imitators over teachers' streams chunk by chunk without gradients in mind
(evaluation's one unroll: memory for one chunk, estimates and probe predictions at chunk
ends); `evaluation_keys` gives the imitators' initial-state keys it uses.
`loss_and_grads` unrolls a batch of teachers' streams window by window (`truncation`
steps, train.truncation; 0 is the whole horizon). Gradients flow within a window and
through the imitator's initial state in the first one; the state carried into later windows is a constant
(truncated backpropagation), so memory is bounded by the window, not the horizon.
`streamed_loss_and_grads` does the same for several imitators beside teachers whose
streams are generated and rolled out window by window too, so that the episode's data
is bounded by the window as well. The loss is the mean over teachers and steps of
D(a_t, a_hat_t) (`imitator.metrics`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from imitator import metrics
from imitator.rollout import episodes
from learners import learner, streams


def _unroll_batch(imitator, meta, states, xs, ys, as_, fresh=False, seen=None):
  fn = lambda m, s, x, y, a, v: imitator.unroll(m, s, x, y, a, fresh=fresh, seen=v)
  return jax.vmap(fn, in_axes=(None, 0, 0, 0, 0, 0))(meta, states, xs, ys, as_, seen)


def seen_steps(observe, start: int | jax.Array, length: int):
  """seen [P, length] of steps start .. start + length - 1, the first observe [P] steps
  of each teacher's stream seen (None: every step seen, returned as None)."""
  if observe is None:
    return None
  return (start + jnp.arange(length))[None, :] < jnp.asarray(observe)[:, None]


def evaluation_keys(n: int):
  """[n] keys for the imitators' initial states in evaluation, one per teacher. Fixed,
  not drawn from eval.seed: every imitator, shift and horizon starts from the same
  states, so their figures differ by what they observe only."""
  return jax.random.split(jax.random.key(0), n)


def init_states(imitator, meta, keys):
  return jax.vmap(imitator.init, in_axes=(None, 0))(meta, keys)


def _window(arrays, start, window):
  """Steps [start, start + window) of [P, T, ...] arrays, sliced in place (no copy of
  the whole horizon, so memory stays bounded by the window)."""
  return tuple(jax.lax.dynamic_slice_in_dim(a, start, window, axis=1) for a in arrays)


def unroll(imitator, meta, keys, xs, ys, as_, chunk: int = 0, probes=None, observe=None):
  """Runs an imitator over teachers' streams xs [P, T, B, ...] `chunk` steps at a time
  (0: all at once), so that long horizons need memory for one chunk only; with `observe`
  [P] (or []) only each teacher's first `observe` steps are seen, after which the
  imitator runs alone (None: teacher-forced, every step seen). Returns a_hat
  [P, T, B, out]; the imitator's estimate of the hyperparams at each chunk end ({field:
  [P, T // chunk]}, system_id only, else None); and its predictions on per-teacher
  `probes` [P, n, ...] before each chunk ([P, T // chunk, n, out], or None)."""
  horizon = xs.shape[1]
  chunk = chunk or horizon
  if horizon % chunk:
    raise ValueError(f"chunk={chunk} must divide the horizon {horizon}.")

  def extras(state, probe_x):
    est = imitator.estimate(meta, state) if hasattr(imitator, "estimate") else None
    probe = None if probe_x is None else imitator.predict(meta, state, probe_x)
    return est, probe

  def one(key, x, y, a, seen, probe_x):
    def body(state, w):
      _, probe = extras(state, probe_x)
      x, y, a, seen = w
      state, a_hat = imitator.unroll(meta, state, x, y, a, seen=seen)
      return state, (a_hat, extras(state, None)[0], probe)

    # The first chunk starts from `init`, which lets models skip empty memory.
    state = imitator.init(meta, key)
    _, probe0 = extras(state, probe_x)
    first = None if seen is None else seen[:chunk]
    state, a0 = imitator.unroll(meta, state, x[:chunk], y[:chunk], a[:chunk], fresh=True,
                                seen=first)
    est0, _ = extras(state, None)
    chunks = lambda v: v[chunk:].reshape((horizon // chunk - 1, chunk) + v.shape[1:])
    _, (a_rest, est_rest, probe_rest) = jax.lax.scan(body, state,
                                                     jax.tree.map(chunks, (x, y, a, seen)))
    cat = lambda first, more: None if first is None else jax.tree.map(
        lambda f, m: jnp.concatenate([f[None], m]), first, more)
    a_hat = jnp.concatenate([a0, a_rest.reshape((-1,) + a0.shape[1:])])
    return a_hat, cat(est0, est_rest), cat(probe0, probe_rest)

  if observe is not None:
    observe = jnp.broadcast_to(jnp.asarray(observe), xs.shape[:1])
  return jax.vmap(one)(keys, xs, ys, as_, seen_steps(observe, 0, horizon), probes)


def _window_loss(imitator, meta, states, xw, yw, aw, seen=None, fresh=False, bw=None,
                 weight=0.0):
  """(mean D over one window of P teachers, imitator states after it); every step is
  scored, seen or not (seen [P, window] or None: all seen). With `bw` (behaviour of the
  same shape as aw) the loss is D(a, a_hat) + weight * D(b, a_hat): fine-tuning's extra
  term (`imitator.training.finetune`); the imitator still observes a."""
  states, a_hat = _unroll_batch(imitator, meta, states, xw, yw, aw, fresh, seen)
  loss = metrics.step_error(imitator.task, aw, a_hat)
  if bw is not None:
    loss = loss + weight * metrics.step_error(imitator.task, bw, a_hat)
  return loss.mean(), states


def _first_window(imitator, meta, keys, xw, yw, aw, seen=None, bw=None, weight=0.0):
  """((loss, states), grads) of the first window: gradients also flow through the
  imitator's initial state."""
  first = lambda m: _window_loss(imitator, m, init_states(imitator, m, keys), xw, yw, aw,
                                 seen, True, bw, weight)
  return jax.value_and_grad(first, has_aux=True)(meta)


def _later_window(imitator, meta, states, xw, yw, aw, seen=None, bw=None, weight=0.0):
  """((loss, states), grads) of a later window: the carried state is a constant."""
  return jax.value_and_grad(_window_loss, argnums=1, has_aux=True)(
      imitator, meta, jax.lax.stop_gradient(states), xw, yw, aw, seen, False, bw, weight)


def _check_truncation(truncation, horizon):
  if horizon % truncation:
    raise ValueError(f"train.truncation={truncation} must divide the horizon {horizon}.")


def loss_and_grads(imitator, meta, keys, xs, ys, as_, truncation: int = 0, observe=None,
                   extra=None, weight=0.0):
  """(mean imitation loss, its gradient w.r.t. meta) over P teachers [P, T, ...]; with
  `observe` [P] each teacher is seen for its first observe steps only (None: all). With
  `extra` [P, T, B, out] the loss adds weight * D(extra, a_hat) (see `_window_loss`)."""
  horizon = xs.shape[1]
  window = truncation or horizon
  _check_truncation(window, horizon)
  n = horizon // window
  first_extra = None if extra is None else extra[:, :window]
  (loss, states), grads = _first_window(imitator, meta, keys, xs[:, :window],
                                        ys[:, :window], as_[:, :window],
                                        seen_steps(observe, 0, window), first_extra, weight)
  if n == 1:
    return loss, grads

  def body(carry, start):
    states, loss_sum, grad_sum = carry
    bw = None if extra is None else _window((extra,), start, window)[0]
    (l, states), g = _later_window(imitator, meta, states,
                                   *_window((xs, ys, as_), start, window),
                                   seen_steps(observe, start, window), bw, weight)
    return (states, loss_sum + l, jax.tree.map(jnp.add, grad_sum, g)), None

  (_, loss, grads), _ = jax.lax.scan(body, (states, loss, grads),
                                     jnp.arange(1, n) * window)
  return loss / n, jax.tree.map(lambda g: g / n, grads)


def streamed_loss_and_grads(imitators: dict, metas: dict, setting, data, key, keys,
                            n: int, truncation: int, place=lambda a: a,
                            observe=None) -> dict:
  """{name: (mean imitation loss, gradient w.r.t. metas[name])} of every imitator on n
  fresh teachers, the teachers and streams `episodes.sample(setting, data, key, n)`
  draws, imitator states from keys [n], each teacher seen for its first `observe` [n]
  steps (None: all). The teachers' streams are generated and rolled out `truncation`
  steps at a time beside the imitators (`streams.advance`), so memory is bounded by the
  window, data included; `place` puts each teacher-axis array on its device."""
  spec, family = setting.spec, setting.family
  _check_truncation(truncation, spec.horizon)
  k_teach, k_stream, _ = jax.random.split(key, 3)
  hp, init_keys = episodes.teachers(setting, k_teach, n)
  hp, init_keys = place(hp), place(init_keys)
  cursors = jax.vmap(lambda k: streams.start(spec, k, data))(
      place(jax.random.split(k_stream, n)))
  teachers = jax.vmap(lambda hp, k: learner.init(family, hp, k))(hp, init_keys)

  def teach(cursors, teachers, first):
    """The next window's streams and the teachers' behaviour on it."""
    cursors, s = jax.vmap(lambda c: streams.advance(spec, c, data, first, truncation))(cursors)

    def follow(hp, state, xs, ys):
      step = lambda st, xy: learner.step(family, hp, st, *xy)
      state, (behaviour, _) = jax.lax.scan(step, state, (xs, ys))
      return state, behaviour

    teachers, behaviour = jax.vmap(follow)(hp, teachers, s.x, s.y)
    return cursors, teachers, (s.x, s.y, behaviour)

  cursors, teachers, xya = teach(cursors, teachers, 0)
  states, losses, grads = {}, {}, {}
  for name, im in imitators.items():
    (losses[name], states[name]), grads[name] = _first_window(
        im, metas[name], keys, *xya, seen_steps(observe, 0, truncation))
  count = spec.horizon // truncation
  if count == 1:
    return {name: (losses[name], grads[name]) for name in imitators}

  def body(carry, first):
    cursors, teachers, states, losses, grads = carry
    cursors, teachers, xya = teach(cursors, teachers, first)
    for name, im in imitators.items():
      (l, states[name]), g = _later_window(im, metas[name], states[name], *xya,
                                           seen_steps(observe, first, truncation))
      losses[name] = losses[name] + l
      grads[name] = jax.tree.map(jnp.add, grads[name], g)
    return (cursors, teachers, states, losses, grads), None

  (_, _, _, losses, grads), _ = jax.lax.scan(
      body, (cursors, teachers, states, losses, grads), jnp.arange(1, count) * truncation)
  return {name: (losses[name] / count, jax.tree.map(lambda g: g / count, grads[name]))
          for name in imitators}
