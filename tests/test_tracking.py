"""Tracking steps (imitator/kinds/tracking.py) against closed forms and an independent NumPy
Kalman filter: the Kalman step identifies a fixed linear map in as many observations as
it has weights, equals the full-covariance filter on a linear map with several outputs,
starts as the affine projection, and never overshoots the observed outputs whatever
their scale."""

import jax
import jax.numpy as jnp
import numpy as np

from imitator.kinds import tracking

D = 6  # inputs; each output unit has D + 1 weights with its bias


def _linear(x):
  return lambda p: x @ p["dense_0"]["w"] + p["dense_0"]["b"]


def _zeros(out=1):
  return {"dense_0": {"w": jnp.zeros((D, out)), "b": jnp.zeros((out,))}}


def _cov(out=1, diag=None):
  diag = jnp.ones((out, D + 1)) if diag is None else diag
  return {"dense_0": jax.vmap(jnp.diag)(diag)}, {"dense_0": diag}


def test_kalman_identifies_a_fixed_linear_map_in_n_observations():
  rng = np.random.default_rng(0)
  w, b = rng.normal(size=(D, 1)), rng.normal(size=(1,))
  xs = rng.normal(size=(D + 1, 1, D)).astype(np.float32)
  params, (cov, prior) = _zeros(), _cov()
  for x in xs:
    a = x @ w + b
    params, cov, _ = tracking.kalman_projection(
        _linear(x), params, 1e-7, lambda out, a=a: a - out, cov, 0.0, prior)
  # The D + 1 observations determine the map: least squares on them, by numpy.
  design = np.concatenate([xs[:, 0], np.ones((D + 1, 1))], axis=1)
  solution = np.linalg.lstsq(design, (xs[:, 0] @ w + b), rcond=None)[0]
  learned = params["dense_0"]
  np.testing.assert_allclose(learned["w"], solution[:D], atol=2e-3)
  np.testing.assert_allclose(learned["b"], solution[D:, 0], atol=2e-3)
  # An affine projection with the same first step is still far off after D + 1 steps.
  ap = _zeros()
  for x in xs:
    a = x @ w + b
    ap, _ = tracking.affine_projection(_linear(x), ap, 1.0, lambda out, a=a: a - out,
                                       ridge=0.0)
  assert np.abs(np.asarray(ap["dense_0"]["w"]) - solution[:D]).max() > 10 * np.abs(
      np.asarray(learned["w"]) - solution[:D]).max()


def _numpy_kalman(xs, as_, ratio, q, prior):
  """The full-covariance filter over all (D + 1) x out weights, in float64 NumPy."""
  out = as_.shape[-1]
  n = (D + 1) * out
  theta = np.zeros(n)  # unit-major: unit k owns theta[k (D + 1) : (k + 1) (D + 1)]
  p = np.diag(prior.reshape(-1))
  for x, a in zip(xs, as_):
    design = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)  # [B, D + 1]
    jac = np.kron(np.eye(out), design)  # rows: (unit, example), as outputs[:, k]
    jac = jac.reshape(out, x.shape[0], n).transpose(1, 0, 2).reshape(-1, n)  # (example, unit)
    d = (a - design @ theta.reshape(out, D + 1).T).reshape(-1)
    gram = jac @ p @ jac.T
    s = gram + ratio * np.trace(gram) / len(d) * np.eye(len(d))
    gain = p @ jac.T @ np.linalg.inv(s)
    theta = theta + gain @ d
    p = p - gain @ jac @ p + q * np.diag(prior.reshape(-1))
  return theta.reshape(out, D + 1)


def test_unit_blocks_equal_the_full_covariance_filter_on_a_linear_map():
  rng = np.random.default_rng(3)
  out, batch, steps, ratio, q = 3, 2, 8, 0.3, 0.05
  w = rng.normal(size=(D, out))
  xs = rng.normal(size=(steps, batch, D))
  as_ = xs @ w + 0.1 * rng.normal(size=(steps, batch, out))
  prior = rng.uniform(0.5, 2.0, size=(out, D + 1))
  params, (cov, prior_j) = _zeros(out), _cov(out, jnp.asarray(prior, jnp.float32))
  for x, a in zip(xs.astype(np.float32), as_.astype(np.float32)):
    params, cov, _ = tracking.kalman_projection(
        _linear(x), params, ratio, lambda o, a=a: a - o, cov, q, prior_j)
  expected = _numpy_kalman(xs, as_, ratio, q, prior)
  np.testing.assert_allclose(tracking.unit_blocks(params)["dense_0"], expected,
                             rtol=1e-3, atol=1e-4)


