"""Streaming co-rollout against the materialized rollout, and resumable streams.

The materialized side is written independently of `co_rollout`: `episodes.sample` rolls
the teachers out over the whole horizon, `objective.unroll` runs each imitator over the
stored arrays and `references.behaviours` the reference learners; its per-step errors,
averaged over blocks here, must equal the co-rollout's block means.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imitator import metrics
from imitator.rollout import co_rollout, episodes, objective, references
from imitator.training import experiment
from launch.configs import continual_digits, default, in_context, system_id
from learners import npz, streams


# ------------------------------------------------------------------ resumable streams

STREAM_SPECS = {
    "linear switch": streams.StreamSpec(kind="linear_regression", horizon=24, batch=2,
                                        dim=3, task_switch_every=5),
    "mlp classification drift": streams.StreamSpec(
        kind="mlp_classification", horizon=24, batch=3, dim=4, drift=0.2,
        label_noise=0.3, labeller_width=5),
    "ab_then_a drift": streams.StreamSpec(kind="mlp_regression", horizon=24, dim=3,
                                          schedule="ab_then_a", drift=0.1,
                                          labeller_width=4),
}
PROTOCOLS = ("permuted", "split", "rotated", "label_permuted")


def _through_host(a):
  if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(np.asarray(jax.random.key_data(a)))
  return np.asarray(a)


def _runs(spec, key, data, lengths):
  """The stream generated in consecutive runs of `lengths` steps, each run jitted
  separately from a cursor that crossed the jit boundary (a restart)."""
  cursor = streams.start(spec, key, data)
  parts, first = [], 0
  for n in lengths:
    cursor = jax.tree.map(_through_host, cursor)  # as a resumed run would restore it
    cursor, part = jax.jit(streams.advance, static_argnums=(0, 4))(spec, cursor, data,
                                                                  first, n)
    parts.append(part)
    first += n
  return jax.tree.map(lambda *a: np.concatenate(a), *parts)


def _assert_same_stream(a, b):
  for field, u, v in zip(streams.Stream._fields, a, b):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v), err_msg=field)


# One case of each in the default suite (its budget); .ci/run runs them all.
@pytest.mark.parametrize("name", [n if n == "linear switch" else pytest.param(
    n, marks=pytest.mark.slow) for n in sorted(STREAM_SPECS)])
def test_synthetic_stream_in_runs_equals_the_whole(name):
  spec = STREAM_SPECS[name]
  key = jax.random.key(4)
  _assert_same_stream(_runs(spec, key, None, [7, 11, 6]),
                      streams.make_stream(spec, key))


def test_step_keys_are_those_of_splitting_the_key_over_the_horizon():
  """Step t draws from fold_in(step_key, t): with JAX's default partitionable threefry
  that is split(step_key, T)[t], so streams are what they were before they could be
  generated in runs (and every published figure still reproduces)."""
  key = jax.random.key(11)
  split = jax.random.key_data(jax.random.split(key, 50))
  folded = jax.random.key_data(jax.vmap(lambda t: jax.random.fold_in(key, t))(
      np.arange(50)))
  np.testing.assert_array_equal(split, folded)


@pytest.mark.parametrize("protocol", [p if p == "permuted" else pytest.param(
    p, marks=pytest.mark.slow) for p in PROTOCOLS])
def test_dataset_stream_in_runs_equals_the_whole(protocol):
  spec = streams.StreamSpec(kind="dataset", dataset="digits", protocol=protocol,
                            horizon=20, batch=3, task_switch_every=6, label_noise=0.2)
  data = streams.load_data(spec)
  key = jax.random.key(2)
  _assert_same_stream(_runs(spec, key, data, [5, 9, 6]),
                      jax.jit(streams.make_stream, static_argnums=0)(spec, key, data))


def test_npz_stream_in_runs_equals_the_whole(tmp_path):
  path = str(tmp_path / "s.npz")
  npz.save_stream(path, streams.make_stream(STREAM_SPECS["linear switch"],
                                            jax.random.key(1)))
  spec = streams.StreamSpec(kind="npz", npz_path=path, horizon=24, batch=2)
  data = streams.load_data(spec)
  _assert_same_stream(_runs(spec, None, data, [8, 8, 8]),
                      streams.make_stream(spec, None, data))


# ------------------------------------------------------------------ co-rollout


def _materialized_blocks(exp, imitators, metas, key, n, horizon, chunk, block, im_keys,
                         observe=None):
  """Per-teacher block means of every figure the co-rollout keeps, computed from the
  materialized rollout (the imitators alone after `observe` steps when set)."""
  ep = episodes.sample(exp.setting.with_horizon(horizon), exp.data, key, n, chance=True)
  outputs = {name: objective.unroll(im, metas[name], im_keys, ep.x, ep.y, ep.behaviour,
                                    chunk, observe=observe)[0]
             for name, im in imitators.items()}
  outputs.update(references.behaviours(exp.setting.family, ep.hparams, ep.init_keys,
                                       ep.x, ep.y))
  task = exp.setting.task
  blocks = lambda v: np.asarray(v, np.float64).reshape(n, -1, block).mean(-1)
  err = {k: blocks(metrics.step_error(task, ep.behaviour, o)) for k, o in outputs.items()}
  loss = {k: blocks(metrics.task_loss(task, o, ep.y)) for k, o in outputs.items()}
  agree = ({k: blocks(metrics.argmax_agreement(ep.behaviour, o)) for k, o in outputs.items()}
           if task == "classification" else {})
  peak = {k: np.abs(np.asarray(o)).reshape(n, -1).max(1) for k, o in outputs.items()}
  peak["teacher"] = np.abs(np.asarray(ep.behaviour)).reshape(n, -1).max(1)
  peak["chance"] = np.abs(np.asarray(ep.chance)).reshape(n, -1).max(1)
  return co_rollout.Sums(err, blocks(metrics.step_error(task, ep.behaviour, ep.chance)),
                         blocks(ep.loss), loss, agree, peak)


def _imitators(exp, every):
  """The trained kind alone, or with the baselines too."""
  return exp.imitators if every else {"imitator": exp.imitators["imitator"]}


def _check_co_rollout(config, n=4, multiple=3, chunk=8, block=4, every=True):
  exp = experiment.Experiment(config)
  imitators = _imitators(exp, every)
  metas = exp.init_state().meta
  horizon = multiple * exp.setting.t
  key = jax.random.key(5)
  im_keys = jax.random.split(jax.random.key(0), n)
  # Two chunks per call: the state crosses calls as well as chunks. Teacher-forced and
  # alone after a cut inside a chunk, in one co-rollout.
  cut = exp.setting.t + block
  sums = co_rollout.co_rollout(exp.setting, exp.data, imitators, metas, key, n, horizon,
                               chunk, block, im_keys, chunks_per_call=2, observes=(None, cut))
  assert list(sums) == [None, cut]
  for observe, got in sums.items():
    want = _materialized_blocks(exp, imitators, metas, key, n, horizon, chunk, block,
                                im_keys, observe)
    assert got.err.keys() == want.err.keys() == set(imitators) | set(references.NAMES)
    assert got.agree.keys() == want.agree.keys()
    assert got.err["imitator"].shape == (n, horizon // block)
    for field in co_rollout.Sums._fields:
      g, w = getattr(got, field), getattr(want, field)
      for k in (g if isinstance(g, dict) else [None]):
        gk, wk = (g[k], w[k]) if k is not None else (g, w)
        np.testing.assert_allclose(np.asarray(gk), wk, rtol=2e-4, atol=2e-5,
                                   err_msg=f"{field} {k}, cut {observe}")


def _small(family):
  config = default.get_config("smoke")
  config.family.name = family
  config.stream.horizon = 16
  config.stream.task_switch_every = 8
  return config


@pytest.mark.slow  # default suite budget; .ci/run runs it
def test_co_rollout_equals_the_materialized_rollout_gradient():
  _check_co_rollout(_small("sgd_linear"), every=False)


@pytest.mark.slow
def test_co_rollout_equals_the_materialized_rollout_gradient_main_family():
  _check_co_rollout(_small("small_mixed"))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["transformer", "linear_transformer", "recurrent"])
def test_co_rollout_equals_the_materialized_rollout_in_context(arch):
  config = in_context.get_config(f"{arch},smoke")
  config.stream.horizon = 16
  config.stream.task_switch_every = 8
  _check_co_rollout(config)


@pytest.mark.slow
def test_co_rollout_equals_the_materialized_rollout_system_id():
  config = system_id.get_config("smoke")
  config.stream.horizon = 16
  config.stream.task_switch_every = 8
  _check_co_rollout(config)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["permuted", "split"])
def test_co_rollout_equals_the_materialized_rollout_dataset_stream(protocol):
  config = continual_digits.get_config(f"{protocol},smoke")
  config.stream.horizon = 16
  config.stream.batch = 2
  config.stream.task_switch_every = 8
  _check_co_rollout(config)


@pytest.mark.slow
def test_co_rollout_equals_the_materialized_rollout_npz_stream(tmp_path):
  path = str(tmp_path / "s.npz")
  npz.save_stream(path, streams.make_stream(
      streams.StreamSpec(kind="linear_regression", dim=8, horizon=64, task_switch_every=8),
      jax.random.key(3)))
  config = default.get_config("smoke")
  config.stream.kind = "npz"
  config.stream.npz_path = path
  config.stream.horizon = 16
  config.stream.task_switch_every = 0
  _check_co_rollout(config)


# ------------------------------------------------------------------ streamed training


def _check_streamed_training(config, n=4, window=8, every=True, cuts=None):
  """Streamed == materialized truncated training; `cuts` [n]: free-running episodes."""
  exp = experiment.Experiment(config)
  imitators = _imitators(exp, every)
  metas = exp.init_state().meta
  key, keys = jax.random.key(9), jax.random.split(jax.random.key(1), n)
  got = jax.jit(lambda m, k, ik: objective.streamed_loss_and_grads(
      imitators, m, exp.setting, exp.data, k, ik, n, window, observe=cuts))(metas, key, keys)
  ep = episodes.sample(exp.setting, exp.data, key, n)
  for name, im in imitators.items():
    loss, grads = objective.loss_and_grads(im, metas[name], keys, ep.x, ep.y,
                                           ep.behaviour, window, cuts)
    np.testing.assert_allclose(got[name][0], loss, rtol=1e-5, err_msg=name)
    chex.assert_trees_all_close(got[name][1], grads, rtol=2e-3, atol=1e-6)


@pytest.mark.slow  # 28 s: the default suite's budget
def test_streamed_training_equals_truncated_training_on_materialized_episodes():
  _check_streamed_training(_small("sgd_linear"), every=False)


def _in_context_config():
  config = in_context.get_config("recurrent,smoke")
  config.stream.horizon = 24
  return config


def _digits_config():
  config = continual_digits.get_config("smoke")
  config.stream.horizon = 16
  config.stream.batch = 2
  return config


# One case a test (not one test for all): XLA's CPU compiler has aborted a worker twice in
# a row mid-way through these compiles, and a crash then reruns one case, not five.
@pytest.mark.slow
@pytest.mark.parametrize("case", ["main", "main_alone", "in_context", "in_context_alone",
                                  "dataset"])
def test_streamed_training_equals_truncated_training_main_in_context_and_dataset(case):
  config = {"main": lambda: _small("small_mixed"), "in_context": _in_context_config,
            "dataset": _digits_config}[case.removesuffix("_alone")]()
  cuts = {"main_alone": [3, 9, 16, 100], "in_context_alone": [1, 8, 17, 24]}.get(case)
  _check_streamed_training(config, cuts=None if cuts is None else jnp.asarray(cuts))
  jax.clear_caches()  # the compiled executables of this case are not needed again
