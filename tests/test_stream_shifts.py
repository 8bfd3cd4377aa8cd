"""Stream options for evaluation shifts: synthetic streams on real-data inputs (checked
against a numpy projection of a tiny hand-made dataset and of the built `digits`), and
the forgetting schedule `ab_then_a` with its probes of task B."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from learners import config as config_lib
from learners import datasets, streams, synthetic
from learners.streams import StreamSpec


@functools.partial(jax.jit, static_argnums=0)
def generate(spec, key, data=None):
  return streams.make_stream(spec, key, data)


def gen(spec, seed=0, data=None):
  return jax.tree.map(np.asarray, generate(spec, jax.random.key(seed), data))


_probes = jax.jit(streams.forgetting_probes, static_argnums=(0, 2))


def probes(spec, seed, n, data=None):
  return jax.tree.map(np.asarray, _probes(spec, jax.random.key(seed), n, data))


def fit(x, y):
  """Least squares y ~ x A + c over rows: (predict function, rms residual)."""
  design = lambda x: np.concatenate([x, np.ones((x.shape[0], 1))], 1).astype(np.float64)
  coef, *_ = np.linalg.lstsq(design(x), y.astype(np.float64), rcond=None)
  rms = lambda x, y: float(np.sqrt(np.mean((y - design(x) @ coef)**2)))
  return (lambda x: design(x) @ coef), rms(x, y)


def flat(s, steps):
  """Examples of the given steps as rows: x [n, d], y [n, k]."""
  x = s.x[steps].reshape(-1, s.x.shape[-1])
  return x, s.y[steps].reshape(x.shape[0], -1)


def projection(in_dim, dim):
  """The documented map, by Gram-Schmidt instead of QR (same Q when diag(R) > 0)."""
  g = np.asarray(jax.random.normal(jax.random.key(0), (max(in_dim, dim),
                                                       min(in_dim, dim))), np.float64)
  q = np.zeros_like(g)
  for j in range(g.shape[1]):
    v = g[:, j] - q[:, :j] @ (q[:, :j].T @ g[:, j])
    q[:, j] = v / np.linalg.norm(v)
  return q if dim <= in_dim else np.sqrt(dim / in_dim) * q.T


def expected_rows(x, dim):
  """Projected, per-feature standardized rows [N, dim] of raw inputs x [N, ...]."""
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  z = x @ projection(x.shape[1], dim)
  return (z - z.mean(0)) / z.std(0)


def source_rows(x, rows, atol=1e-4):
  """Index in `rows` [N, d] of each input of x [..., d]; asserts every input is one."""
  x = x.reshape(-1, x.shape[-1])
  dist = np.abs(x[:, None, :] - rows[None, :, :]).max(-1)
  assert dist.min(1).max() < atol
  return dist.argmin(1)


def tiny_data(n=30, shape=(3, 2)):
  """Features of unequal scales and offsets; specs call it real_inputs='tiny' (the name
  matters only to load_data)."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n,) + shape) * np.arange(1, 7).reshape(shape) + 2.0
  return datasets.LabelledData(x=jnp.asarray(x, jnp.float32),
                               y=jnp.zeros(n, jnp.int32), n_classes=2)


# --------------------------------------------------------------------------- real inputs


@pytest.mark.parametrize("dim", [4, 9])  # fewer and more features than the data's 6
def test_real_inputs_are_projected_standardized_rows_times_input_std(dim):
  data = tiny_data()
  real = streams.project_inputs(data, dim)
  rows = expected_rows(np.asarray(data.x), dim)
  np.testing.assert_allclose(np.asarray(real.x), rows, atol=1e-5)
  spec = StreamSpec(real_inputs="tiny", dim=dim, horizon=50, batch=3, skew=1.0,
                    input_scale=2.0)
  s = gen(spec, 0, real)
  assert s.x.shape == (50, 3, dim) and s.x.dtype == np.float32
  index = source_rows(s.x / np.asarray(streams.input_std(spec)), rows)
  assert len(set(index)) > 20  # uniform draws over the 30 examples
  assert streams.signature(spec, real) == ("regression", (dim,), 1)


