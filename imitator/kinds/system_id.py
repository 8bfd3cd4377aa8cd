"""The `system_id` imitator: the teacher family itself, with the member inferred.

It runs one particle per combination of the family's discrete choices (network,
activation, optimizer, inner steps; a linear network has no activation to choose; each
non-gradient rule, `learners.rules`, with each number of neighbours for knn).
Each particle is a full learner of the family (`learners.learner`) with its own
estimate of the continuous hyperparams (unconstrained reals u mapped into the family's
support) and of the weights. Particles that share a network and an optimizer form a
group whose learners have one pytree structure; a group is one `vmap`, and each learner
holds only its own network and optimizer state.

On `observe(x, y, a)` every particle
1. scores its prediction of a: log-weight -= exp(log_temp) * D(a, a_hat_k) / s, with s
   a running mean of the mixture's own error (the evidence is scale-free), and old
   evidence fades by the factor 1 - forget;
2. (refine) moves u along the gradient of that error through its own last update, a
   one-step differentiable rollout, RMS-normalized per field so that the step is bounded;
3. (amortized) an encoder GRU over the stream features outputs a correction to u;
4. pulls its weights, and the anchor of its regularizers, toward the behaviour by the
   normalized step of `imitator.kinds.tracking` (a fraction `track` of the residual);
   with `tracker="kalman"` by its Kalman step instead, each particle carrying its own
   weight covariance (so that a network's weights are identified in far fewer steps);
5. learns from (x, y) exactly as a teacher with its estimated hyperparams would.

A particle of a non-gradient rule is scored (1) and refined (2) as the others are; its
state is not weights to track (4), so it only learns as the member it is (5).

On an unseen step (the imitator runs alone) only 5 happens: the particles are no longer
reweighted, refined or tracked, and keep learning from (x, y) as the members they are.

`predict` mixes the particles' behaviours by softmax(log-weights). Meta-params: initial
weights per network kind, u and a log prior weight per particle, the track fraction,
the refine steps, the evidence temperature and forgetting, and the encoder. With one
particle, the teacher's hyperparams and initial weights (`meta_for_teacher`) and the
teacher's random key it is that teacher, step for step.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from imitator import metrics
from imitator.kinds import tracking
from imitator.kinds.base import Imitator, all_seen
from learners import family as family_lib
from learners import learner, networks, optimizers, rules

MODES = ("refine", "amortized", "both")
META_GRADS = ("full", "evidence")
_RMS_DECAY = 0.9  # of the squared hypergradients that normalize the refine step
_SCALE_DECAY = 0.9  # of the running error scale s and the behaviour's running RMS
# A particle whose outputs leave this many times the behaviour's RMS (or are not
# finite) has blown up: it leaves the mixture and starts again from the initial state.
_BLOWN_UP = 1e4
_MAX_EVIDENCE = 1e4  # per step: a blown-up particle's log-weight stays finite
_ROOM = 4.0  # a particle's step may leave residuals up to this x the behaviour's RMS


class Encoder(nnx.Module):
  """GRU over per-step features -> correction to the unconstrained hyperparams."""

  def __init__(self, features: int, hidden: int, n_out: int, rngs: nnx.Rngs):
    self.gru = nnx.GRUCell(features, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, n_out, kernel_init=nnx.initializers.zeros, rngs=rngs)


def _logit(p: float) -> float:
  return math.log(p) - math.log1p(-p)


@dataclasses.dataclass(frozen=True)
class Group:
  """Particles sharing a network kind and an optimizer: `family` supports only those
  (and the activations the particles use); `codes` {field: [K]} are their discrete
  choices (global codes)."""

  name: str
  family: family_lib.Family
  codes: dict

  @property
  def size(self) -> int:
    return int(self.codes["optimizer"].shape[0])


def _combos(fam: family_lib.Family, nets, opts):
  """(network, activation, optimizer, inner_steps) of every particle over nets x opts;
  a linear network has no activation to choose."""
  out = []
  for net, opt in itertools.product(nets, opts):
    acts = fam.activations if net == "mlp" else fam.activations[:1]
    out += [(net, act, opt, k) for act in acts for k in range(1, fam.max_inner_steps + 1)]
  return out


def _codes(combos):
  return {
      "network": jnp.asarray([networks.NETWORKS.index(c[0]) for c in combos], jnp.int32),
      "activation": jnp.asarray([networks.ACTIVATIONS.index(c[1]) for c in combos],
                                jnp.int32),
      "optimizer": jnp.asarray([optimizers.OPTIMIZERS.index(c[2]) for c in combos],
                               jnp.int32),
      "inner_steps": jnp.asarray([c[3] for c in combos], jnp.int32),
  }


def particle_groups(fam: family_lib.Family, split: bool = True) -> tuple[Group, ...]:
  """The particles, one per combination of discrete choices, in groups: with `split`,
  one group per (network, optimizer) whose learners hold only those; else one group
  whose learners hold the family's superset state (cheaper to compile, slower to run).
  Each non-gradient rule of the family is a group of its own (knn: one particle per
  number of neighbours), whose learners hold that rule alone."""
  if split:
    parts = [((net,), (opt,)) for net, opt in itertools.product(fam.networks,
                                                                fam.optimizers)]
  else:
    parts = [(fam.networks, fam.optimizers)]
  groups = []
  if "gradient" in fam.rules:
    for nets, opts in parts:
      acts = fam.activations if "mlp" in nets else fam.activations[:1]
      sub = dataclasses.replace(fam, networks=nets, optimizers=opts, activations=acts,
                                rules=("gradient",))
      groups.append(Group("+".join(nets) + "/" + "+".join(opts), sub,
                          _codes(_combos(fam, nets, opts))))
  for rule in fam.rules:
    if rule == "gradient":
      continue
    # The rule's learners still carry the smallest network state (unused by the rule).
    sub = dataclasses.replace(fam, networks=fam.networks[:1], optimizers=fam.optimizers[:1],
                              activations=fam.activations[:1], regularizers=(),
                              rules=(rule,))
    ks = range(1, fam.max_neighbours + 1) if rule == "knn" else (1,)
    codes = _codes([(sub.networks[0], sub.activations[0], sub.optimizers[0], 1)] * len(ks))
    codes["rule"] = jnp.full((len(ks),), rules.RULES.index(rule), jnp.int32)
    codes["neighbours"] = jnp.asarray(list(ks), jnp.int32)
    groups.append(Group(rule, sub, codes))
  return tuple(groups)


@dataclasses.dataclass(frozen=True, eq=False)
class SystemIdImitator(Imitator):
  family: family_lib.Family = None
  mode: str = "refine"
  encoder_hidden: int = 32
  max_particles: int = 64
  init_track: float = 0.5
  init_refine: float = 0.05
  init_temp: float = 1.0
  init_forget: float = 0.01
  refine_every: int = 1  # refine u on every k-th step only (the refine is ~half the cost)
  # From this step on the refine step shrinks as refine_settle_after / t (Robbins-Monro:
  # the hyperparams are constant, so their estimate should settle, not hover); 0: never.
  refine_settle_after: int = 0
  tracker: str = "affine"  # or "kalman" (see the module docstring, step 4)
  init_process_noise: float = 1e-2
  split_groups: bool = True  # see `particle_groups`
  # What the outer loop differentiates: "full" (through every particle's tracking,
  # updates and refinement) or "evidence" (only the log-weights' dynamics: prior, evidence
  # temperature, forgetting; the particles' trajectories are constants). The forward
  # pass is the same; "evidence" compiles and runs its backward pass far cheaper.
  meta_grad: str = "full"
  batch: int = 1  # examples per stream step (shapes the remembered last step)

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"imitator.system_id.mode={self.mode!r}; allowed: {list(MODES)}.")
    if self.tracker not in tracking.TRACKERS:
      raise ValueError(f"imitator.system_id.tracker={self.tracker!r}; allowed: "
                       f"{list(tracking.TRACKERS)}.")
    if self.meta_grad not in META_GRADS:
      raise ValueError(f"imitator.system_id.meta_grad={self.meta_grad!r}; allowed: "
                       f"{list(META_GRADS)}.")
    for name in ("init_track", "init_forget"):
      value = getattr(self, name)
      if not 0.0 < value < 1.0:
        raise ValueError(f"imitator.system_id.{name}={value!r} must be in (0, 1).")
    groups = particle_groups(self.family, self.split_groups)
    n = sum(g.size for g in groups)
    if n > self.max_particles:
      raise ValueError(
          f"family {self.family.name!r} has {n} combinations of discrete choices, more "
          f"than imitator.system_id.max_particles={self.max_particles}; raise it or narrow "
          "the family.")
    object.__setattr__(self, "groups", groups)
    # Abstract: only the graphdef is kept, so no weights are drawn.
    object.__setattr__(self, "_graph",
                       nnx.graphdef(nnx.eval_shape(lambda: self._encoder(nnx.Rngs(0)))))

  @property
  def particles(self) -> int:
    return sum(g.size for g in self.groups)

  def _encoder(self, rngs):
    features = self.in_dim + 3 * self.out_dim + 1
    return Encoder(features, self.encoder_hidden, len(self.family.continuous), rngs)

  def _hparams(self, group: Group, u):
    """Hyperparams {field: [K]} of a group's particles from u {field: [K]}."""
    return group.family.from_unconstrained(u, group.codes)

  # ----------------------------------------------------------------- meta

  def init_meta(self, key):
    k_w, k_enc = jax.random.split(key)
    fam = self.family
    weights = networks.init(k_w, fam.in_dim, fam.out_dim, fam.width, fam.depth,
                            fam.networks)
    return {
        "init_params": {kind: networks.zero_readout(p) for kind, p in weights.items()},
        "u": {g.name: {f: jnp.zeros((g.size,)) for f in g.family.continuous}
              for g in self.groups},
        "log_prior": {g.name: jnp.zeros((g.size,)) for g in self.groups},
        "track_logit": jnp.asarray(_logit(self.init_track), jnp.float32),
        **({"log_process_noise": jnp.asarray(math.log(self.init_process_noise),
                                             jnp.float32),
            "log_track_scale": jnp.zeros((), jnp.float32)}
           if self.tracker == "kalman" else {}),
        "log_refine": {f: jnp.asarray(math.log(self.init_refine), jnp.float32)
                       for f in self.family.continuous},
        "log_temp": jnp.asarray(math.log(self.init_temp), jnp.float32),
        "forget_logit": jnp.asarray(_logit(self.init_forget), jnp.float32),
        "encoder": nnx.to_pure_dict(nnx.split(self._encoder(nnx.Rngs(k_enc)))[1]),
    }

  def meta_for_teacher(self, hparams, init_params):
    """Meta-params that make a one-particle imitator exactly the given teacher (no
    tracking, no refinement)."""
    if self.particles != 1:
      raise ValueError("meta_for_teacher needs a family with one discrete combination.")
    meta = self.init_meta(jax.random.key(0))
    u = self.family.to_unconstrained(hparams)
    (group,) = self.groups
    meta["u"] = {group.name: {f: jnp.reshape(u[f], (1,)) for f in group.family.continuous}}
    meta["init_params"] = init_params
    meta["track_logit"] = jnp.asarray(-jnp.inf)
    meta["log_refine"] = jax.tree.map(lambda v: jnp.asarray(-jnp.inf), meta["log_refine"])
    return meta

  def initial_estimates(self, meta) -> list[tuple[str, dict]]:
    """(group, hyperparams of one particle) for every particle, before any step."""
    out = []
    for g in self.groups:
      hp = self._hparams(g, meta["u"][g.name])
      out += [(g.name, {f: v[k] for f, v in hp.items()}) for k in range(g.size)]
    return out

  # ----------------------------------------------------------------- state

  def _group_init(self, meta, group, key):
    hp = self._hparams(group, meta["u"][group.name])
    params = {k: v for k, v in meta["init_params"].items() if k in group.family.networks}
    keys = jax.random.split(key, group.size)
    return jax.vmap(lambda h, k: learner.init(group.family, h, k, params))(hp, keys)

  def init(self, meta, key):
    keys = jax.random.split(key, len(self.groups))
    learners = {g.name: self._group_init(meta, g, k) for g, k in zip(self.groups, keys)}
    zero_x = jnp.zeros((self.batch,) + tuple(self.x_shape))
    zero_y = (jnp.zeros((self.batch,), jnp.int32) if self.task == "classification"
              else jnp.zeros((self.batch, self.out_dim)))
    u = meta["u"]
    return {
        "learners": learners, "prev": learners, "u": u,
        "u_rms": jax.tree.map(jnp.zeros_like, u),
        "prev_x": zero_x, "prev_y": zero_y,
        "log_w": {g.name: jax.nn.log_softmax(self._all(meta["log_prior"]))[
            self._slice(g)] for g in self.groups},
        "scale": jnp.zeros(()), "a_rms": jnp.zeros(()),
        "h": jnp.zeros((self.encoder_hidden,)), "t": jnp.zeros((), jnp.int32),
        **({"track_cov": {g.name: self._prior_cov(meta, learners[g.name].params)
                          for g in self.groups}} if self.tracker == "kalman" else {}),
    }

  def _all(self, per_group):
    """Concatenates {group: [K_g, ...]} in group order: [K, ...]."""
    return jnp.concatenate([per_group[g.name] for g in self.groups])

  def _slice(self, group):
    start = 0
    for g in self.groups:
      if g is group:
        return slice(start, start + g.size)
      start += g.size
    raise KeyError(group.name)

  def _effective_u(self, meta, state):
    if self.mode == "refine":
      return state["u"]
    enc = nnx.merge(self._graph, meta["encoder"])
    delta = enc.out(state["h"])
    index = {f: i for i, f in enumerate(self.family.continuous)}
    return {g: {f: v + delta[index[f]] for f, v in u.items()} for g, u in state["u"].items()}

  def _behave(self, group, hp, states, x):
    return jax.vmap(lambda h, s: learner.behave(group.family, h, s, x))(hp, states)

  def estimate(self, meta, state):
    """The inferred hyperparams: those of the most probable particle."""
    u = self._effective_u(meta, state)
    per_group = {g.name: self._hparams(g, u[g.name]) for g in self.groups}
    # A field a group's members lack (a rule's, or the networks' in a rule group): 0.
    zeros = lambda g, f: jnp.zeros((g.size,), jnp.int32 if f in family_lib.DISCRETE
                                   else jnp.float32)
    hp = {f: self._all({g.name: per_group[g.name].get(f, zeros(g, f)) for g in self.groups})
          for f in self.family.fields}
    best = jnp.argmax(self._all(state["log_w"]))
    return {f: v[best] for f, v in hp.items()}

  # ----------------------------------------------------------------- protocol

  def _predictions(self, meta, state, x):
    """{group: behaviour [K_g, n, out]} of every particle."""
    u = self._effective_u(meta, state)
    return {g.name: self._behave(g, self._hparams(g, u[g.name]),
                                 state["learners"][g.name], x) for g in self.groups}

  def _usable(self, preds, a_rms):
    """{group: [K_g]} whether each particle's predictions are finite and in range."""
    def ok(p):
      finite = jnp.all(jnp.isfinite(p), axis=(1, 2))
      if self.task == "classification":
        return finite
      return finite & (jnp.max(jnp.abs(p), axis=(1, 2)) <= _BLOWN_UP * (a_rms + 1.0))
    return {g: ok(p) for g, p in preds.items()}

  def _mix(self, log_w, preds, a_rms):
    """The posterior mixture of the usable particles' predictions [n, out]."""
    ok = self._all(self._usable(preds, a_rms))
    w = jax.nn.softmax(jnp.where(ok, self._all(log_w), -jnp.inf))
    w = jnp.where(ok, w, 0.0)
    mixed = jnp.einsum("k,kno->no", w, jnp.where(ok[:, None, None], self._all(preds), 0.0))
    if self.task == "classification":  # no usable particle: the uniform distribution
      mixed = jnp.where(ok.any(), mixed, 1.0 / self.out_dim)
    return mixed

  def predict(self, meta, state, x):
    return self._mix(state["log_w"], self._predictions(meta, state, x), state["a_rms"])

  def observe(self, meta, state, x, y, a, seen=True):
    preds = self._predictions(meta, state, x)
    due = state["t"] % self.refine_every == self.refine_every - 1
    return self._observe(meta, state, x, y, a, preds, due, seen)

  def unroll(self, meta, state, xs, ys, as_, fresh: bool = False, seen=None):
    """The scan of predict then observe. Which steps refine is counted from the start
    of `xs` (an unbatched flag, so that `lax.cond` skips the work under `vmap`):
    windows must start at multiples of `refine_every` to equal stepwise `observe`."""
    del fresh
    due = jnp.arange(xs.shape[0]) % self.refine_every == self.refine_every - 1

    def step(state, inputs):
      x, y, a, d, s = inputs
      preds = self._predictions(meta, state, x)
      new = self._observe(meta, state, x, y, a, preds, d, s)
      return new, self._mix(state["log_w"], preds, state["a_rms"])

    if self.remat:
      step = jax.checkpoint(step)
    return jax.lax.scan(step, state, (xs, ys, as_, due,
                                      all_seen(xs) if seen is None else seen))

  def _observe(self, meta, state, x, y, a, preds, due, seen):
    task = self.task
    # Unseen (or a teacher that blew up): the particles keep running on (x, y) with
    # their weights as they are; nothing that reads a (evidence, scales, refinement,
    # tracking, the encoder) moves.
    seen = seen & jnp.all(jnp.isfinite(a))
    a = jnp.where(seen, a, 0.0)
    started = state["t"] > 0
    ema = lambda old, new: jnp.where(started, _SCALE_DECAY * old + (1 - _SCALE_DECAY) * new,
                                     new)
    a_rms = jnp.where(seen, jnp.sqrt(ema(state["a_rms"] ** 2, jnp.mean(a * a))),
                      state["a_rms"])
    usable = self._usable(preds, a_rms)
    errs = {g: jnp.where(usable[g], metrics.divergence(task, a[None], p).mean(-1), jnp.inf)
            for g, p in preds.items()}
    mix_err = metrics.divergence(task, a, self._mix(state["log_w"], preds, a_rms)).mean()
    scale = jnp.where(seen, ema(state["scale"], mix_err), state["scale"])
    keep = jnp.where(seen, 1.0 - jax.nn.sigmoid(meta["forget_logit"]), 1.0)
    sharp = jnp.exp(meta["log_temp"]) / (scale + 1e-12)
    log_w = {g: keep * state["log_w"][g] - jnp.where(
        seen, jnp.minimum(sharp * errs[g], _MAX_EVIDENCE), 0.0) for g in errs}
    log_w = jax.tree.map(lambda v: v - jax.nn.logsumexp(self._all(log_w)), log_w)

    u, u_rms = state["u"], state["u_rms"]
    if self.mode != "amortized":
      active = seen & started
      if self.refine_every == 1:
        u, u_rms = self._refine(meta, state, x, a, active)
      else:  # only the refine is conditional: the rest of the step is traced once
        u, u_rms = jax.lax.cond(due, lambda: self._refine(meta, state, x, a, active),
                                lambda: (u, u_rms))

    h = state["h"]
    if self.mode != "refine":
      enc = nnx.merge(self._graph, meta["encoder"])
      best = self._mix(log_w, preds, a_rms)
      feats = jnp.concatenate([
          x.reshape(x.shape[0], -1) / jnp.sqrt(self.in_dim), self.target_features(y),
          a, a - best, jnp.ones((x.shape[0], 1))], -1).mean(0)
      h = jnp.where(seen, enc.gru(h, feats)[0], h)

    new_state = dict(state, u=u, u_rms=u_rms, h=h, log_w=log_w, scale=scale, a_rms=a_rms)
    u_eff = self._effective_u(meta, new_state)
    fraction = jnp.where(seen, jax.nn.sigmoid(meta["track_logit"]), 0.0)
    tracked, learned, covs = {}, {}, {}
    for g in self.groups:
      hp = self._hparams(g, u_eff[g.name])
      if g.family.beyond_gradient:
        # A rule's state is not weights that tracking could pull: it runs as the member.
        tracked[g.name] = state["learners"][g.name]
        if self.tracker == "kalman":
          covs[g.name] = state["track_cov"][g.name]
        learned[g.name] = jax.vmap(lambda h_k, s_k: learner.step(g.family, h_k, s_k, x,
                                                                 y)[0])(hp, tracked[g.name])
        continue
      if self.tracker == "kalman":
        tracked[g.name], covs[g.name] = jax.vmap(
            lambda h_k, s_k, c_k: self._kalman_track(meta, g, h_k, s_k, c_k, x, a, seen))(
                hp, state["learners"][g.name], state["track_cov"][g.name])
      else:
        tracked[g.name] = jax.vmap(
            lambda h_k, s_k: self._track(g, h_k, s_k, x, a, fraction))(
                hp, state["learners"][g.name])
      learned[g.name] = jax.vmap(lambda h_k, s_k: self._learn(g, h_k, s_k, x, y, a_rms))(
          hp, tracked[g.name])
    new_state.update(learners=learned, prev=tracked, prev_x=x, prev_y=y,
                     t=state["t"] + 1)
    if self.tracker == "kalman":
      new_state["track_cov"] = covs
    if self.meta_grad == "evidence":
      for key in ("learners", "prev", "u", "u_rms", "h"):
        new_state[key] = jax.lax.stop_gradient(new_state[key])
    return self._restart_blown(meta, new_state, usable)

  def _restart_blown(self, meta, state, usable):
    """Particles that blew up (outputs out of range now, or weights not finite after
    the step) start again from the initial weights and hyperparams, with a small
    weight: the imitator stays finite whatever its estimates do to its learners."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in state.items()}
    floor = jnp.log(1e-3 / self.particles)
    for g in self.groups:
      learners = state["learners"][g.name]
      finite = jax.vmap(lambda p: jnp.all(jnp.stack(
          [jnp.all(jnp.isfinite(l)) for l in jax.tree.leaves(p)
           if jnp.issubdtype(l.dtype, jnp.floating)])))((learners.params, learners.rules))
      bad = ~(usable[g.name] & finite)
      fresh = self._group_init(meta, g, jax.random.key(0))._replace(key=learners.key,
                                                                    step=learners.step)
      pick = lambda new, old: jnp.where(bad.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)
      out["learners"][g.name] = jax.tree.map(pick, fresh, learners)
      out["prev"][g.name] = jax.tree.map(pick, fresh, state["prev"][g.name])
      out["u"][g.name] = jax.tree.map(pick, meta["u"][g.name], state["u"][g.name])
      out["u_rms"][g.name] = jax.tree.map(lambda r: jnp.where(bad, 0.0, r),
                                          state["u_rms"][g.name])
      out["log_w"][g.name] = jnp.where(bad, floor, state["log_w"][g.name])
      if self.tracker == "kalman":
        out["track_cov"][g.name] = jax.tree.map(
            pick, self._prior_cov(meta, fresh.params), state["track_cov"][g.name])
    out["log_w"] = jax.tree.map(lambda v: v - jax.nn.logsumexp(self._all(out["log_w"])),
                                out["log_w"])
    return out

  def _track(self, group, hp, s, x, a, fraction):
    """One particle's weights (and anchor) moved toward the behaviour a."""
    fam = group.family
    apply = lambda p: learner.outputs(fam, hp, p, x)
    correction = lambda out: tracking.output_correction(self.task, out, a,
                                                        hp["temperature"])
    moved, _ = tracking.affine_projection(apply, s.params, fraction, correction)
    if fam.uses_anchor:
      # The anchor starts as the initial weights, whose error tracking is correcting.
      delta = jax.tree.map(jnp.subtract, moved, s.params)
      s = s._replace(anchor=jax.tree.map(jnp.add, s.anchor, delta))
    return s._replace(params=moved)

  @staticmethod
  def _layers(params):
    """{'kind/layer': {"w", "b"}} of a learner's superset params {kind: {layer: ...}}."""
    return {f"{kind}/{layer}": v for kind, net in params.items() for layer, v in net.items()}

  @staticmethod
  def _unlayers(layers):
    out = {}
    for name, v in layers.items():
      kind, layer = name.split("/")
      out.setdefault(kind, {})[layer] = v
    return out

  def _prior_diag(self, meta, params):
    """The diagonal of the Kalman prior M, exp(log_track_scale) for every weight, in
    `tracking.unit_blocks` layout {'kind/layer': [out, in + 1]}."""
    scale = jnp.exp(meta["log_track_scale"])
    return jax.tree.map(lambda v: jnp.full(v.shape, scale),
                        tracking.unit_blocks(self._layers(params)))

  def _prior_cov(self, meta, params):
    """P = M for the particles of a group, params [K, ...] -> {'kind/layer': [K, out,
    in + 1, in + 1]}."""
    one = lambda p: jax.tree.map(jax.vmap(jnp.diag), self._prior_diag(meta, p))
    return jax.vmap(one)(params)

  def _kalman_track(self, meta, group, hp, s, cov, x, a, seen):
    """`_track` by the Kalman step: (state, covariance after the step). Unseen: the
    weights stay, the covariance gets its time update alone (the random walk)."""
    fam = group.family
    layers = self._layers(s.params)
    apply = lambda lay: learner.outputs(fam, hp, self._unlayers(lay), x)
    correction = lambda out: tracking.output_correction(self.task, out, a,
                                                        hp["temperature"])
    prior, noise = self._prior_diag(meta, s.params), jnp.exp(meta["log_process_noise"])
    moved, new_cov, _ = tracking.kalman_projection(
        apply, layers, jnp.exp(-meta["track_logit"]), correction, cov, noise, prior)
    moved = jax.tree.map(lambda n, o: jnp.where(seen, n, o), self._unlayers(moved),
                         s.params)
    new_cov = jax.tree.map(
        lambda c, c0, m: jnp.where(seen, c, c0 + jax.vmap(jnp.diag)(noise * m)),
        new_cov, cov, prior)
    if fam.uses_anchor:
      delta = jax.tree.map(jnp.subtract, moved, s.params)
      s = s._replace(anchor=jax.tree.map(jnp.add, s.anchor, delta))
    return s._replace(params=moved), new_cov

  def _learn(self, group, hp, s, x, y, a_rms):
    """One particle's learner step from its state s on (x, y), shortened by
    `tracking.safeguard_to` only where it would raise the loss on (x, y) above both its
    value before and that of outputs _ROOM x the behaviour's RMS a_rms [] away from y
    (regression; classification: above its value before): a particle whose estimated
    step size is beyond the stability bound of the inputs (a covariate shift, a teacher
    near the bound) cannot diverge, while the steps of a bounded teacher, overshooting
    ones included, are taken as they are (a particle with its hyperparams is it)."""
    fam = group.family
    loss = lambda p: learner.data_loss(fam, hp, p, x, y)[0]
    value, grads = jax.value_and_grad(loss)(s.params)
    moved = learner.update(fam, hp, s, x, y, grads=grads, perturbation_noise=False)
    delta = jax.tree.map(jnp.subtract, moved.params, s.params)
    ceiling = (0.0 if self.task == "classification" else
               0.5 * self.out_dim * (_ROOM * a_rms) ** 2)
    delta, _ = tracking.safeguard_to(loss, s.params, delta, grads, value, ceiling)
    # The optimizer state, the anchor and the replay buffer are the learner's own: a
    # shortened step changes only where the weights land.
    return moved._replace(params=jax.tree.map(jnp.add, s.params, delta))

  def _refine(self, meta, state, x, a, active):
    """u moved down the one-step prediction error through each particle's last
    update, RMS-normalized per field."""
    task = self.task
    delta = {}
    if self.mode == "both":
      u_eff = self._effective_u(meta, state)
      delta = {g: jax.tree.map(jnp.subtract, u_eff[g], state["u"][g]) for g in u_eff}
    new_u, new_rms = {}, {}
    settle = 1.0
    if self.refine_settle_after:
      settle = jnp.minimum(1.0, self.refine_settle_after / (state["t"] + 1.0))
    for g in self.groups:
      def one_step_error(u_k, d_k, prev_k, codes_k):
        u_in = {f: u_k[f] + d_k[f] for f in u_k} if d_k else u_k
        hp_k = g.family.from_unconstrained(u_in, codes_k)
        if g.family.beyond_gradient:
          moved = learner.step(g.family, hp_k, prev_k, state["prev_x"], state["prev_y"])[0]
        else:
          moved = learner.update(g.family, hp_k, prev_k, state["prev_x"], state["prev_y"],
                                 perturbation_noise=False)
        return metrics.divergence(task, a, learner.behave(g.family, hp_k, moved, x)).mean()

      # First order in the outer loop: the meta-gradient does not differentiate the
      # hypergradient itself (a second derivative through the learner's update).
      grads = jax.lax.stop_gradient(jax.vmap(jax.grad(one_step_error))(
          state["u"][g.name], delta.get(g.name, {}), state["prev"][g.name], g.codes))
      grads = jax.tree.map(lambda v: jnp.where(jnp.isfinite(v), v, 0.0), grads)
      rms = jax.tree.map(lambda r, gr: jnp.where(
          active, _RMS_DECAY * r + (1 - _RMS_DECAY) * gr * gr, r), state["u_rms"][g.name],
          grads)
      new_rms[g.name] = rms
      new_u[g.name] = {f: state["u"][g.name][f] - jnp.where(
          active, settle * jnp.exp(meta["log_refine"][f]), 0.0) * grads[f] / (
              jnp.sqrt(rms[f]) + 1e-12) for f in grads}
    return new_u, new_rms
