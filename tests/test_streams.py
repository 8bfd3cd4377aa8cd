"""Synthetic streams and named shifts, checked on generated data: shapes, determinism,
task switches (the labeller really changes there), drift as the documented AR(1), target
scale, spec validation, and each shift doing what its doc says."""

import copy
import functools

import jax
import numpy as np
import pytest
from ml_collections import config_dict

from learners import config as config_lib
from learners import shifts, streams
from learners.streams import StreamSpec


@functools.partial(jax.jit, static_argnums=0)
def generate(spec, key):
  return streams.make_stream(spec, key)


def gen(spec, seed=0):
  return jax.tree.map(np.asarray, generate(spec, jax.random.PRNGKey(seed)))


def fit(x, y):
  """Least squares y ~ x A + c over the rows of x [n, d], y [n, k]: (A, c, rms residual)."""
  design = np.concatenate([x, np.ones((x.shape[0], 1))], 1).astype(np.float64)
  coef, *_ = np.linalg.lstsq(design, y.astype(np.float64), rcond=None)
  resid = y - design @ coef
  return coef[:-1], coef[-1], float(np.sqrt(np.mean(resid**2)))


def flat(s, steps):
  """Examples of the given steps as rows: x [n, d], y [n, k]."""
  x = s.x[steps].reshape(-1, s.x.shape[-1])
  y = s.y[steps].reshape(x.shape[0], -1)
  return x, y


def small_spec(kind, batch):
  return StreamSpec(kind=kind, horizon=10, batch=batch, dim=5, out_dim=2, n_classes=3,
                    labeller_width=6, task_switch_every=4)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("kind", streams.SYNTHETIC_KINDS)