def test_real_inputs_are_labelled_by_the_streams_own_labeller():
  data = tiny_data(n=40)
  common = dict(dim=4, horizon=24, batch=4, noise=0.0, task_switch_every=8)
  real = gen(StreamSpec(real_inputs="tiny", **common), 3, streams.project_inputs(data, 4))
  gauss = gen(StreamSpec(**common), 3)
  np.testing.assert_array_equal(real.task_id, gauss.task_id)
  for task in range(3):
    steps = real.task_id == task
    predict, rms = fit(*flat(gauss, steps))  # same key: the same labeller
    assert rms < 1e-4
    x, y = flat(real, steps)
    np.testing.assert_allclose(predict(x), y, atol=1e-4)


def test_real_inputs_classification_is_deterministic_per_key():
  real = streams.project_inputs(tiny_data(), 5)
  spec = StreamSpec(kind="mlp_classification", real_inputs="tiny", dim=5, horizon=20,
                    batch=2, n_classes=3, label_noise=0.2)
  a, b, c = gen(spec, 1, real), gen(spec, 1, real), gen(spec, 2, real)
  assert a.y.shape == (20, 2) and a.y.dtype == np.int32
  for field in ("x", "y"):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  assert not np.array_equal(a.x, c.x)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def test_real_inputs_from_digits_built_into_data_dir(digits_dir):
  from sklearn.datasets import load_digits
  spec = StreamSpec(real_inputs="digits", data_dir=digits_dir, dim=8, horizon=30,
                    batch=4, noise=0.0)
  real = streams.load_data(spec)
  assert os.path.isdir(os.path.join(digits_dir, "imitation_digits"))
  # The builder's train split from the raw pixels; the loader's own affine scaling
  # cannot matter after a per-feature standardization.
  digits = load_digits()
  order = np.random.default_rng(0).permutation(len(digits.target))
  rows = expected_rows(digits.images[order[:1437]] / 16.0, 8)
  assert real.x.shape == (1437, 8)
  index = source_rows(np.asarray(real.x), rows)
  assert len(set(index)) == len(set(map(tuple, rows.round(6))))
  s = gen(spec, 0, real)
  assert s.x.shape == (30, 4, 8)
  source_rows(s.x, rows)
  assert streams.signature(spec, real) == ("regression", (8,), 1)
  _, rms = fit(*flat(s, slice(None)))
  assert rms < 1e-4


def test_real_inputs_errors(digits_dir):
  with pytest.raises(ValueError, match="real_inputs='nope'.*digits, mnist1d"):
    streams.load_data(StreamSpec(real_inputs="nope", data_dir=digits_dir))
  with pytest.raises(ValueError, match="only applies to synthetic kinds"):
    StreamSpec(kind="dataset", real_inputs="digits")
  with pytest.raises(ValueError, match="load_data"):
    streams.make_stream(StreamSpec(real_inputs="digits"), jax.random.key(0))
  with pytest.raises(ValueError, match="stream.dim=3"):
    streams.make_stream(StreamSpec(real_inputs="tiny", dim=3), jax.random.key(0),
                        streams.project_inputs(tiny_data(), 4))


# ------------------------------------------------------------------------ ab_then_a


@pytest.mark.parametrize("horizon", [40, 41])
def test_ab_then_a_task_ids(horizon):
  s = gen(StreamSpec(schedule="ab_then_a", dim=3, horizon=horizon, batch=4, noise=0.0))
  half = horizon // 2
  expect = [t % 2 for t in range(half)] + [0] * (horizon - half)
  np.testing.assert_array_equal(s.task_id, expect)
  assert s.task_id.dtype == np.int32


