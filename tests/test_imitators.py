"""Imitators against teachers and against closed forms."""

import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from imitator.kinds.gradient import GradientImitator
from imitator.kinds.in_context import InContextImitator, LinearSelfAttention
from imitator.kinds.system_id import SystemIdImitator
from imitator.rollout import objective
from learners import family as family_lib
from learners import learner, rollout, streams

HORIZON = 1000


def _teacher(name, task="regression", overrides=None, width=8, dim=5, n_classes=3):
  kind = "linear_" + task
  spec = streams.StreamSpec(kind=kind, horizon=HORIZON, dim=dim, batch=2,
                            task_switch_every=250, n_classes=n_classes)
  out = n_classes if task == "classification" else 1
  fam = family_lib.from_config({"name": name, "width": width}, task, (dim,), out)
  hp = fam.member(fam.sample(jax.random.key(3), 1, fixed=fam.codes(overrides or {})), 0)
  stream = streams.synthetic_stream(spec, jax.random.key(4))
  key = jax.random.key(5)
  traj = jax.jit(rollout.rollout, static_argnums=0)(fam, hp, key, stream)
  return fam, hp, key, stream, traj


@pytest.mark.parametrize("name,task,update_net", [("sgd_mlp", "regression", False),
                                                  ("sgd_linear", "regression", False),
                                                  pytest.param("sgd_mlp", "classification",
                                                               False, marks=pytest.mark.slow),
                                                  pytest.param("sgd_mlp", "regression", True,
                                                               marks=pytest.mark.slow)])
def test_gradient_imitator_is_an_sgd_teacher_when_set_to_it(name, task, update_net):
  fam, hp, key, stream, traj = _teacher(name, task,
                                        overrides={"weight_decay": 1e-3})
  kind = fam.networks[0]
  im = GradientImitator(task=task, x_shape=fam.x_shape, out_dim=fam.out_dim, network=kind,
                        width=fam.width, depth=fam.depth, activation=fam.activations[0],
                        step_size="per_layer", adapt_steps=True, update_net=update_net)
  meta = im.init_meta(jax.random.key(0))
  init = learner.init(fam, hp, key).params[kind]
  lr, wd = float(hp["learning_rate"]), float(hp["weight_decay"])
  meta["init"] = init
  meta["log_step"] = jax.tree.map(lambda _: jnp.log(lr), meta["log_step"])
  meta["track_logit"] = jnp.asarray(-jnp.inf)  # no tracking: the imitator runs alone
  meta["hyper_step"] = jax.tree.map(jnp.zeros_like, meta["hyper_step"])
  meta["weight_decay"] = jax.tree.map(lambda _: jnp.float32(wd), meta["weight_decay"])
  meta["log_temperature"] = jnp.log(hp["temperature"])
  state = im.init(meta, jax.random.key(1))
  _, a_hat = jax.jit(im.unroll)(meta, state, stream.x, stream.y, traj.behaviour)
  assert a_hat.shape == traj.behaviour.shape == (HORIZON, 2, fam.out_dim)
  np.testing.assert_allclose(a_hat, traj.behaviour, atol=1e-5, rtol=1e-5)
  # The teacher really learned over the run (not a trivially constant behaviour).
  assert float(jnp.abs(traj.behaviour[-1] - traj.behaviour[0]).max()) > 0.1
  if update_net:  # the learned update is real: moving its output layer changes the run
    meta["update_net"]["out"]["bias"] = meta["update_net"]["out"]["bias"] + 1e-3
    _, moved = jax.jit(im.unroll)(meta, state, stream.x, stream.y, traj.behaviour)
    assert float(jnp.abs(moved - a_hat).max()) > 1e-4