def test_kalman_first_step_is_the_affine_projection_with_fraction_one_over_one_plus_r():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1, D)).astype(np.float32)
  a = np.array([[2.5]], np.float32)
  scale = jnp.asarray(rng.uniform(0.5, 2.0, size=D + 1), jnp.float32)
  precondition = {"dense_0": {"w": scale[:D, None], "b": scale[D:]}}
  ratio = 0.7
  cov, prior = _cov(1, tracking.unit_blocks(precondition)["dense_0"])
  kalman, _, _ = tracking.kalman_projection(_linear(x), _zeros(), ratio, lambda o: a - o,
                                            cov, 0.0, prior)
  affine, _ = tracking.affine_projection(_linear(x), _zeros(), 1.0 / (1.0 + ratio),
                                         lambda o: a - o, precondition, ridge=0.0)
  for k in ("w", "b"):
    np.testing.assert_allclose(kalman["dense_0"][k], affine["dense_0"][k], rtol=1e-5,
                               atol=1e-6)


def test_kalman_step_contracts_the_residual_at_any_input_scale():
  rng = np.random.default_rng(2)
  n = D + 1
  root = rng.normal(size=(n, n)).astype(np.float32)
  cov = {"dense_0": jnp.asarray(root @ root.T)[None]}
  prior = {"dense_0": jnp.ones((1, n))}
  for scale in (1e-3, 1.0, 1e3):
    x = (scale * rng.normal(size=(4, D))).astype(np.float32)
    a = rng.normal(size=(4, 1)).astype(np.float32) * scale
    apply = _linear(x)
    params = {"dense_0": {"w": jnp.asarray(rng.normal(size=(D, 1)), jnp.float32),
                          "b": jnp.zeros((1,))}}
    new, new_cov, out = tracking.kalman_projection(apply, params, 0.1, lambda o: a - o,
                                                   cov, 1e-2, prior)
    before = np.linalg.norm(a - np.asarray(out))
    after = np.linalg.norm(a - np.asarray(apply(new)))
    assert np.isfinite(after) and after <= before * (1 + 1e-4), (scale, before, after)
    eig = np.linalg.eigvalsh(np.asarray(new_cov["dense_0"][0], np.float64))
    assert eig.min() > -1e-3 * eig.max()  # stays positive semi-definite


def _quadratic_step(lr_c):
  """L(w) = 0.5 c (w - 1)^2 at w = 3 with c = 2, and the gradient step of size lr_c / c."""
  c, w = 2.0, {"w": jnp.array([3.0])}
  loss = lambda p: 0.5 * c * jnp.sum((p["w"] - 1.0) ** 2)
  value, grads = jax.value_and_grad(loss)(w)
  delta = jax.tree.map(lambda g: -(lr_c / c) * g, grads)
  return loss, w, delta, grads, value


def test_safeguard_matches_the_closed_form_on_a_quadratic():
  # Along delta = -lr g the loss is exactly quadratic: an overshooting step (lr c = 3,
  # landing 2 e past the minimizer) is cut to margin * 2 / (lr c); a stable one is kept.
  loss, w, delta, grads, value = _quadratic_step(3.0)
  _, scale = tracking.safeguard(loss, w, delta, grads, value)
  np.testing.assert_allclose(scale, tracking.SAFE_MARGIN * 2 / 3, rtol=1e-6)
  loss, w, delta, grads, value = _quadratic_step(0.5)
  assert float(tracking.safeguard(loss, w, delta, grads, value)[1]) == 1.0


def test_safeguard_to_lands_at_most_at_its_ceiling():
  loss, w, delta, grads, value = _quadratic_step(6.0)  # unguarded: 25 x the loss before
  # No room: exactly `safeguard`.
  np.testing.assert_allclose(
      tracking.safeguard_to(loss, w, delta, grads, value, value)[1],
      tracking.safeguard(loss, w, delta, grads, value)[1], rtol=1e-6)
  # Room up to 4 x the loss: |1 - 6 s| = 2 at s = 1/2, then the margin.
  step, scale = tracking.safeguard_to(loss, w, delta, grads, value, 4 * value)
  np.testing.assert_allclose(scale, tracking.SAFE_MARGIN * 0.5, rtol=1e-6)
  landed = loss(jax.tree.map(jnp.add, w, step))
  assert value < landed <= 4 * value
  # A step within the room is taken as it is.
  loss, w, delta, grads, value = _quadratic_step(2.5)  # lands at 2.25 x the loss
  assert float(tracking.safeguard_to(loss, w, delta, grads, value, 4 * value)[1]) == 1.0