def test_shapes_and_dtypes(kind, batch):
  spec = small_spec(kind, batch)
  s = gen(spec)
  assert s.x.shape == (10, batch, 5) and s.x.dtype == np.float32
  assert s.task_id.shape == (10,) and s.task_id.dtype == np.int32
  np.testing.assert_array_equal(s.task_id, np.arange(10) // 4)
  if kind.endswith("classification"):
    assert spec.task == "classification"
    assert s.y.shape == (10, batch) and s.y.dtype == np.int32
    assert s.y.min() >= 0 and s.y.max() < 3
  else:
    assert spec.task == "regression"
    assert s.y.shape == (10, batch, 2) and s.y.dtype == np.float32
  assert np.all(np.isfinite(s.x)) and np.all(np.isfinite(s.y))
  stream = generate(spec, jax.random.PRNGKey(0))
  assert stream.horizon == 10 and stream.batch == batch


@pytest.mark.parametrize("kind", ["mlp_regression", "linear_classification"])
def test_deterministic_per_key(kind):
  spec = small_spec(kind, 4)  # compiled already by the shape test
  a, b, c = gen(spec, 1), gen(spec, 1), gen(spec, 2)
  for f in ("x", "y", "task_id"):
    np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
  assert not np.array_equal(a.x, c.x)
  assert not np.array_equal(a.y, c.y)


def test_task_switches_change_the_labeller_exactly_at_multiples():
  every = 6
  spec = StreamSpec(kind="linear_regression", horizon=4 * every, batch=8, dim=4,
                    out_dim=2, noise=0.0, task_switch_every=every)
  s = gen(spec, 3)
  np.testing.assert_array_equal(s.task_id, np.arange(4 * every) // every)
  maps = []
  for k in range(4):
    a, c, rms = fit(*flat(s, slice(k * every, (k + 1) * every)))
    assert rms < 1e-5, (k, rms)  # one linear labeller inside a segment
    maps.append(a)
  for k in range(3):
    assert np.abs(maps[k + 1] - maps[k]).max() > 0.1  # a new labeller after the switch
    # a window straddling the boundary is not one linear map
    _, _, rms = fit(*flat(s, slice(k * every + 3, (k + 1) * every + 3)))
    assert rms > 0.1, (k, rms)
  # the labeller is w.x / sqrt(d) with N(0, 1) weights (no bias at the start of a task)
  a, c, _ = fit(*flat(s, slice(0, every)))
  np.testing.assert_allclose(c, 0.0, atol=1e-5)
  w = a * np.sqrt(spec.dim)
  assert 0.2 < w.std() < 3.0


# One base regression stream for the drift and shift tests (one compile): noise-free,
# batch 16 > dim + 1, so every step's linear labeller can be recovered exactly.
REGRESSION = config_lib.stream_config(kind="linear_regression", horizon=128, batch=16,
                                      dim=8, noise=0.0)


def per_step_maps(s):
  """The exact linear labeller of every step (batch > dim, noise 0): W_t scaled back to
  N(0, 1) units, and b_t."""
  dim = s.x.shape[-1]
  ws, bs = [], []
  for t in range(s.x.shape[0]):
    a, c, rms = fit(s.x[t], s.y[t].reshape(s.x.shape[1], -1))
    assert rms < 1e-4, (t, rms)
    ws.append(a * np.sqrt(dim))
    bs.append(c)
  return np.stack(ws), np.stack(bs)


def test_drift_is_the_documented_ar1():
  """w <- sqrt(1 - drift^2) w + drift * eps at every step: the exact per-step labellers
  must show that coefficient, innovations of std drift, and stay N(0, 1). A large drift
  (0.5) makes the coefficient identifiable; see the drift shift test for a small one."""
  drift = 0.5
  spec = StreamSpec.from_config(REGRESSION).replace(drift=drift)
  s = gen(spec, 5)
  w, b = per_step_maps(s)
  params = np.concatenate([w.reshape(len(w), -1), b.reshape(len(b), -1)], 1)  # [T, 9]
  c = np.sqrt(1 - drift**2)
  c_hat = np.sum(params[1:] * params[:-1]) / np.sum(params[:-1] ** 2)
  assert abs(c_hat - c) < 0.05, (c_hat, c)
  innov = params[1:] - c * params[:-1]
  assert abs(innov.std() / drift - 1) < 0.1, innov.std()
  assert abs(innov.mean()) < 0.05
  assert abs(params[10:].std() - 1) < 0.15, params.std()  # stationary N(0, 1) weights
  # and with drift 0 one labeller serves the whole stream
  s0 = gen(spec.replace(drift=0.0), 5)
  assert fit(*flat(s0, slice(None)))[2] < 1e-5
  w0, _ = per_step_maps(s0)
  np.testing.assert_allclose(w0, w0[:1].repeat(len(w0), 0), atol=1e-4)


def test_regression_targets_have_unit_variance():
  spec = StreamSpec(kind="linear_regression", horizon=64, batch=64, dim=64, noise=0.0)
  variances = [gen(spec, seed).y.var() for seed in range(8)]
  assert abs(np.mean(variances) - 1.0) < 0.15, variances
  # (target noise adds its variance: see test_label_noise_on_regression_targets)


@pytest.mark.parametrize("changes,field", [
    (dict(horizon=-1), "stream.horizon"),
    (dict(horizon=0), "stream.horizon"),
    (dict(batch=2.5), "stream.batch"),
    (dict(kind="spiral"), "stream.kind"),
    (dict(label_noise=1.5), "stream.label_noise"),
    (dict(label_noise=-0.1), "stream.label_noise"),
    (dict(drift=2.0), "stream.drift"),
    (dict(noise=-1.0), "stream.noise"),
    (dict(task_switch_every=-3), "stream.task_switch_every"),
    (dict(input_scale=0.0), "stream.input_scale"),
    (dict(kind="linear_classification", n_classes=1), "stream.n_classes"),
])
def test_spec_rejects_bad_values(changes, field):
  with pytest.raises(ValueError) as e:
    StreamSpec(**changes)
  msg = str(e.value)
  value = next(iter(changes.values())) if len(changes) == 1 else changes["n_classes"]
  assert field in msg and repr(value) in msg, msg
  if field == "stream.kind":
    assert all(k in msg for k in streams.KINDS), msg


def test_spec_from_config_rejects_unknown_fields():
  with pytest.raises(ValueError, match="horizn"):
    StreamSpec.from_config({"horizn": 3})
  assert StreamSpec.from_config({"horizon": 3}).horizon == 3


# ----------------------------------------------------------------------------- shifts


def experiment(stream=REGRESSION):
  cfg = config_dict.ConfigDict()
  cfg.stream = copy.deepcopy(stream)
  cfg.family = config_lib.family_config("mixed")
  return cfg


def shifted(cfg, name, seed=0):
  out = shifts.apply(cfg, name)
  base = gen(StreamSpec.from_config(cfg.stream), seed)
  return base, gen(StreamSpec.from_config(out.stream), seed), out


@pytest.mark.parametrize("name,factor", [("covariate_scale", 2.0), ("covariate_scale:3", 3.0)])
def test_covariate_scale(name, factor):
  cfg = experiment()
  base, s, out = shifted(cfg, name)
  assert cfg.stream.input_scale == 1.0  # the original config is left alone
  ratio = s.x.std() / base.x.std()
  assert abs(ratio - factor) < 1e-4, ratio
  np.testing.assert_allclose(s.x, factor * base.x, rtol=1e-5, atol=1e-6)
  # the labeller is unchanged: a linear labeller (no bias) gives factor * y
  np.testing.assert_allclose(s.y, factor * base.y, rtol=1e-4, atol=1e-5)


def test_skewed_covariance():
  base, s, out = shifted(experiment(), "skewed_covariance")
  i = np.arange(1, 9)
  want = i**-2.0 / np.mean(i**-2.0)
  var = s.x.reshape(-1, 8).var(0)
  base_var = base.x.reshape(-1, 8).var(0)
  np.testing.assert_allclose(var, want, rtol=0.1)
  np.testing.assert_allclose(var / var[0], i**-2.0, rtol=0.1)  # proportional to i^-2
  np.testing.assert_allclose(base_var, 1.0, rtol=0.1)
  assert abs(var.sum() / base_var.sum() - 1) < 0.05  # the same total variance


def test_label_noise_flips_the_stated_fraction():
  cfg = experiment(config_lib.stream_config(kind="linear_classification", horizon=256,
                                            batch=32, n_classes=4))
  base, s, out = shifted(cfg, "label_noise")
  assert out.stream.label_noise == 0.3
  np.testing.assert_array_equal(s.x, base.x)  # same inputs (same key)
  changed = np.mean(s.y != base.y)
  # a fraction 0.3 replaced by a uniform class, which is the old one 1/4 of the time
  assert abs(changed - 0.3 * 3 / 4) < 0.02, changed


def test_label_noise_on_regression_targets():
  clean, s, out = shifted(experiment(), "label_noise")
  assert out.stream.noise == pytest.approx(0.3)
  np.testing.assert_array_equal(s.x, clean.x)
  assert abs((s.y - clean.y).std() - 0.3) < 0.02
  # a stream already noisier than the shift keeps its noise
  cfg = experiment(config_lib.stream_config(noise=0.5))
  assert shifts.apply(cfg, "label_noise").stream.noise == 0.5


def n_tasks(task_id):
  return len(np.unique(task_id))


def test_fast_switching():
  cfg = experiment(config_lib.stream_config(kind="linear_regression", horizon=256,
                                            batch=8, dim=4, noise=0.0,
                                            task_switch_every=32))
  base, s, out = shifted(cfg, "fast_switching")
  assert out.stream.task_switch_every == 8
  assert n_tasks(s.task_id) == 4 * n_tasks(base.task_id) == 32
  np.testing.assert_array_equal(s.task_id, np.arange(256) // 8)
  # the labeller really changes at the new boundaries
  for k in (0, 5, 17):
    assert fit(*flat(s, slice(8 * k, 8 * k + 8)))[2] < 1e-5
    assert fit(*flat(s, slice(8 * k + 4, 8 * k + 12)))[2] > 0.1
  # a stream that never switches gets the period horizon/4, then s times as often
  base, s, out = shifted(experiment(), "fast_switching:2")
  assert n_tasks(base.task_id) == 1
  assert n_tasks(s.task_id) == 2 * 4
  assert fit(*flat(s, slice(0, 16)))[2] < 1e-5 and fit(*flat(s, slice(8, 24)))[2] > 0.1


def test_drift_shift_moves_the_labeller():
  base, s, out = shifted(experiment(), "drift")
  assert out.stream.drift == 0.05
  w_base, _ = per_step_maps(base)
  w, _ = per_step_maps(s)
  np.testing.assert_allclose(w_base, w_base[:1].repeat(len(w_base), 0), atol=1e-4)
  c = np.sqrt(1 - 0.05**2)
  innov = w[1:] - c * w[:-1]
  assert abs(innov.std() / 0.05 - 1) < 0.2, innov.std()
  # gradually: each step moves the labeller a little, many steps move it far
  step = np.abs(w[1:] - w[:-1]).mean()
  far = np.abs(w[100:] - w[:-100]).mean()
  assert step < 0.06 and far > 5 * step, (step, far)


def test_shift_names():
  cfg = experiment()
  assert shifts.apply(cfg, "none") is cfg
  with pytest.raises(ValueError) as e:
    shifts.apply(cfg, "rotate:2")
  msg = str(e.value)
  assert "rotate" in msg and all(n in msg for n in shifts.SHIFTS) and "none" in msg, msg
  with pytest.raises(ValueError, match="abc"):
    shifts.apply(cfg, "covariate_scale:abc")
  for name, shift in shifts.SHIFTS.items():
    assert shift.doc, name
