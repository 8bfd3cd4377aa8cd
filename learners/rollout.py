"""Rollout: a teacher's behaviour over a stream, as one `lax.scan` over time.

`rollout` runs one member; `population_rollout` is its `vmap` over members (hyperparams
and init keys batched; streams batched or shared). Both are pure and jittable with the
family static, and differentiable with respect to the continuous hyperparams.
"""

from typing import Any, NamedTuple

import jax

from learners import learner
from learners.family import Family
from learners.stream_base import Stream


class Trajectory(NamedTuple):
  """behaviour [T, B, out]; loss [T] (on (x_t, y_t), before learning from it);
  probe_outputs [T // probe_every, n_probes, out] read before steps 0, k, 2k, ... or None;
  draws: the `learner.Draws` of every step, leaves [T, ...] (if asked) or None."""

  behaviour: jax.Array
  loss: jax.Array
  probe_outputs: Any = None
  draws: Any = None


def rollout(family: Family, hparams, init_key, stream: Stream, probes=None,
            probe_every: int = 1, remat: bool = False, return_state: bool = False,
            return_draws: bool = False):
  """One teacher over one stream: Trajectory (and the final LearnerState if asked);
  `return_draws` also records every step's random draws (the same numbers either way)."""
  state = learner.init(family, hparams, init_key)

  def step(state, xy):
    state, out = learner.step(family, hparams, state, *xy, return_draws=return_draws)
    return state, out if return_draws else out + (None,)

  if remat:
    step = jax.checkpoint(step)
  xs = (stream.x, stream.y)
  if probes is None:
    state, (behaviour, loss, drawn) = jax.lax.scan(step, state, xs)
    traj = Trajectory(behaviour, loss, draws=drawn)
  else:
    horizon = stream.x.shape[0]
    if horizon % probe_every:
      raise ValueError(f"probe_every={probe_every} must divide the horizon {horizon}.")
    chunks = jax.tree.map(
        lambda a: a.reshape((horizon // probe_every, probe_every) + a.shape[1:]), xs)

    def chunk(state, xs_chunk):
      probe_out = learner.behave(family, hparams, state, probes)
      state, (behaviour, loss, drawn) = jax.lax.scan(step, state, xs_chunk)
      return state, (behaviour, loss, drawn, probe_out)

    state, (behaviour, loss, drawn, probe_out) = jax.lax.scan(chunk, state, chunks)
    unchunk = lambda a: a.reshape((horizon,) + a.shape[2:])
    traj = Trajectory(unchunk(behaviour), unchunk(loss), probe_out,
                      jax.tree.map(unchunk, drawn))
  return (traj, state) if return_state else traj


def population_rollout(family: Family, hparams, init_keys, stream: Stream,
                       shared_stream: bool = False, **kwargs):
  """vmap of `rollout` over members: hparams {field: [P]}, init_keys [P], stream [P, T, ...]
  (or one stream [T, ...] seen by all members when shared_stream)."""
  fn = lambda hp, k, s: rollout(family, hp, k, s, **kwargs)
  return jax.vmap(fn, in_axes=(0, 0, None if shared_stream else 0))(hparams, init_keys,
                                                                     stream)
