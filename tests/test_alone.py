"""Seen and unseen steps: after the cut every kind runs alone, in the teacher's place,
from x and y only; what it would have read of the teacher's behaviour is never read."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imitator.kinds.gradient import GradientImitator
from imitator.kinds.in_context import InContextImitator
from imitator.kinds.system_id import SystemIdImitator
from imitator.rollout import objective
from learners import family as family_lib
from learners import learner, rollout, streams

B, DIM = 2, 5


def _stream(task, horizon, n_classes=3, seed=4):
  spec = streams.StreamSpec(kind="linear_" + task, horizon=horizon, dim=DIM, batch=B,
                            task_switch_every=horizon // 4, n_classes=n_classes)
  return streams.synthetic_stream(spec, jax.random.key(seed))


def _teacher(name, task, horizon, overrides=None):
  out = 3 if task == "classification" else 1
  fam = family_lib.from_config({"name": name, "width": 8}, task, (DIM,), out)
  hp = fam.member(fam.sample(jax.random.key(3), 1, fixed=fam.codes(overrides or {})), 0)
  stream = _stream(task, horizon)
  key = jax.random.key(5)
  traj = jax.jit(rollout.rollout, static_argnums=0)(fam, hp, key, stream)
  return fam, hp, key, stream, traj


def _imitators(task, out):
  common = dict(task=task, x_shape=(DIM,), out_dim=out)
  small = dict(d_model=16, n_heads=2, n_layers=2, context=6, batch=B, hidden=8, d_key=8,
               d_value=4)
  fam = family_lib.from_config({"name": "small_mixed", "width": 4}, task, (DIM,), out)
  return {
      "gradient/affine": GradientImitator(**common, width=8, adapt_steps=True),
      "gradient/kalman": GradientImitator(**common, width=8, adapt_steps=True,
                                          tracker="kalman"),
      "gradient/update_net": GradientImitator(**common, width=8, update_net=True),
      "frozen": GradientImitator(**common, width=8, step_size="per_layer", uses_y=False,
                                 freeze_after=3),
      "context_only": GradientImitator(**common, width=8, step_size="per_layer",
                                       uses_y=False),
      "in_context/recurrent": InContextImitator(**common, arch="recurrent", **small),
      "in_context/transformer": InContextImitator(**common, arch="transformer", **small),
      "in_context/linear_transformer": InContextImitator(**common,
                                                         arch="linear_transformer", **small),
      "system_id": SystemIdImitator(**common, family=fam, mode="both", batch=B,
                                    refine_every=2),
  }


SLOW = {"in_context/transformer", "in_context/linear_transformer", "gradient/update_net"}
CASES = [pytest.param(k, task, marks=pytest.mark.slow)
         if k in SLOW or k == "system_id" else (k, task)
         for k in _imitators("regression", 1) for task in ("regression", "classification")]


@pytest.mark.parametrize("name,task", CASES)
def test_unseen_steps_never_read_the_behaviour(name, task):
  out = 3 if task == "classification" else 1
  im = _imitators(task, out)[name]
  L, cut = 12, 5
  stream = _stream(task, L)
  k1, k2 = jax.random.split(jax.random.key(7))
  if task == "classification":
    a = jax.nn.softmax(2 * jax.random.normal(k1, (L, B, out)))
    other = jax.nn.softmax(jax.random.normal(k2, (L, B, out)))
  else:
    a, other = jax.random.normal(k1, (L, B, out)), 5 * jax.random.normal(k2, (L, B, out))
  seen = jnp.arange(L) < cut
  meta = im.init_meta(jax.random.key(0))
  state = im.init(meta, jax.random.key(1))
  run = jax.jit(lambda a, seen: im.unroll(meta, state, stream.x, stream.y, a, fresh=True,
                                          seen=seen))
  _, forced = run(a, jnp.ones(L, bool))
  _, alone = run(a, seen)
  _, poisoned = run(jnp.where(seen[:, None, None], a, jnp.nan), seen)
  _, replaced = run(jnp.where(seen[:, None, None], a, other), seen)
  assert np.all(np.isfinite(alone))
  np.testing.assert_array_equal(poisoned, alone)
  np.testing.assert_array_equal(replaced, alone)
  np.testing.assert_allclose(alone[:cut + 1], forced[:cut + 1], atol=1e-6)
  if name != "frozen":  # frozen stopped reading a at step 3, before the cut
    assert float(jnp.abs(alone[cut + 1:] - forced[cut + 1:]).max()) > 1e-6


@pytest.mark.parametrize("tracker", ["affine", "kalman"])
def test_alone_gradient_imitator_set_to_an_sgd_teacher_reproduces_it(tracker):
  """Seen for 50 steps (tracking on at its initial rate, with a zero residual), then
  1000 steps alone with the behaviour poisoned: the teacher, step for step."""
  horizon, cut = 1050, 50
  fam, hp, key, stream, traj = _teacher("sgd_mlp", "regression", horizon,
                                        overrides={"weight_decay": 1e-3})
  im = GradientImitator(task="regression", x_shape=fam.x_shape, out_dim=1, network="mlp",
                        width=fam.width, depth=fam.depth, activation=fam.activations[0],
                        step_size="per_layer", adapt_steps=True, tracker=tracker,
                        adapt_settle_after=64)
  meta = im.init_meta(jax.random.key(0))
  meta["init"] = learner.init(fam, hp, key).params["mlp"]
  meta["log_step"] = jax.tree.map(lambda _: jnp.log(hp["learning_rate"]), meta["log_step"])
  meta["weight_decay"] = jax.tree.map(lambda _: hp["weight_decay"], meta["weight_decay"])
  # The normalized hypergradient step moves the step size by hyper_step whatever the
  # residual's size, float32 noise included: set to 0, the step size is the teacher's.
  meta["hyper_step"] = jax.tree.map(jnp.zeros_like, meta["hyper_step"])
  seen = jnp.arange(horizon) < cut
  a = jnp.where(seen[:, None, None], traj.behaviour, jnp.nan)
  state = im.init(meta, jax.random.key(1))
  _, a_hat = jax.jit(lambda: im.unroll(meta, state, stream.x, stream.y, a, seen=seen))()
  np.testing.assert_allclose(a_hat, traj.behaviour, atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # default suite budget; .ci/run runs it
def test_alone_context_only_is_frozen_and_system_id_stops_reweighting():
  L, cut = 8, 4
  stream = _stream("regression", L)
  a = jax.random.normal(jax.random.key(2), (L, B, 1))
  ims = _imitators("regression", 1)
  for name in ("context_only", "system_id"):
    im = ims[name]
    meta = im.init_meta(jax.random.key(0))
    run = jax.jit(lambda s, x, y, a, seen: im.unroll(meta, s, x, y, a, seen=seen))
    at_cut, _ = run(im.init(meta, jax.random.key(1)), stream.x[:cut], stream.y[:cut],
                    a[:cut], jnp.ones(cut, bool))
    after, _ = run(at_cut, stream.x[cut:], stream.y[cut:], a[cut:], jnp.zeros(L - cut, bool))
    if name == "context_only":
      np.testing.assert_array_equal(after["params"]["dense_0"]["w"],
                                    at_cut["params"]["dense_0"]["w"])
    else:
      np.testing.assert_array_equal(im._all(after["log_w"]), im._all(at_cut["log_w"]))
      np.testing.assert_array_equal(after["scale"], at_cut["scale"])
      moved = jax.tree.map(lambda u, v: float(jnp.abs(u - v).max()),
                           {g: s.params for g, s in after["learners"].items()},
                           {g: s.params for g, s in at_cut["learners"].items()})
      assert max(jax.tree.leaves(moved)) > 0  # the particles keep learning from y


@pytest.mark.slow  # default suite budget; .ci/run runs it
def test_objective_unroll_cut_per_teacher():
  """`observe` [P]: teacher p is seen for its first observe[p] steps, chunk by chunk."""
  im = _imitators("regression", 1)["gradient/kalman"]
  meta = im.init_meta(jax.random.key(0))
  L, P = 12, 3
  xs = jnp.stack([_stream("regression", L, seed=s).x for s in range(P)])
  ys = jnp.stack([_stream("regression", L, seed=s).y for s in range(P)])
  a = jax.random.normal(jax.random.key(3), (P, L, B, 1))
  keys = objective.evaluation_keys(P)
  cuts = jnp.asarray([0, 5, 12])
  chunked = jax.jit(lambda: objective.unroll(im, meta, keys, xs, ys, a, chunk=4,
                                             observe=cuts)[0])()
  one = jax.jit(lambda k, x, y, a, seen: im.unroll(meta, im.init(meta, k), x, y, a,
                                                   seen=seen)[1])
  for p in range(P):
    want = one(keys[p], xs[p], ys[p], a[p], jnp.arange(L) < cuts[p])
    np.testing.assert_allclose(chunked[p], want, atol=1e-6)


@pytest.mark.slow  # default suite budget; .ci/run runs it
def test_free_running_loss_scores_every_step_with_the_cut_per_teacher():
  """The imitation loss of episodes cut at [P] steps (truncated in windows) is the mean
  over teachers and steps of the errors of each teacher's own unroll, seen or not."""
  im = _imitators("regression", 1)["gradient/kalman"]
  meta = im.init_meta(jax.random.key(0))
  L, P = 12, 3
  xs = jnp.stack([_stream("regression", L, seed=s).x for s in range(P)])
  ys = jnp.stack([_stream("regression", L, seed=s).y for s in range(P)])
  a = jax.random.normal(jax.random.key(3), (P, L, B, 1))
  keys = jax.random.split(jax.random.key(4), P)
  cuts = jnp.asarray([2, 7, 12])
  loss, grads = jax.jit(lambda m: objective.loss_and_grads(im, m, keys, xs, ys, a, 4, cuts))(
      meta)
  want = []
  for p in range(P):
    _, a_hat = im.unroll(meta, im.init(meta, keys[p]), xs[p], ys[p], a[p],
                         seen=jnp.arange(L) < cuts[p])
    want.append(np.mean(np.sum((np.asarray(a[p]) - np.asarray(a_hat)) ** 2, -1)))
  np.testing.assert_allclose(loss, np.mean(want), rtol=1e-5)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_episode_cuts_draw_a_fraction_of_free_running_teachers():
  from ml_collections import config_dict
  from imitator.training import outer_step
  fr = config_dict.ConfigDict(dict(fraction=0.25, observe_min=5, observe_max=9, horizon=0))
  cuts = np.asarray(outer_step.episode_cuts(fr, jax.random.key(0), 4000, 64))
  free = cuts < 64
  assert abs(free.mean() - 0.25) < 0.03
  assert set(np.unique(cuts[free])) == set(range(5, 10))
  fr.fraction = 0.0
  assert outer_step.episode_cuts(fr, jax.random.key(0), 8, 64) is None
