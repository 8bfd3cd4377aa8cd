"""Bounded steps for imitators: tracking the teacher's behaviour, and task steps that
cannot overshoot.

`affine_projection` pulls weights toward the teacher's behaviour a. With J the
Jacobian of the raw outputs [B, k] with respect to the weights, M a positive diagonal
preconditioner and d the change of raw outputs that would make the behaviour equal a,

    w <- w + fraction * M J^T (J M J^T + ridge * tr(J M J^T) / m I)^-1 d      (m = B * k)

the smallest (M-weighted) weight change that removes `fraction` of the linearized
residual. Its effect on the outputs does not depend on the scale of the inputs or of
the gradients, so for `fraction` in [0, 1] tracking cannot overshoot, whatever a shift
does to the stream.

`kalman_projection` is the same step with a weight covariance P carried from step to
step instead of the fixed M (a Kalman filter whose state is the weights, under a random
walk Q = q M, linearized at the current weights):

    S = J P J^T + r I,   r = noise_ratio * tr(J P J^T) / m,   K = P J^T S^-1
    w <- w + K d,        P <- P - K J P + q M

P is block-diagonal over output units: one block per unit of each dense layer, over that
unit's incoming weights and bias (the node-decoupled extended Kalman filter of Puskorius
and Feldkamp, 1991). For a linear map this is exact (from a block-diagonal start its
units' weights never become correlated); for an MLP it drops the correlations between
hidden units. Memory is sum over layers of out x (in + 1)^2 per teacher instead of n^2
for n weights (3,681 floats against 103,041 for a width-32 MLP on 8 inputs).

From P = M its first step removes 1 / (1 + noise_ratio) of the residual, as the affine
projection with that fraction does; later steps do not re-learn what earlier ones
identified, so a linear map of n weights is identified in about n / m observations
instead of many times that. The output change J K d = J P J^T S^-1 d is a contraction
of d for any P >= 0, so it cannot overshoot either; P stays positive semi-definite and,
with q > 0, bounded below.

`safeguard` scales a proposed step w + delta of a loss L by s = min(1, margin *
(-g.delta) / q), q = L(w + delta) - L(w) - g.delta the curvature along delta measured
by one more forward pass: a step that would land past twice the minimizer along its
own direction (where plain gradient descent diverges) is shortened to land short of it.
A step that is stable already (s = 1) is left exactly as it is; a step whose slope or
curvature is not finite is not taken.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

TRACKERS = ("affine", "kalman")  # affine_projection, kalman_projection
_MAX_LOGIT_CORRECTION = 20.0  # in units of the temperature: probabilities down to e^-20
_FLOOR = 1e-12
SAFE_MARGIN = 0.95


def output_correction(task: str, out, a, temperature=1.0):
  """The change of raw outputs out [B, k] that makes the behaviour equal a [B, k]:
  a - out for regression; for classification the change of logits that turns
  softmax(out / temperature) into a (centered, clipped). Rows where a is not finite
  (a teacher that blew up) get no correction."""
  if task == "classification":
    log_q = jax.nn.log_softmax(out / temperature, axis=-1)
    d = temperature * (jnp.log(jnp.clip(a, jnp.exp(-_MAX_LOGIT_CORRECTION))) - log_q)
    d = d - d.mean(-1, keepdims=True)
    d = jnp.clip(d, -_MAX_LOGIT_CORRECTION * temperature,
                 _MAX_LOGIT_CORRECTION * temperature)
  else:
    d = a - out
  finite = jnp.all(jnp.isfinite(a), axis=-1, keepdims=True)
  return jnp.where(finite, d, 0.0)


def affine_projection(apply, params, fraction, correction, precondition=None,
                      ridge: float = 1e-3):
  """(params moved by the normalized step above, raw outputs before the step).

  apply: params -> raw outputs [B, k]; correction: raw outputs -> wanted change [B, k]
  (e.g. `output_correction`); precondition: positive pytree like params (M), or None."""
  flat = lambda p: apply(p).reshape(-1)
  out, vjp = jax.vjp(apply, params)
  d = correction(out).reshape(-1)
  jac = jax.jacrev(flat)(params)
  scaled = jac if precondition is None else jax.tree.map(lambda j, m: j * m, jac,
                                                         precondition)
  gram = sum(jnp.tensordot(s, j, axes=(tuple(range(1, j.ndim)),) * 2)
             for s, j in zip(jax.tree.leaves(scaled), jax.tree.leaves(jac)))
  m = d.shape[0]
  damp = ridge * jnp.trace(gram) / m + _FLOOR
  coef = jnp.linalg.solve(gram + damp * jnp.eye(m, dtype=gram.dtype), d)
  step = vjp(coef.reshape(out.shape))[0]
  if precondition is not None:
    step = jax.tree.map(jnp.multiply, step, precondition)
  return jax.tree.map(lambda w, s: w + fraction * s, params, step), out


def unit_blocks(params):
  """{layer: [out, in + 1]}, each output unit's incoming weights and bias, from dense
  layers {layer: {"w": [in, out], "b": [out]}}."""
  return {k: jnp.concatenate([l["w"].T, l["b"][:, None]], axis=1) for k, l in params.items()}


def from_unit_blocks(blocks):
  """The inverse of `unit_blocks`."""
  return {k: {"w": v[:, :-1].T, "b": v[:, -1]} for k, v in blocks.items()}


def kalman_projection(apply, params, noise_ratio, correction, cov, process_noise,
                      prior):
  """(params moved by the Kalman step above, the new covariance, raw outputs).

  params: dense layers {layer: {"w": [in, out], "b": [out]}}; cov: P as
  {layer: [out, in + 1, in + 1]} in `unit_blocks` order; prior: the diagonal of M as
  {layer: [out, in + 1]}; process_noise: q >= 0; noise_ratio: r / (tr / m) > 0."""
  blocks = unit_blocks(params)
  raw = lambda b: apply(from_unit_blocks(b))
  out = raw(blocks)
  d = correction(out).reshape(-1)
  jac = jax.jacrev(lambda b: raw(b).reshape(-1))(blocks)  # {layer: [m, out, in + 1]}
  pj = {k: jnp.einsum("uij,muj->uim", cov[k], jac[k]) for k in blocks}  # P J^T
  gram = sum(jnp.einsum("mui,uin->mn", jac[k], pj[k]) for k in blocks)
  m = d.shape[0]
  s = gram + (noise_ratio * jnp.trace(gram) / m + _FLOOR) * jnp.eye(m, dtype=gram.dtype)
  # S^-1 then a product, not solve(S, (P J^T)^T): on CPU XLA's triangular solve with
  # many right-hand sides is ~1000x slower than inverting the small [m, m] S (measured).
  s_inv = jnp.linalg.inv(s)
  gain = {k: pj[k] @ s_inv for k in blocks}  # K = P J^T S^-1, [out, in + 1, m]
  new_cov = {}
  for k in blocks:
    c = cov[k] - jnp.einsum("uim,ujm->uij", gain[k], pj[k])
    new_cov[k] = 0.5 * (c + jnp.swapaxes(c, 1, 2)) + jax.vmap(jnp.diag)(
        process_noise * prior[k])
  new_blocks = {k: blocks[k] + gain[k] @ d for k in blocks}
  return from_unit_blocks(new_blocks), new_cov, out


def _slope_and_curvature(loss, params, delta, grads, loss_at_params):
  """g.delta and L(w + delta) - L(w) - g.delta: the quadratic of the loss along delta."""
  slope = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(delta)))
  moved = jax.tree.map(jnp.add, params, delta)
  return slope, loss(moved) - loss_at_params - slope


def _scaled(delta, scale, slope, curvature):
  """(scale * delta, scale), both 0 where any of them is not finite."""
  finite = jnp.isfinite(scale) & jnp.isfinite(curvature) & jnp.isfinite(slope)
  scale = jnp.where(finite, scale, 0.0)
  # where, not a product: a non-finite delta must become 0, not 0 * inf = nan.
  return jax.tree.map(lambda d: jnp.where(finite, scale * d, 0.0), delta), scale


def safeguard(loss, params, delta, grads, loss_at_params):
  """delta scaled so that the step cannot overshoot (see the module docstring); grads
  is the gradient of `loss` at params. Returns (scaled delta, the scale s)."""
  slope, curvature = _slope_and_curvature(loss, params, delta, grads, loss_at_params)
  overshoots = (slope < 0) & (curvature > -SAFE_MARGIN * slope)
  scale = jnp.where(overshoots, SAFE_MARGIN * -slope / jnp.where(overshoots, curvature, 1.0),
                    1.0)
  return _scaled(delta, scale, slope, curvature)


def safeguard_to(loss, params, delta, grads, loss_at_params, ceiling):
  """`safeguard` with room: the step may raise the loss up to `ceiling` (not only back
  to its value before), as a stable learner's step sometimes does on one batch (heavy
  ball, replay, a step size near the stability bound). delta is scaled by
  s = min(1, SAFE_MARGIN * s_max), s_max the largest fraction of delta whose loss along
  it (the quadratic through L(w), the slope and L(w + delta)) is at most
  max(L(w), ceiling); with ceiling <= L(w) this is `safeguard`. Returns (scaled delta,
  the scale s)."""
  slope, curvature = _slope_and_curvature(loss, params, delta, grads, loss_at_params)
  room = jnp.maximum(ceiling - loss_at_params, 0.0)
  q = jnp.where(curvature > 0, curvature, 1.0)
  disc = slope * slope + 4 * q * room
  # The positive root of q s^2 + slope s = room; disc = 0 only where slope = 0, which
  # is not shortened (a safe sqrt there keeps the meta-gradient finite).
  s_max = (-slope + jnp.sqrt(jnp.where(disc > 0, disc, 1.0))) / (2 * q)
  overshoots = (slope < 0) & (curvature > 0) & (SAFE_MARGIN * s_max < 1.0)
  return _scaled(delta, jnp.where(overshoots, SAFE_MARGIN * s_max, 1.0), slope, curvature)