def test_settling_step_is_the_hypergradient_step_scaled_by_after_over_t():
  """With adapt_settle_after = K, the step from a state at step t is the unsettled
  imitator's step with hyper_step x min(1, K / (t + 1)), from the same state."""
  fam, hp, key, stream, traj = _teacher("sgd_mlp")
  kind = fam.networks[0]
  make = lambda after: GradientImitator(
      task="regression", x_shape=fam.x_shape, out_dim=1, network=kind, width=fam.width,
      depth=fam.depth, activation=fam.activations[0], adapt_steps=True,
      adapt_settle_after=after)
  settled, plain = make(3), make(0)
  meta = settled.init_meta(jax.random.key(0))
  meta["hyper_step"] = jax.tree.map(lambda b: b + 0.3, meta["hyper_step"])
  state = settled.init(meta, jax.random.key(1))
  moved = []
  for t in range(8):
    x, y, a = stream.x[t], stream.y[t], traj.behaviour[t]
    new = settled.observe(meta, state, x, y, a)
    scaled = dict(meta, hyper_step=jax.tree.map(lambda b: b * min(1.0, 3 / (t + 1)),
                                                meta["hyper_step"]))
    want = plain.observe(scaled, state, x, y, a)
    chex.assert_trees_all_close(new, want, rtol=1e-6, atol=1e-7)
    moved.append(float(jnp.abs(new["log_step_offset"]["dense_0"]["w"]
                               - state["log_step_offset"]["dense_0"]["w"])))
    state = new
  assert min(moved[1:]) > 0  # the offset really moves at every step


def test_system_id_given_true_hparams_and_init_is_the_teacher():
  fam, hp, key, stream, traj = _teacher(
      "sgd_mlp", overrides={"weight_decay": 3e-4, "learning_rate": 0.05})
  im = SystemIdImitator(task=fam.task, x_shape=fam.x_shape, out_dim=fam.out_dim,
                        family=fam, mode="refine", batch=2)
  assert im.particles == 1
  meta = im.meta_for_teacher(hp, learner.init(fam, hp, key).params)
  state = im.init(meta, jax.random.key(9))
  _, a_hat = jax.jit(im.unroll)(meta, state, stream.x, stream.y, traj.behaviour)
  np.testing.assert_allclose(a_hat, traj.behaviour, atol=1e-5, rtol=1e-5)
  est = im.estimate(meta, state)
  np.testing.assert_allclose(est["learning_rate"], 0.05, rtol=1e-5)


def test_linear_self_attention_with_von_oswald_weights_is_one_gd_step():
  """von Oswald et al. (2023): W_K = W_Q project on x, W_V reads y, W_O = eta/N."""
  dx, n, eta = 4, 16, 0.7
  d = dx + 1
  rng = np.random.default_rng(0)
  xs = rng.normal(size=(n, dx)).astype(np.float32)
  ys = rng.normal(size=(n,)).astype(np.float32)
  xq = rng.normal(size=(dx,)).astype(np.float32)
  layer = LinearSelfAttention(d, 1, nnx.Rngs(0), dh=d)
  proj_x = np.diag([1.0] * dx + [0.0]).astype(np.float32)
  layer.wq[...] = jnp.asarray(proj_x)[:, None, :]
  layer.wk[...] = jnp.asarray(proj_x)[:, None, :]
  layer.wv[...] = jnp.asarray(np.diag([0.0] * dx + [1.0]), jnp.float32)[:, None, :]
  layer.wo[...] = jnp.asarray(eta / n * np.eye(d), jnp.float32)[None]
  layer.decay_logit[...] = jnp.full((1,), 100.0)  # gamma = 1: no forgetting
  tokens = jnp.concatenate([xs, ys[:, None]], -1)
  k, v = layer.keys_values(tokens)
  query = jnp.concatenate([xq, jnp.zeros(1)])[None]
  out = layer(query, jnp.asarray([n]), k, v, jnp.arange(n),
              jnp.zeros((1, d, d)), jnp.asarray(-1))
  # One GD step from w = 0 on L(w) = 1/(2N) sum (w.x_i - y_i)^2, then predict at xq.
  w1 = -eta * (-(xs * ys[:, None]).mean(0))
  np.testing.assert_allclose(out[0, -1], w1 @ xq, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out[0, :dx], 0.0, atol=1e-7)


@pytest.mark.parametrize("arch", [pytest.param("transformer", marks=pytest.mark.slow),
                                  pytest.param("linear_transformer", marks=pytest.mark.slow),
                                  "recurrent"])
@pytest.mark.parametrize("task,out", [
    pytest.param("regression", 1, marks=pytest.mark.slow), ("classification", 3)])
