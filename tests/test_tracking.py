"""Tracking steps (imitator/tracking.py) against closed forms: the Kalman step identifies
a fixed linear map in as many observations as it has weights, starts as the affine
projection, and never overshoots the observed outputs whatever their scale."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from imitator import tracking

D = 6  # inputs; the map has D + 1 weights with its bias


def _linear(x):
  return lambda p: x @ p["w"] + p["b"]


def _zeros():
  return {"w": jnp.zeros((D, 1)), "b": jnp.zeros((1,))}


def test_kalman_identifies_a_fixed_linear_map_in_n_observations():
  rng = np.random.default_rng(0)
  w, b = rng.normal(size=(D, 1)), rng.normal(size=(1,))
  xs = rng.normal(size=(D + 1, 1, D)).astype(np.float32)
  params, cov = _zeros(), jnp.eye(D + 1)
  for x in xs:
    a = x @ w + b
    params, cov, _ = tracking.kalman_projection(
        _linear(x), params, 1e-7, lambda out, a=a: a - out, cov, 0.0, jnp.ones(D + 1))
  # The D + 1 observations determine the map: least squares on them, by numpy.
  design = np.concatenate([xs[:, 0], np.ones((D + 1, 1))], axis=1)
  solution = np.linalg.lstsq(design, (xs[:, 0] @ w + b), rcond=None)[0]
  np.testing.assert_allclose(params["w"], solution[:D], atol=2e-3)
  np.testing.assert_allclose(params["b"], solution[D:, 0], atol=2e-3)
  # An affine projection with the same first step is still far off after D + 1 steps.
  ap = _zeros()
  for x in xs:
    a = x @ w + b
    ap, _ = tracking.affine_projection(_linear(x), ap, 1.0, lambda out, a=a: a - out,
                                       ridge=0.0)
  assert np.abs(np.asarray(ap["w"]) - solution[:D]).max() > 10 * np.abs(
      np.asarray(params["w"]) - solution[:D]).max()


def test_kalman_first_step_is_the_affine_projection_with_fraction_one_over_one_plus_r():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1, D)).astype(np.float32)
  a = np.array([[2.5]], np.float32)
  scale = jnp.asarray(rng.uniform(0.5, 2.0, size=D + 1), jnp.float32)
  precondition = {"w": scale[:D, None], "b": scale[D:]}
  flat = jax.flatten_util.ravel_pytree(precondition)[0]  # the Kalman step's order
  ratio = 0.7
  kalman, _, _ = tracking.kalman_projection(_linear(x), _zeros(), ratio, lambda o: a - o,
                                            jnp.diag(flat), 0.0, flat)
  affine, _ = tracking.affine_projection(_linear(x), _zeros(), 1.0 / (1.0 + ratio),
                                         lambda o: a - o, precondition, ridge=0.0)
  for k in ("w", "b"):
    np.testing.assert_allclose(kalman[k], affine[k], rtol=1e-5, atol=1e-6)


def test_kalman_step_contracts_the_residual_at_any_input_scale():
  rng = np.random.default_rng(2)
  n = D + 1
  root = rng.normal(size=(n, n)).astype(np.float32)
  cov = jnp.asarray(root @ root.T)
  for scale in (1e-3, 1.0, 1e3):
    x = (scale * rng.normal(size=(4, D))).astype(np.float32)
    a = rng.normal(size=(4, 1)).astype(np.float32) * scale
    apply = _linear(x)
    params = {"w": jnp.asarray(rng.normal(size=(D, 1)), jnp.float32), "b": jnp.zeros((1,))}
    new, new_cov, out = tracking.kalman_projection(apply, params, 0.1, lambda o: a - o,
                                                   cov, 1e-2, jnp.ones(n))
    before = np.linalg.norm(a - np.asarray(out))
    after = np.linalg.norm(a - np.asarray(apply(new)))
    assert np.isfinite(after) and after <= before * (1 + 1e-4), (scale, before, after)
    eig = np.linalg.eigvalsh(np.asarray(new_cov, np.float64))
    assert eig.min() > -1e-3 * eig.max()  # stays positive semi-definite
