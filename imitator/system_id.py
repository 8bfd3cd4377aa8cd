"""The `system_id` imitator: the teacher family itself, with the member inferred.

It runs K particles, one per combination of the family's discrete choices (network,
activation, optimizer, inner steps). Each particle is a full learner of the family
(`learners.learner`) with estimated continuous hyperparams (unconstrained reals u mapped
into the family's support) and estimated weights. On `observe(x, y, a)` each particle

1. scores its prediction of a: log-weight -= exp(log_temp) * D(a, a_hat_k);
2. (refine) moves u down the gradient of that error through its own last update, a
   one-step differentiable rollout: u -= refine_step * d D(a, f(update(prev; u), x)) / du;
3. (amortized) an encoder GRU over the stream features outputs a correction to u;
4. pulls its weights to the observed behaviour: w -= track_step * grad D(a, f_w(x));
5. learns from (x, y) exactly as a teacher with its estimated hyperparams would.

`predict` mixes the particles' behaviours by softmax(log-weights). Meta-params: initial
weights and u per particle, the steps, the temperature and the encoder. With one
particle, the teacher's hyperparams and initial weights (`meta_for_teacher`) and zero
steps it is that teacher, step for step.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
from flax import nnx

from imitator import metrics
from imitator.base import Imitator
from learners import learner, networks
from learners import family as family_lib

MODES = ("refine", "amortized", "both")


class Encoder(nnx.Module):
  """GRU over per-step features -> correction to the unconstrained hyperparams."""

  def __init__(self, features: int, hidden: int, n_out: int, rngs: nnx.Rngs):
    self.gru = nnx.GRUCell(features, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, n_out, kernel_init=nnx.initializers.zeros, rngs=rngs)


@dataclasses.dataclass(frozen=True, eq=False)
class SystemIdImitator(Imitator):
  family: family_lib.Family = None
  mode: str = "both"
  encoder_hidden: int = 32
  max_particles: int = 64
  init_track: float = 0.5
  init_refine: float = 0.1
  batch: int = 1  # examples per stream step (shapes the remembered last step)

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"imitator.system_id.mode={self.mode!r}; allowed: {list(MODES)}.")
    fam = self.family
    combos = list(itertools.product(
        [networks.NETWORKS.index(n) for n in fam.networks],
        [networks.ACTIVATIONS.index(a) for a in fam.activations],
        [family_lib.optimizers.OPTIMIZERS.index(o) for o in fam.optimizers],
        range(1, fam.max_inner_steps + 1)))
    if len(combos) > self.max_particles:
      raise ValueError(
          f"family {fam.name!r} has {len(combos)} combinations of discrete choices, more "
          f"than imitator.system_id.max_particles={self.max_particles}; raise it or narrow "
          "the family.")
    codes = jnp.asarray(combos, jnp.int32)
    object.__setattr__(self, "_codes", {f: codes[:, i] for i, f in enumerate(
        ("network", "activation", "optimizer", "inner_steps"))})
    object.__setattr__(self, "_graph", nnx.split(self._encoder(nnx.Rngs(0)))[0])

  @property
  def particles(self) -> int:
    return self._codes["optimizer"].shape[0]

  def _encoder(self, rngs):
    features = self.in_dim + 3 * self.out_dim + 1
    return Encoder(features, self.encoder_hidden, len(family_lib.CONTINUOUS), rngs)

  def _hparams(self, u):
    """Hyperparams of all particles {field: [K]} from u {field: [K]}."""
    return self.family.from_unconstrained(u, self._codes)

  # ----------------------------------------------------------------- meta

  def init_meta(self, key):
    k_w, k_enc = jax.random.split(key)
    fam = self.family
    prior_mid = {f: jnp.zeros((self.particles,)) for f in family_lib.CONTINUOUS}
    return {
        "init_params": {kind: networks.zero_readout(p) for kind, p in networks.init(
            k_w, fam.in_dim, fam.out_dim, fam.width, fam.depth, fam.networks).items()},
        "u": prior_mid,
        "track_step": jnp.asarray(self.init_track, jnp.float32),
        "refine_step": {f: jnp.asarray(self.init_refine, jnp.float32)
                        for f in family_lib.CONTINUOUS},
        "log_temp": jnp.zeros((), jnp.float32),
        "encoder": nnx.to_pure_dict(nnx.split(self._encoder(nnx.Rngs(k_enc)))[1]),
    }

  def meta_for_teacher(self, hparams, init_params):
    """Meta-params that make a one-particle imitator exactly the given teacher."""
    if self.particles != 1:
      raise ValueError("meta_for_teacher needs a family with one discrete combination.")
    meta = self.init_meta(jax.random.key(0))
    u = self.family.to_unconstrained(hparams)
    meta["u"] = {f: jnp.reshape(u[f], (1,)) for f in family_lib.CONTINUOUS}
    meta["init_params"] = init_params
    meta["track_step"] = jnp.zeros(())
    meta["refine_step"] = jax.tree.map(jnp.zeros_like, meta["refine_step"])
    return meta

  # ----------------------------------------------------------------- state

  def init(self, meta, key):
    u = meta["u"]
    hp = self._hparams(u)
    keys = jax.random.split(key, self.particles)
    states = jax.vmap(lambda h, k: learner.init(self.family, h, k, meta["init_params"]))(
        hp, keys)
    zero_x = jnp.zeros((self.batch,) + tuple(self.x_shape))
    zero_y = (jnp.zeros((self.batch,), jnp.int32) if self.task == "classification"
              else jnp.zeros((self.batch, self.out_dim)))
    return {
        "learners": states, "prev": states, "u": u,
        "prev_x": zero_x, "prev_y": zero_y,
        "log_w": jnp.zeros((self.particles,)),
        "h": jnp.zeros((self.encoder_hidden,)), "t": jnp.zeros((), jnp.int32),
    }

  def _effective_u(self, meta, state):
    if self.mode == "refine":
      return state["u"]
    enc = nnx.merge(self._graph, meta["encoder"])
    delta = enc.out(state["h"])
    return {f: state["u"][f] + delta[i] for i, f in enumerate(family_lib.CONTINUOUS)}

  def _behave_all(self, hp, states, x):
    return jax.vmap(lambda h, s: learner.behave(self.family, h, s, x))(hp, states)

  def estimate(self, meta, state):
    """The inferred hyperparams: those of the most probable particle."""
    hp = self._hparams(self._effective_u(meta, state))
    best = jnp.argmax(state["log_w"])
    return {f: v[best] for f, v in hp.items()}

  # ----------------------------------------------------------------- protocol

  def predict(self, meta, state, x):
    hp = self._hparams(self._effective_u(meta, state))
    outs = self._behave_all(hp, state["learners"], x)
    w = jax.nn.softmax(state["log_w"])
    return jnp.einsum("k,kno->no", w, outs)

  def observe(self, meta, state, x, y, a):
    fam, task = self.family, self.task
    u_eff = self._effective_u(meta, state)
    hp = self._hparams(u_eff)
    preds = self._behave_all(hp, state["learners"], x)
    err = metrics.divergence(task, a[None], preds).mean(-1)  # [K]
    log_w = state["log_w"] - jnp.exp(meta["log_temp"]) * err

    u = state["u"]
    if self.mode != "amortized":
      def one_step_error(u_k, prev_k, h_k_delta, codes_k):
        hp_k = fam.from_unconstrained(
            {f: u_k[f] + h_k_delta[f] for f in u_k}, codes_k)
        moved = learner.update(fam, hp_k, prev_k, state["prev_x"], state["prev_y"])
        pred = learner.behave(fam, hp_k, moved, x)
        return metrics.divergence(task, a, pred).mean()

      delta = {f: u_eff[f] - u[f] for f in u}
      grads = jax.vmap(jax.grad(one_step_error))(u, state["prev"], delta, self._codes)
      started = state["t"] > 0
      u = {f: u[f] - jnp.where(started, meta["refine_step"][f], 0.0) * grads[f] for f in u}

    h = state["h"]
    if self.mode != "refine":
      enc = nnx.merge(self._graph, meta["encoder"])
      best = jnp.einsum("k,kno->no", jax.nn.softmax(log_w), preds)
      feats = jnp.concatenate([
          x.reshape(x.shape[0], -1) / jnp.sqrt(self.in_dim), self.target_features(y),
          a, a - best, jnp.ones((x.shape[0], 1))], -1).mean(0)
      h, _ = enc.gru(h, feats)

    new_state = dict(state, u=u, h=h, log_w=log_w)
    hp = self._hparams(self._effective_u(meta, new_state))

    def track(h_k, s_k):
      def loss(p):
        pred = learner.behave(fam, h_k, s_k._replace(params=p), x)
        return 0.5 * metrics.divergence(task, a, pred).mean()
      g = jax.grad(loss)(s_k.params)
      return s_k._replace(params=jax.tree.map(lambda w, g: w - meta["track_step"] * g,
                                              s_k.params, g))

    tracked = jax.vmap(track)(hp, state["learners"])
    learned = jax.vmap(lambda h_k, s_k: learner.update(fam, h_k, s_k, x, y))(hp, tracked)
    new_state.update(learners=learned, prev=tracked, prev_x=x, prev_y=y,
                     t=state["t"] + 1)
    return new_state