def test_in_context_parallel_unroll_equals_stepwise(arch, task, out):
  B, L = 2, 9
  im = InContextImitator(task=task, x_shape=(5,), out_dim=out, arch=arch, d_model=16,
                         n_heads=2, n_layers=2, context=4, batch=B, hidden=8, d_key=8,
                         d_value=4)
  meta = im.init_meta(jax.random.key(0))
  k = jax.random.split(jax.random.key(1), 3)
  xs = jax.random.normal(k[0], (L, B, 5))
  if task == "regression":
    ys, as_ = jax.random.normal(k[1], (L, B, 1)), jax.random.normal(k[2], (L, B, 1))
  else:
    ys = jax.random.randint(k[1], (L, B), 0, out)
    as_ = jax.nn.softmax(jax.random.normal(k[2], (L, B, out)))
  state = im.init(meta, jax.random.key(2))
  _, parallel = im.unroll(meta, state, xs, ys, as_, fresh=True)
  s, stepwise = state, []
  for t in range(L):  # context=4 < L: the sliding window is exercised
    stepwise.append(im.predict(meta, s, xs[t]))
    s = im.observe(meta, s, xs[t], ys[t], as_[t])
  np.testing.assert_allclose(parallel, jnp.stack(stepwise), atol=2e-6)
  s1, a1 = im.unroll(meta, state, xs[:4], ys[:4], as_[:4])
  _, a2 = im.unroll(meta, s1, xs[4:], ys[4:], as_[4:])
  np.testing.assert_allclose(jnp.concatenate([a1, a2]), parallel, atol=2e-6)
  # A prediction never depends on the label or behaviour of its own step.
  ys2, as2 = ys.at[3].set(ys[3] + 1 if task == "regression" else (ys[3] + 1) % out), \
      as_.at[3].set(as_[3][..., ::-1])
  _, perturbed = im.unroll(meta, state, xs, ys2, as2, fresh=True)
  np.testing.assert_allclose(perturbed[:4], parallel[:4], atol=1e-6)
  assert float(jnp.abs(perturbed[4:] - parallel[4:]).max()) > 1e-6


def test_imitator_interfaces_take_only_x_y_a():
  for cls in (GradientImitator, InContextImitator, SystemIdImitator):
    assert list(inspect.signature(cls.predict).parameters) == ["self", "meta", "state", "x"]
    assert list(inspect.signature(cls.observe).parameters) == [
        "self", "meta", "state", "x", "y", "a", "seen"]
  assert list(inspect.signature(objective.loss_and_grads).parameters)[:6] == [
      "imitator", "meta", "keys", "xs", "ys", "as_"]


@pytest.mark.parametrize("kind", ["gradient", "in_context", "system_id"])
def test_every_config_field_of_a_kind_reaches_its_imitator(kind):
  from imitator.rollout import episodes
  from imitator.kinds import registry
  from launch.configs import default
  config = default.get_config()
  config.imitator.kind = kind
  block = config.imitator[kind]
  # A value unlike every default, for each field the setting does not decide.
  derived = {"gradient": ("network", "width", "depth", "activation",
                          "adapt_settle_after"),
             "in_context": ("context",), "system_id": ()}[kind]
  odd = {}
  for name, value in block.items():
    if name in derived:
      continue
    if isinstance(value, bool):
      odd[name] = not value
    elif isinstance(value, int):
      odd[name] = 2 * value
    elif isinstance(value, float):
      odd[name] = value / 2
  block.update(odd)
  built = registry.build(config, episodes.setting_from_config(config)[0])["imitator"]
  assert odd and {name: getattr(built, name) for name in odd} == odd
  config.baselines.freeze_after, config.baselines.init_track = 7, 0.25
  built = registry.build(config, episodes.setting_from_config(config)[0])
  assert (built["frozen"].freeze_after, built["context_only"].freeze_after) == (7, 0)
  assert built["frozen"].init_track == built["context_only"].init_track == 0.25
  block["no_such_field"] = 1
  with pytest.raises(ValueError, match="no_such_field"):
    registry.build(config, episodes.setting_from_config(config)[0])