def test_ab_then_a_labellers_and_probes_of_b():
  spec = StreamSpec(schedule="ab_then_a", dim=3, horizon=40, batch=4, noise=0.0)
  s = gen(spec, 5)
  a_steps, b_steps = s.task_id == 0, s.task_id == 1
  predict_a, rms_a = fit(*flat(s, a_steps))  # A before and after B: one labeller
  predict_b, rms_b = fit(*flat(s, b_steps))
  assert rms_a < 1e-4 and rms_b < 1e-4
  x_b, y_b = flat(s, b_steps)
  assert np.sqrt(np.mean((predict_a(x_b) - y_b)**2)) > 0.1
  # A is the labeller the switch schedule starts with.
  x_switch, y_switch = flat(gen(spec.replace(schedule="switch"), 5), slice(None))
  np.testing.assert_allclose(predict_a(x_switch), y_switch, atol=1e-4)
  noisy = spec.replace(noise=0.5, skew=1.0)  # same labellers; probes stay noise-free
  x, y = probes(noisy, 5, 2000)
  assert x.shape == (2000, 3) and y.shape == (2000, 1)
  np.testing.assert_allclose(predict_b(x), y, atol=1e-4)
  np.testing.assert_allclose(x.std(0), np.asarray(streams.input_std(noisy)), rtol=0.1)
  assert not np.allclose(probes(noisy, 6, 2000)[1], y)


def test_ab_then_a_classification_probes_follow_the_documented_keys():
  spec = StreamSpec(kind="mlp_classification", schedule="ab_then_a", dim=4, horizon=16,
                    batch=8, n_classes=3)

  @jax.jit
  def label_b(x):
    init_key = jax.random.split(jax.random.key(2))[0]
    b = synthetic._labeller_init(spec, jax.random.fold_in(init_key, 1))
    return jnp.argmax(synthetic._labeller_apply(spec, b, x), -1)

  s = gen(spec, 2)
  x_b, y_b = flat(s, s.task_id == 1)
  x, y = probes(spec.replace(label_noise=0.5), 2, 200)  # same B; probes noise-free
  assert y.dtype == np.int32 and y.shape == (200,) and len(set(y)) > 1
  np.testing.assert_array_equal(np.concatenate([y_b[:, 0], y]),
                                label_b(np.concatenate([x_b, x])))


def test_ab_then_a_with_real_inputs_and_drift():
  real = streams.project_inputs(tiny_data(), 3)
  spec = StreamSpec(schedule="ab_then_a", real_inputs="tiny", dim=3, horizon=40, batch=4,
                    noise=0.0)
  s = gen(spec, 0, real)
  rows = np.asarray(real.x)
  source_rows(s.x, rows)
  predict_b, rms = fit(*flat(s, s.task_id == 1))
  assert rms < 1e-4
  x, y = probes(spec, 0, 50, real)
  source_rows(x, rows)
  np.testing.assert_allclose(predict_b(x), y, atol=1e-4)
  # Both labellers drift: neither is one linear map any more.
  drifting = gen(spec.replace(drift=0.2), 0, real)
  for task in (0, 1):
    assert fit(*flat(drifting, s.task_id == task))[1] > 0.1


def test_schedule_errors_and_config():
  with pytest.raises(ValueError, match=r"schedule='abba'.*\['switch', 'ab_then_a'\]"):
    StreamSpec(schedule="abba")
  with pytest.raises(ValueError, match="stream.task_switch_every=8"):
    StreamSpec(schedule="ab_then_a", task_switch_every=8)
  with pytest.raises(ValueError, match="synthetic kind"):
    StreamSpec(kind="dataset", schedule="ab_then_a")
  with pytest.raises(ValueError, match="horizon=3"):
    StreamSpec(schedule="ab_then_a", horizon=3)
  with pytest.raises(ValueError, match="schedule='ab_then_a'"):
    streams.forgetting_probes(StreamSpec(), jax.random.key(0), 4)
  cfg = config_lib.stream_config(schedule="ab_then_a", real_inputs="mnist1d")
  spec = StreamSpec.from_config(cfg)
  assert (spec.schedule, spec.real_inputs) == ("ab_then_a", "mnist1d")
  assert StreamSpec.from_config(config_lib.stream_config()) == StreamSpec()
