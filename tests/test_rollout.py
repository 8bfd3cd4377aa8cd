"""Rollout: vmap over a mixed population, scan vs a Python loop, gradients vs finite
differences, probes, remat and jit.

Every comparison is against a second computation: members one by one (so lax.switch
really switches on an unbatched code), a Python loop over `learner.step`, central
finite differences in float64, or the behaviour on a stream that shows the probes.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from learners import family as family_lib
from learners import learner, networks, optimizers, rollout, streams
from learners.family import Family
from learners.streams import Stream, StreamSpec

HORIZON = 12
DIM = 6


def mixed_family(task):
  out_dim = 3 if task == "classification" else 2
  return family_lib.from_config({"name": "mixed", "width": 8, "replay_size": 8}, task,
                                (DIM,), out_dim)


def covering_population(family, key, n_pool=64):
  """Members sampled from the family, picked so that every (optimizer, network) pair of
  the family appears, with the regularizers and inner steps as sampled."""
  pool = family.sample(key, n_pool)
  pool_np = jax.tree.map(np.asarray, pool)
  chosen = []
  for opt in family.optimizers:
    for net in family.networks:
      hit = np.flatnonzero((pool_np["optimizer"] == optimizers.OPTIMIZERS.index(opt)) &
                           (pool_np["network"] == networks.NETWORKS.index(net)))
      assert hit.size, (opt, net)
      chosen.append(hit[0])
  hp = {f: v[np.asarray(chosen)] for f, v in pool.items()}
  family.validate(hp)
  return hp


def stream_spec(task, batch=2):
  kind = "mlp_classification" if task == "classification" else "mlp_regression"
  return StreamSpec(kind=kind, horizon=HORIZON, batch=batch, dim=DIM, n_classes=3,
                    out_dim=2, labeller_width=8, task_switch_every=5)


@functools.partial(jax.jit, static_argnums=0)
def single(family, hparams, key, stream):
  return rollout.rollout(family, hparams, key, stream, return_state=True)


STEP = jax.jit(learner.step, static_argnums=0)


@functools.partial(jax.jit, static_argnums=(0, 4))
def population(family, hparams, keys, stream, shared):
  return rollout.population_rollout(family, hparams, keys, stream, shared_stream=shared,
                                    return_state=True)


def assert_trees_close(a, b, rtol, atol, what=""):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb, what
  for i, (x, y) in enumerate(zip(la, lb)):
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                               rtol=rtol, atol=atol, err_msg=f"{what} leaf {i}")


@pytest.mark.slow
@pytest.mark.parametrize("task,shared", [("classification", False)])
def test_mixed_population_equals_members_one_by_one(task, shared):
  """Each case compiles the mixed family twice (vmapped and single), ~10 s each, so the
  test runs one: classification (softmax head, integer labels in the replay buffer) with
  a stream per member. Add ("regression", True) to check a shared stream as well."""
  family = mixed_family(task)
  hp = covering_population(family, jax.random.PRNGKey(0))
  n = hp["optimizer"].shape[0]
  regs_on = (np.asarray(hp["l2_strength"]) > 0) | (np.asarray(hp["ewc_strength"]) > 0)
  assert regs_on.any() and (np.asarray(hp["replay_ratio"]) > 0).any()
  assert len(set(np.asarray(hp["inner_steps"]).tolist())) == 2
  keys = jax.random.split(jax.random.PRNGKey(1), n)
  spec = stream_spec(task)
  if shared:
    stream = streams.synthetic_stream(spec, jax.random.PRNGKey(3))
  else:
    stream_keys = jax.random.split(jax.random.PRNGKey(2), n)
    stream = jax.vmap(lambda k: streams.synthetic_stream(spec, k))(stream_keys)

  pop, pop_state = population(family, hp, keys, stream, shared)
  assert pop.behaviour.shape[:2] == (n, HORIZON)
  for i in range(n):
    member = family.member(hp, i)
    assert member["optimizer"].shape == ()  # unbatched code: lax.switch really switches
    own = stream if shared else jax.tree.map(lambda a: a[i], stream)
    traj, state = single(family, member, keys[i], own)
    what = f"member {i}: {family.describe(member)}"
    np.testing.assert_allclose(pop.behaviour[i], traj.behaviour, rtol=1e-5, atol=1e-5,
                               err_msg=what)
    np.testing.assert_allclose(pop.loss[i], traj.loss, rtol=1e-5, atol=1e-5, err_msg=what)
    assert_trees_close(jax.tree.map(lambda a: a[i], pop_state), state, 1e-5, 1e-5, what)
  # the members really are different learners
  spread = np.asarray(pop.loss[:, -4:]).std(0).max()
  assert spread > 1e-2, spread


def test_scan_equals_python_loop_over_step():
  family = continual_family("classification")
  member = continual_member(family)  # every regularizer on, two inner steps
  stream = streams.synthetic_stream(stream_spec("classification"), jax.random.PRNGKey(5))
  key = jax.random.PRNGKey(6)
  traj, final = single(family, member, key, stream)

  state = learner.init(family, member, key)
  behaviours, losses = [], []
  for t in range(HORIZON):
    state, (b, l) = STEP(family, member, state, stream.x[t], stream.y[t])
    behaviours.append(b)
    losses.append(l)
  np.testing.assert_allclose(traj.behaviour, np.stack(behaviours), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(traj.loss, np.stack(losses), rtol=1e-6, atol=1e-6)
  assert_trees_close(final, state, 1e-6, 1e-6, "final state")
  assert int(final.step) == HORIZON
  assert int(final.replay.count) == HORIZON * stream.batch


# ----------------------------------------------------------------------- gradients


def x64_hparams(**values):
  hp = dict(network=networks.NETWORKS.index("mlp"),
            activation=networks.ACTIVATIONS.index("tanh"), optimizer=0,
            learning_rate=0.1, momentum=0.0, beta2=0.99, weight_decay=1e-3,
            l2_strength=0.0, anchor_rate=0.0, ewc_strength=0.0, ewc_decay=0.9,
            replay_ratio=0.0, shrink=0.0, perturb=0.0, inner_steps=1, temperature=1.0,
            init_scale=1.0)
  hp.update(values)
  hp = {k: v if k in family_lib.DISCRETE else float(np.float32(v)) for k, v in hp.items()}
  return {k: jnp.asarray(v, jnp.int32 if k in family_lib.DISCRETE else jnp.float64)
          for k, v in hp.items()}


GRAD_CASES = {
    # optimizer, regularizers, hyperparams, fields to differentiate (one case: each
    # x64 compile costs seconds; adam's beta2 is left out because its bias correction
    # 1 - b2^t runs in float32 -- the optimizer's hyperparams are injected as float32 --
    # too coarse for finite differences)
    "momentum_l2_ewc": ("momentum", ("l2", "ewc"),
                        dict(learning_rate=0.05, momentum=0.8, l2_strength=0.05,
                             anchor_rate=0.01, ewc_strength=0.5, ewc_decay=0.95),
                        ("learning_rate", "momentum", "l2_strength", "anchor_rate",
                         "ewc_strength", "weight_decay")),
}


def loss_sum(family, cont, disc, key, stream, remat=False):
  """Summed loss as a function of the continuous hyperparams (discrete codes apart)."""
  return rollout.rollout(family, {**cont, **disc}, key, stream, remat=remat).loss.sum()


@pytest.mark.parametrize("case", sorted(GRAD_CASES))
def test_gradient_wrt_hyperparams_matches_finite_differences(case):
  opt, regs, values, fields = GRAD_CASES[case]
  with jax.enable_x64(True):
    family = Family(name="g", task="regression", x_shape=(DIM,), out_dim=2, width=8,
                    optimizers=(opt,), regularizers=regs)
    hp = x64_hparams(optimizer=optimizers.OPTIMIZERS.index(opt), **values)
    spec = stream_spec("regression", batch=2)
    stream = jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a,
                          streams.synthetic_stream(spec, jax.random.PRNGKey(7)))
    assert stream.x.dtype == jnp.float64
    key = jax.random.PRNGKey(8)
    cont = {k: hp[k] for k in family_lib.CONTINUOUS}
    disc = {k: hp[k] for k in family_lib.DISCRETE if k in family_lib.FIELDS}
    vg = jax.jit(jax.value_and_grad(loss_sum, argnums=1), static_argnums=(0, 5))
    value, grads = vg(family, cont, disc, key, stream)
    assert value.dtype == jnp.float64
    _, grads_remat = vg(family, cont, disc, key, stream, True)  # remat: same gradient
    for field in fields:
      np.testing.assert_allclose(float(grads_remat[field]), float(grads[field]),
                                 rtol=1e-10, err_msg=field)
    for field in fields:
      # v and v +- h exactly representable in float32 (h = 2^-20): the optimizer's
      # hyperparams are injected as float32 (learners.optimizers._injected), so other
      # values would be rounded before the float64 rollout sees them.
      v = float(hp[field])
      h = 2.0**-20
      assert float(np.float32(v)) == v and float(np.float32(v + h)) == v + h
      plus = float(vg(family, {**cont, field: jnp.float64(v + h)}, disc, key, stream)[0])
      minus = float(vg(family, {**cont, field: jnp.float64(v - h)}, disc, key, stream)[0])
      fd = (plus - minus) / (2 * h)
      got = float(grads[field])
      assert abs(fd) > 1e-4, (field, fd)  # the field matters: a test with teeth
      np.testing.assert_allclose(got, fd, rtol=1e-5, err_msg=field)


# ----------------------------------------------------------------------- probes, remat, jit


def continual_family(task):
  return Family(name="c", task=task, x_shape=(DIM,), out_dim=3, width=8,
                networks=("mlp",), optimizers=("momentum",),
                regularizers=family_lib.REGULARIZERS, replay_size=8, max_inner_steps=2)


def continual_member(family):
  hp = family.sample(jax.random.PRNGKey(9), 1)
  hp = family.with_overrides(hp, dict(optimizer="momentum",
                                      learning_rate=0.05, l2_strength=0.01,
                                      ewc_strength=0.3, replay_ratio=0.3, shrink=1e-4,
                                      perturb=1e-3, inner_steps=2))
  return family.member(hp, 0)


def test_probe_outputs_are_behaviour_before_steps_0_k_2k():
  """Classification, so probes go through the softmax head like the behaviour."""
  task = "classification"
  family = continual_family(task)
  member = continual_member(family)
  n_probes, every = 2, 4  # n_probes = stream batch: reuses the compiled rollout
  spec = stream_spec(task, batch=n_probes)
  stream = streams.synthetic_stream(spec, jax.random.PRNGKey(10))
  probes = jax.random.normal(jax.random.PRNGKey(11), (n_probes, DIM))
  key = jax.random.PRNGKey(12)
  run = jax.jit(functools.partial(rollout.rollout, family, probe_every=every))
  traj = run(member, key, stream, probes=probes)
  assert traj.probe_outputs.shape == (HORIZON // every, n_probes, 3)
  if task == "classification":
    np.testing.assert_allclose(traj.probe_outputs.sum(-1), 1.0, rtol=1e-5)

  # (a) a Python loop over learner.step, reading the probes before steps 0, k, 2k
  step = STEP
  state = learner.init(family, member, key)
  expected = []
  for t in range(HORIZON):
    if t % every == 0:
      expected.append(learner.behave(family, member, state, probes))
    state, _ = step(family, member, state, stream.x[t], stream.y[t])
  np.testing.assert_allclose(traj.probe_outputs, np.stack(expected), rtol=1e-6, atol=1e-6)
  # probing does not change the trajectory
  plain, _ = single(family, member, key, stream)
  np.testing.assert_allclose(traj.behaviour, plain.behaviour, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(traj.loss, plain.loss, rtol=1e-6, atol=1e-6)

  # (b) a stream that shows the probes at steps 0, k, 2k: the probe outputs are then
  # the behaviour there (behaviour is documented as taken before learning)
  at = np.arange(HORIZON) % every == 0
  x_shown = jnp.where(at[:, None, None], probes[None], stream.x)
  shown = Stream(x_shown, stream.y, stream.task_id)
  traj_shown = run(member, key, shown, probes=probes)
  np.testing.assert_allclose(traj_shown.probe_outputs, traj_shown.behaviour[at],
                             rtol=1e-6, atol=1e-6)

  with pytest.raises(ValueError, match="probe_every=5"):
    rollout.rollout(family, member, key, stream, probes=probes, probe_every=5)


@pytest.mark.slow
def test_remat_and_jit_give_the_same_trajectory():
  family = continual_family("classification")
  member = continual_member(family)
  stream = streams.synthetic_stream(stream_spec("classification"), jax.random.PRNGKey(13))
  key = jax.random.PRNGKey(14)
  plain, _ = single(family, member, key, stream)
  remat = jax.jit(functools.partial(rollout.rollout, family, remat=True))(member, key,
                                                                        stream)
  eager = rollout.rollout(family, member, key, stream)
  for other in (remat, eager):
    np.testing.assert_allclose(other.behaviour, plain.behaviour, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(other.loss, plain.loss, rtol=1e-6, atol=1e-6)
  # the run learns: the trajectory is not constant
  assert np.abs(np.diff(np.asarray(plain.behaviour), axis=0)).max() > 1e-3

  # the gradient with remat: see test_gradient_wrt_hyperparams_matches_finite_differences
