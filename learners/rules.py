"""Members of the family that learn by a rule no gradient step expresses.

A member's `rule` (a code into `RULES`) picks how it learns; `gradient` is the network
trained by its optax optimizer (`learners.learner`), the others live here, each a small
state of arrays:

- `kalman`: Bayesian linear regression whose weights drift (a Kalman filter over the
  weights of a linear readout of the features phi). Prior W = 0 with covariance
  init_scale^2 I; per example, P- = P + q I (q = kalman_drift: old evidence fades, the
  Bayesian form of a forgetting factor), s = phi' P- phi + r (r = kalman_noise),
  k = P- phi / s, W += k (t - phi' W)', P = P- - k (P- phi)'.
- `knn`: the mean target of the `neighbours` nearest of the last `window` examples
  (squared Euclidean distance on the flattened input; ties to the lowest slot), a
  memory-based learner; it learns by storing the example over the oldest one.
- `passive_aggressive`: PA-I with the epsilon-insensitive loss on the target vector:
  e = t - phi' W, l = max(0, |e| - pa_epsilon), tau = min(pa_aggressiveness,
  l / |phi|^2), W += tau phi (e / |e|)'.
- `prototype`: competitive learning (winner takes all): `prototypes` centers in input
  space with a value each; the output is the value of the nearest center, which then
  moves toward the input by prototype_rate and its value toward the target by
  value_rate. Centers start at N(0, 1) draws from the member's key.

Features phi(x) = [x / sqrt(in_dim), 1] (the networks' NTK scaling); targets t are y
(regression) or one_hot(y) (classification, the raw outputs then being the logits of
the family's softmax head with its temperature). A step answers its B examples before
learning, then learns from them one at a time in order. Every rule's state is carried
by every member of a family that supports it (one `vmap` over a mixed population) and
only the member's own rule writes it.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

RULES = ("gradient", "kalman", "knn", "passive_aggressive", "prototype")
NON_GRADIENT = RULES[1:]


class Window(NamedTuple):
  """The knn memory: x [M, in_dim], y [M, out] (targets t), count = examples stored."""

  x: jax.Array
  y: jax.Array
  count: jax.Array


def features(x):
  """phi [B, in_dim + 1] from x [B, ...]."""
  h = x.reshape(x.shape[0], -1).astype(jnp.float32)
  h = h / jnp.sqrt(jnp.float32(h.shape[1]))
  return jnp.concatenate([h, jnp.ones((h.shape[0], 1), h.dtype)], axis=1)


def targets(task: str, out_dim: int, y):
  """t [B, out]: y, or one_hot(y) for classification."""
  if task == "classification":
    return jax.nn.one_hot(y, out_dim)
  return y.astype(jnp.float32)


def init(family, hparams, key) -> dict[str, Any]:
  """{rule: state} for the family's non-gradient rules (empty dict if none)."""
  d, out = family.in_dim + 1, family.out_dim
  states = {}
  for rule in family.rules:
    if rule == "kalman":
      states[rule] = {"w": jnp.zeros((d, out)),
                      "p": hparams["init_scale"] ** 2 * jnp.eye(d)}
    elif rule == "knn":
      states[rule] = Window(jnp.zeros((family.window, family.in_dim)),
                            jnp.zeros((family.window, out)), jnp.zeros((), jnp.int32))
    elif rule == "passive_aggressive":
      states[rule] = {"w": jnp.zeros((d, out))}
    elif rule == "prototype":
      states[rule] = {"centers": jax.random.normal(key, (family.prototypes, family.in_dim)),
                      "values": jnp.zeros((family.prototypes, out))}
  return states


def _nearest(centers, x):
  """Index of the row of centers [K, D] nearest x [D] (ties: the lowest)."""
  return jnp.argmin(jnp.sum((centers - x) ** 2, axis=1))


def _knn_outputs(window: Window, neighbours, max_neighbours: int, x):
  """Mean target of the `neighbours` nearest stored examples to each row of x [B, D]."""
  m = window.x.shape[0]
  filled = jnp.arange(m) < jnp.minimum(window.count, m)
  k = min(max_neighbours, m)

  def one(xi):
    dist = jnp.where(filled, jnp.sum((window.x - xi) ** 2, axis=1), jnp.inf)
    _, idx = jax.lax.top_k(-dist, k)  # ascending distance, lower slot first on ties
    use = (jnp.arange(k) < neighbours) & filled[idx]
    w = use.astype(jnp.float32)
    return (w[:, None] * window.y[idx]).sum(0) / jnp.maximum(w.sum(), 1.0)

  return jax.vmap(one)(x)


def outputs(family, hparams, rule: str, state, x):
  """Raw outputs [B, out] of a non-gradient rule's state on x [B, ...]."""
  if rule in ("kalman", "passive_aggressive"):
    return features(x) @ state["w"]
  flat = x.reshape(x.shape[0], -1)
  if rule == "knn":
    return _knn_outputs(state, hparams["neighbours"], family.max_neighbours, flat)
  index = jax.vmap(lambda xi: _nearest(state["centers"], xi))(flat)
  return state["values"][index]


def _learn_one(hparams, rule: str, state, x, phi, t):
  """The rule's state after learning from one example (x [D], phi [D + 1], t [out])."""
  if rule == "kalman":
    p = state["p"] + hparams["kalman_drift"] * jnp.eye(phi.shape[0])
    p_phi = p @ phi
    gain = p_phi / (phi @ p_phi + hparams["kalman_noise"])
    w = state["w"] + jnp.outer(gain, t - phi @ state["w"])
    p = p - jnp.outer(gain, p_phi)
    return {"w": w, "p": 0.5 * (p + p.T)}  # symmetric as in exact arithmetic
  if rule == "passive_aggressive":
    e = t - phi @ state["w"]
    norm = jnp.sqrt(jnp.sum(e ** 2))
    loss = jnp.maximum(norm - hparams["pa_epsilon"], 0.0)
    tau = jnp.minimum(hparams["pa_aggressiveness"], loss / jnp.sum(phi ** 2))
    return {"w": state["w"] + jnp.outer(phi, tau * e / jnp.maximum(norm, 1e-12))}
  if rule == "knn":
    slot = state.count % state.x.shape[0]
    return Window(state.x.at[slot].set(x), state.y.at[slot].set(t), state.count + 1)
  j = _nearest(state["centers"], x)
  centers = state["centers"].at[j].add(hparams["prototype_rate"] * (x - state["centers"][j]))
  values = state["values"].at[j].add(hparams["value_rate"] * (t - state["values"][j]))
  return {"centers": centers, "values": values}


def learn(family, hparams, rule: str, state, x, y):
  """The rule's state after learning from the batch (x [B, ...], y), one example at a
  time in order."""
  xs = (x.reshape(x.shape[0], -1).astype(jnp.float32), features(x),
        targets(family.task, family.out_dim, y))
  state, _ = jax.lax.scan(lambda s, e: (_learn_one(hparams, rule, s, *e), None), state, xs)
  return state
