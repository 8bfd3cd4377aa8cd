"""The imitation objective: windowed unrolls and truncated gradients against plain ones."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imitator import metrics
from imitator.kinds.gradient import GradientImitator
from imitator.kinds.in_context import InContextImitator
from imitator.rollout import episodes, objective
from imitator.training import experiment

import test_golden  # tests/ is on sys.path (pytest's default import mode)

P, T, B = 3, 24, 2


def _data():
  k = jax.random.split(jax.random.key(0), 3)
  xs = jax.random.normal(k[0], (P, T, B, 4))
  ys = jax.random.normal(k[1], (P, T, B, 1))
  as_ = jax.random.normal(k[2], (P, T, B, 1))
  return jax.random.split(jax.random.key(1), P), xs, ys, as_


def _imitators():
  return {
      "gradient": GradientImitator(task="regression", x_shape=(4,), out_dim=1, width=8,
                                   adapt_steps=True),
      "recurrent": InContextImitator(task="regression", x_shape=(4,), out_dim=1,
                                     arch="recurrent", hidden=8, d_key=8, d_value=4,
                                     n_heads=2, batch=B),
      "transformer": InContextImitator(task="regression", x_shape=(4,), out_dim=1,
                                       d_model=16, n_heads=2, n_layers=1, context=T,
                                       batch=B),
  }


@pytest.mark.parametrize("name", [pytest.param("gradient", marks=pytest.mark.slow), "recurrent",
                                  pytest.param("transformer", marks=pytest.mark.slow)])
def test_windowed_unroll_equals_the_whole_unroll(name):
  im = _imitators()[name]
  meta = im.init_meta(jax.random.key(2))
  keys, xs, ys, as_ = _data()
  whole = objective.unroll(im, meta, keys, xs, ys, as_)[0]
  windowed = objective.unroll(im, meta, keys, xs, ys, as_, chunk=6)[0]
  np.testing.assert_allclose(windowed, whole, atol=2e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gradient", "recurrent"])
def test_truncated_gradient_is_the_mean_of_per_window_gradients(name):
  im = _imitators()[name]
  meta = im.init_meta(jax.random.key(2))
  keys, xs, ys, as_ = _data()

  # Whole horizon: the plain gradient of the mean imitation error.
  def full(meta):
    a_hat = objective.unroll(im, meta, keys, xs, ys, as_)[0]
    return metrics.step_error("regression", as_, a_hat).mean()

  loss, grads = objective.loss_and_grads(im, meta, keys, xs, ys, as_)
  # Two compiled programs (with and without the backward pass) fuse and sum float32 in
  # different orders over a 32-step recurrence: 1.06e-5 apart here, as the gradients.
  np.testing.assert_allclose(loss, full(meta), rtol=1e-4)
  chex.assert_trees_all_close(grads, jax.grad(full)(meta), rtol=1e-4, atol=1e-7)

  # Windows of 8: a hand loop, each window's gradient taken with its start state fixed
  # (except the first, whose start state is init(meta)), averaged over windows.
  window = 8
  states = jax.vmap(im.init, (None, 0))(meta, keys)
  total_loss, total_grads = 0.0, None
  for i in range(T // window):
    sl = slice(i * window, (i + 1) * window)

    def window_loss(meta, start):
      s = jax.vmap(im.init, (None, 0))(meta, keys) if i == 0 else start
      end, a_hat = jax.vmap(im.unroll, (None, 0, 0, 0, 0))(meta, s, xs[:, sl], ys[:, sl],
                                                           as_[:, sl])
      return metrics.step_error("regression", as_[:, sl], a_hat).mean(), end

    (l, states), g = jax.value_and_grad(window_loss, has_aux=True)(meta, states)
    total_loss += l
    total_grads = g if total_grads is None else jax.tree.map(jnp.add, total_grads, g)
  n = T // window
  loss, grads = objective.loss_and_grads(im, meta, keys, xs, ys, as_, truncation=window)
  np.testing.assert_allclose(loss, total_loss / n, rtol=1e-5)
  # atol: the safeguard's curvature is a difference of two losses, which float32 sums
  # in another order move by ~1e-6.
  chex.assert_trees_all_close(grads, jax.tree.map(lambda g: g / n, total_grads),
                              rtol=1e-4, atol=2e-5)
  # Truncation really cuts: the windowed gradient differs from the whole-horizon one.
  whole = jax.grad(full)(meta)
  chex.assert_trees_all_equal_structs(grads, whole)
  assert any(not np.allclose(a, b, rtol=1e-3) for a, b in
             zip(jax.tree.leaves(grads), jax.tree.leaves(whole)))


def test_truncation_must_divide_the_horizon():
  im = _imitators()["gradient"]
  keys, xs, ys, as_ = _data()
  with pytest.raises(ValueError, match="must divide the horizon 24"):
    objective.loss_and_grads(im, im.init_meta(jax.random.key(0)), keys, xs, ys, as_,
                             truncation=7)


# Recomputation fuses float32 sums in another order: measured up to 7e-7 apart (the
# transformer, whose gradients reach 6.5) against differences of O(|g|) if remat lost
# or changed a gradient path.
RTOL_REMAT, ATOL_REMAT = 1e-4, 1e-5


def _primitives(jaxpr):
  """The names of every primitive in a jaxpr, nested ones (scan, cond, ...) included."""
  for eqn in jaxpr.eqns:
    yield eqn.primitive.name
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's Jaxpr
        if hasattr(sub, "eqns"):
          yield from _primitives(sub)


# system_id's remat program (every particle's rollout, recomputed) crashed XLA's CPU
# compiler with a segmentation fault in a fresh-clone run of the slow suite. It wraps its
# own scan step in `jax.checkpoint` as `imitator.kinds.base` does; that path is untested here.
REMAT_KINDS = [k for k in test_golden.KINDS if k != "system_id"]


@pytest.mark.slow
@pytest.mark.parametrize("name", REMAT_KINDS)
def test_remat_gives_the_same_meta_gradient(name):
  """`train.remat=True` recomputes each unroll step in the backward pass instead of
  storing it (jax.checkpoint): the training objective's loss and meta-gradient are the
  same as without it, for every kind, on teachers of default.py:smoke."""
  exps = {remat: experiment.Experiment(test_golden.config(name, remat=remat))
          for remat in (False, True)}
  setting, data = exps[False].setting, exps[False].data
  ep = jax.jit(lambda k: episodes.sample(setting, data, k, 2))(jax.random.key(3))
  keys = jax.random.split(jax.random.key(4), 2)
  out = {}
  for remat, exp in exps.items():
    im = exp.imitators["imitator"]
    meta = im.init_meta(jax.random.key(5))
    traced = jax.jit(lambda m: objective.loss_and_grads(im, m, keys, ep.x, ep.y,
                                                        ep.behaviour)).trace(meta)
    # The config reaches the program: jax.checkpoint (remat2, or checkpoint) is in it.
    names = set(_primitives(traced.jaxpr.jaxpr))
    assert bool(names & {"remat2", "checkpoint", "remat"}) == remat, name
    out[remat] = traced.lower().compile()(meta)
  chex.assert_trees_all_close(out[True], out[False], rtol=RTOL_REMAT, atol=ATOL_REMAT)
