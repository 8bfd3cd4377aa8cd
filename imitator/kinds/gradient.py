"""The `gradient` imitator: fast weights moved by real gradient steps, rule meta-learned.

Its fast network is the teacher family's network (`learners.networks`, same sizes and
parametrization). Each `observe(x, y, a)` takes `inner_steps` steps, each

1. tracking: the weights move toward the teacher's behaviour a by the normalized step of
   `imitator.kinds.tracking.affine_projection`, removing a fraction sigmoid(track_logit) of
   the residual, preconditioned per parameter (or per layer) by exp(log_track_scale);
   with `tracker="kalman"`, by `imitator.kinds.tracking.kalman_projection` instead, which
   carries a weight covariance (fast state, one block per output unit of each layer)
   from that preconditioner on, with a
   meta-learned random-walk noise exp(log_process_noise), so that what earlier
   observations identified is not re-learned;
2. task: from there, w <- w - eta_task * (grad L_task(w; x, y) + wd * w)
   [+ exp(log_scale) * U(features) with the optional learned update network U],
   shortened by `tracking.safeguard` only where it would overshoot (beyond the
   stability bound of gradient descent on the current batch).

L_task is the teacher loss on the labels. Both steps are bounded whatever the scale of
the inputs, so the imitator cannot blow up under a covariate shift. Meta-params: the
initial weights, eta_task = exp(log_step) (per parameter or per layer), the tracking
fraction and preconditioner, wd, and U.

With `adapt_steps`, each layer's task step also carries a fast offset that infers the
teacher's step size: the tracking error at step t is differentiated with respect to
log eta through the previous task update d (d theta / d log eta = d), and the offset
moves by -hyper_step * cos(grad L_track, d), a normalized hypergradient step whose size
`hyper_step` is meta-learned. From step `adapt_settle_after` on (if set; the training
horizon is the natural choice) that step shrinks as 1/t: a teacher's step size is constant, and an estimate
moved by steps that do not shrink random-walks far from it over horizons far beyond
training (BUILD_NOTES, "A thousand times the training horizon"). With eta_task = lr, wd = the teacher's, no tracking and the
teacher's initial weights it is exactly an SGD teacher, step for step.

On an unseen step (the imitator runs alone) only the task step is taken: no tracking,
no hypergradient; a Kalman tracker's covariance gets its time update alone (the random
walk widens it). `context_only` is then frozen by construction.

The baselines are two settings of the same machinery: `frozen` tracks the teacher's
behaviour for its first `freeze_after` steps and then stops, `context_only` tracks the
behaviour throughout but never sees y.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from imitator.kinds import tracking
from imitator.kinds.base import Imitator, seen_or_own
from learners import networks

_MOMENTS = (0.9, 0.99)  # EMA decays of the update network's gradient moments
STEP_SIZES = ("per_parameter", "per_layer")
MAX_LOG_STEP_OFFSET = 8.0  # the adapted step stays within e^-8..e^8 of the meta-learned one


class UpdateNet(nnx.Module):
  """Per-parameter MLP: features [n, 4] -> update [n]; the output layer starts at 0."""

  def __init__(self, width: int, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(4, width, rngs=rngs)
    self.out = nnx.Linear(width, 1, kernel_init=nnx.initializers.zeros, rngs=rngs)

  def __call__(self, features):
    return self.out(jnp.tanh(self.hidden(features)))[..., 0]


@dataclasses.dataclass(frozen=True, eq=False)
class GradientImitator(Imitator):
  network: str = "mlp"
  width: int = 32
  depth: int = 1
  activation: str = "tanh"
  step_size: str = "per_parameter"  # or "per_layer"
  inner_steps: int = 1
  init_lr: float = 0.05
  init_track: float = 0.5
  uses_y: bool = True
  freeze_after: int = 0  # 0: never freeze
  adapt_steps: bool = False
  # Steps after which the offset's hypergradient step decays as adapt_settle_after / t
  # (Robbins-Monro: a teacher's step size is constant, so its estimate should settle
  # rather than random-walk over long horizons); 0: it never decays.
  adapt_settle_after: int = 0
  init_hyper_step: float = 0.1
  update_net: bool = False
  update_net_width: int = 16
  tracker: str = "affine"  # or "kalman"
  init_process_noise: float = 1e-2

  def __post_init__(self):
    if not 0.0 < self.init_track < 1.0:
      raise ValueError(f"imitator init_track={self.init_track!r} must be in (0, 1): the "
                       "fraction of the residual each tracking step removes.")
    if self.tracker not in tracking.TRACKERS:
      raise ValueError(f"imitator tracker={self.tracker!r}; allowed: "
                       f"{list(tracking.TRACKERS)}.")
    if self.step_size not in STEP_SIZES:
      raise ValueError(f"imitator step_size={self.step_size!r}; allowed: "
                       f"{list(STEP_SIZES)}.")
    if self.network not in networks.NETWORKS:
      raise ValueError(f"imitator network={self.network!r}; allowed: "
                       f"{list(networks.NETWORKS)}.")
    if self.activation not in networks.ACTIVATIONS:
      raise ValueError(f"imitator activation={self.activation!r}; allowed: "
                       f"{list(networks.ACTIVATIONS)}.")
    if self.update_net:
      object.__setattr__(self, "_update_graph", nnx.graphdef(nnx.eval_shape(
          lambda: UpdateNet(self.update_net_width, nnx.Rngs(0)))))

  # ----------------------------------------------------------------- structure

  def _depth(self):
    return 0 if self.network == "linear" else self.depth

  def apply(self, params, x):
    """Raw outputs [n, out] of the fast network."""
    return networks.apply_mlp(params, x, networks.ACTIVATIONS.index(self.activation),
                              support=(self.activation,))

  def _per(self, params, value):
    """A per-parameter array or a per-layer scalar filled with `value`, for each leaf."""
    if self.step_size == "per_parameter":
      return jax.tree.map(lambda p: jnp.full(p.shape, value, jnp.float32), params)
    return jax.tree.map(lambda p: jnp.asarray(value, jnp.float32), params)

  def init_meta(self, key):
    k_init, k_net = jax.random.split(key)
    params = networks.zero_readout(networks.init_mlp(
        k_init, self.in_dim, self.out_dim, self.width, self._depth()))
    meta = {
        "init": params,
        "log_step": self._per(params, math.log(self.init_lr)),
        "track_logit": jnp.asarray(math.log(self.init_track) - math.log1p(-self.init_track),
                                   jnp.float32),
        "log_track_scale": self._per(params, 0.0),
        "weight_decay": jax.tree.map(lambda p: jnp.zeros((), jnp.float32), params),
        "log_temperature": jnp.zeros((), jnp.float32),
    }
    if self.tracker == "kalman":
      meta["log_process_noise"] = jnp.asarray(math.log(self.init_process_noise), jnp.float32)
    if not self.uses_y:
      meta["log_step"] = jax.tree.map(jnp.zeros_like, meta["log_step"])  # unused
    if self.adapt_steps:
      meta["hyper_step"] = jax.tree.map(
          lambda p: jnp.asarray(self.init_hyper_step, jnp.float32), params)
    if self.update_net:
      meta["update_net"] = nnx.to_pure_dict(nnx.split(
          UpdateNet(self.update_net_width, nnx.Rngs(k_net)))[1])
      meta["log_update_scale"] = jnp.asarray(math.log(self.init_lr), jnp.float32)
    return meta

  def init(self, meta, key):
    state = {"params": meta["init"], "t": jnp.zeros((), jnp.int32)}
    if self.tracker == "kalman":
      state["track_cov"] = jax.tree.map(jax.vmap(jnp.diag), self._track_prior(meta))
    if self.adapt_steps:
      state["log_step_offset"] = jax.tree.map(lambda p: jnp.zeros(()), meta["init"])
      state["last_task_update"] = jax.tree.map(jnp.zeros_like, meta["init"])
    if self.update_net:
      zeros = jax.tree.map(jnp.zeros_like, meta["init"])
      state["moments"] = (zeros, zeros)
    return state

  # ----------------------------------------------------------------- protocol

  def _track_precondition(self, meta):
    """M: exp(log_track_scale) broadcast to every parameter."""
    return jax.tree.map(lambda s, p: jnp.broadcast_to(jnp.exp(s), p.shape),
                        meta["log_track_scale"], meta["init"])

  def _track_prior(self, meta):
    """The diagonal of M in `tracking.unit_blocks` layout, {layer: [out, in + 1]}."""
    return tracking.unit_blocks(self._track_precondition(meta))

  def predict(self, meta, state, x):
    return self.behaviour(self.apply(state["params"], x), meta["log_temperature"])

  def _loss_grads(self, meta, params, x, y, a):
    """(grad of L_task, grad of L_track) at params, sharing one forward pass."""
    out, vjp = jax.vjp(lambda p: self.apply(p, x), params)
    n = x.shape[0]
    if self.task == "classification":
      inv_t = jnp.exp(-meta["log_temperature"])
      probs = jax.nn.softmax(out * inv_t, axis=-1)
      d_task = (probs - jax.nn.one_hot(y, self.out_dim)) * inv_t / n
      d_track = (probs - a) * inv_t / n
    else:
      d_task = (out - y) / n
      d_track = (out - a) / n
    return vjp(d_task)[0], vjp(d_track)[0]

  def _data_loss(self, meta, params, x, y):
    """Mean teacher loss on the labels: 0.5 * squared error, or cross-entropy."""
    out = self.apply(params, x)
    if self.task == "classification":
      return optax.losses.softmax_cross_entropy_with_integer_labels(
          out * jnp.exp(-meta["log_temperature"]), y).mean()
    return 0.5 * jnp.sum((out - y) ** 2, axis=-1).mean()

  def _step(self, meta, state, x, y, a, seen):
    params = state["params"]
    new = dict(state)
    # Unseen: no tracking, no hypergradient; a is replaced by the imitator's own
    # prediction only so that the skipped branches compute finite values.
    a = seen_or_own(seen, a, self.predict(meta, state, x))
    if self.adapt_steps or self.update_net:
      _, g_track = self._loss_grads(meta, params, x, y, a)
    temperature = jnp.exp(meta["log_temperature"])
    correction = lambda out: tracking.output_correction(self.task, out, a, temperature)
    if self.tracker == "kalman":
      # noise ratio e^-logit: from P = M the first step removes sigmoid(logit) of the
      # residual, as the affine projection does.
      prior, noise = self._track_prior(meta), jnp.exp(meta["log_process_noise"])
      tracked, cov, _ = tracking.kalman_projection(
          lambda p: self.apply(p, x), params, jnp.exp(-meta["track_logit"]), correction,
          state["track_cov"], noise, prior)
      # An unseen step is the filter's time update alone: the random walk widens P.
      new["track_cov"] = jax.tree.map(
          lambda c, c0, m: jnp.where(seen, c, c0 + jax.vmap(jnp.diag)(noise * m)),
          cov, state["track_cov"], prior)
    else:
      tracked, _ = tracking.affine_projection(
          lambda p: self.apply(p, x), params, jax.nn.sigmoid(meta["track_logit"]),
          correction, self._track_precondition(meta))
    params = jax.tree.map(lambda n, o: jnp.where(seen, n, o), tracked, params)
    if not self.uses_y:
      new["params"] = params
      return new
    # Weight decay is kept >= 0: a negative one grows the weights along directions the
    # observed batch does not see, which no step-length safeguard on that batch detects.
    decay = jax.tree.map(lambda wd: jnp.maximum(wd, 0.0), meta["weight_decay"])
    data_loss = lambda p: self._data_loss(meta, p, x, y)
    loss = lambda p: data_loss(p) + 0.5 * sum(
        wd * jnp.sum(w * w) for wd, w in zip(jax.tree.leaves(decay), jax.tree.leaves(p)))
    g_task = jax.grad(data_loss)(params)
    log_step = meta["log_step"]
    if self.adapt_steps:
      # Bounded: each step moves the offset by up to beta, so over horizons far beyond
      # training an unbounded offset drifts until exp() overflows.
      settle = 1.0
      if self.adapt_settle_after:
        settle = jnp.minimum(1.0, self.adapt_settle_after / (state["t"] + 1.0))
      offset = jax.tree.map(
          lambda o, beta, g, d: jnp.clip(o - settle * beta * jnp.sum(g * d) / (
              jnp.sqrt(jnp.sum(g * g) + 1e-12) * jnp.sqrt(jnp.sum(d * d) + 1e-12)),
              -MAX_LOG_STEP_OFFSET, MAX_LOG_STEP_OFFSET),
          state["log_step_offset"], meta["hyper_step"], g_track,
          state["last_task_update"])
      offset = jax.tree.map(lambda n, o: jnp.where(seen, n, o), offset,
                            state["log_step_offset"])
      log_step = jax.tree.map(jnp.add, log_step, offset)
      new["log_step_offset"] = offset
    g_reg = jax.tree.map(lambda g, wd, p: g + wd * p, g_task, decay, params)
    delta = jax.tree.map(lambda log_eta, g: -jnp.exp(log_eta) * g, log_step, g_reg)
    if self.update_net:
      m, v = state["moments"]
      b1, b2 = _MOMENTS
      m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, m, g_task)
      v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, v, g_task)
      net = nnx.merge(self._update_graph, meta["update_net"])
      scale = jnp.exp(meta["log_update_scale"])

      def learned(d, gt, gk, m, v):
        feats = jnp.stack([gt, gk, m, m / (jnp.sqrt(v) + 1e-8)], axis=-1)
        return d + scale * net(feats.reshape(-1, 4)).reshape(d.shape)

      delta = jax.tree.map(learned, delta, g_task, g_track, m, v)
      new["moments"] = (m, v)
    delta, _ = tracking.safeguard(loss, params, delta, g_reg, loss(params))
    if self.adapt_steps:
      new["last_task_update"] = delta
    new["params"] = jax.tree.map(jnp.add, params, delta)
    return new

  def observe(self, meta, state, x, y, a, seen=True):
    new = state
    for _ in range(self.inner_steps):
      new = self._step(meta, new, x, y, a, seen)
    new = dict(new, t=state["t"] + 1)
    if self.freeze_after:
      learning = state["t"] < self.freeze_after
      new = jax.tree.map(lambda n, o: jnp.where(learning, n, o), new,
                         dict(state, t=state["t"] + 1))
    return new
