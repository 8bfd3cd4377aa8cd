"""The family's update rules against an independent float64 NumPy reference.

The reference below is written from the documented semantics, not from the code: a
hand-derived forward and backward pass of the NTK-parametrized networks
(h = W x / sqrt(fan_in) + b, tanh hidden layers), the two losses, optax-semantics
optimizers (sgd, momentum, adam, rmsprop, all with coupled weight decay) and the
continual regularizers (L2 to anchor, online EWC, anchor EMA, reservoir replay,
shrink-and-perturb, several inner steps). Only the random draws (replay slots, reservoir
slots, perturbation noise) come from the small documented jax.random helpers of
`learners.regularizers`, called with the keys the learner is documented to derive; every
piece of arithmetic of the update is NumPy here.

The JAX side is driven through `learners.rollout.rollout` and compared at every step.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from learners import family as family_lib
from learners import learner, networks, optimizers, regularizers, rollout
from learners.family import Family
from learners.streams import Stream

DIM = 5
OUT = 2
N_CLASSES = 3
WIDTH = 4
BATCH = 3
HORIZON = 14
RTOL = ATOL = 1e-5

LEARNING_RATES = {"sgd": 0.2, "momentum": 0.05, "adam": 0.02, "rmsprop": 0.02}


# ----------------------------------------------------------------------------- helpers


def make_family(task="regression", nets=("mlp",), opts=("sgd",), regs=(),
                max_inner_steps=1, replay_size=8):
  return Family(name="test", task=task, x_shape=(DIM,),
                out_dim=N_CLASSES if task == "classification" else OUT, width=WIDTH,
                depth=1, networks=tuple(nets), activations=("tanh",),
                optimizers=tuple(opts), regularizers=tuple(regs),
                replay_size=replay_size, max_inner_steps=max_inner_steps)


def make_hparams(network="mlp", optimizer="sgd", **overrides):
  hp = dict(network=networks.NETWORKS.index(network),
            activation=networks.ACTIVATIONS.index("tanh"),
            optimizer=optimizers.OPTIMIZERS.index(optimizer),
            learning_rate=LEARNING_RATES[optimizer], momentum=0.8, beta2=0.95,
            weight_decay=1e-3, l2_strength=0.0, anchor_rate=0.0, ewc_strength=0.0,
            ewc_decay=0.9, replay_ratio=0.0, shrink=0.0, perturb=0.0, inner_steps=1,
            temperature=1.0, init_scale=1.0)
  hp.update(overrides)
  assert set(hp) == set(family_lib.FIELDS)
  return {k: jnp.asarray(v, jnp.int32 if k in family_lib.DISCRETE else jnp.float32)
          for k, v in hp.items()}


def make_stream(task, seed=0, horizon=HORIZON, batch=BATCH):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(horizon, batch, DIM)).astype(np.float32)
  if task == "classification":
    a = rng.normal(size=(DIM, N_CLASSES))
    y = np.argmax(np.einsum("tbd,dc->tbc", x, a), -1).astype(np.int32)
    # a few labels against the rule, so the learner keeps getting gradient
    y = np.where(rng.uniform(size=y.shape) < 0.2, rng.integers(0, N_CLASSES, y.shape), y)
    y = y.astype(np.int32)
  else:
    a = rng.normal(size=(DIM, OUT)) / np.sqrt(DIM)
    y = (np.einsum("tbd,do->tbo", x, a) + 0.1 * rng.normal(size=(horizon, batch, OUT)))
    y = y.astype(np.float32)
  return Stream(jnp.asarray(x), jnp.asarray(y), jnp.zeros((horizon,), jnp.int32))


@functools.partial(jax.jit, static_argnums=0)
def jax_rollout(family, hparams, init_key, stream):
  return rollout.rollout(family, hparams, init_key, stream, return_state=True)


def tmap(f, *trees):
  """Structure-only tree walk over nested dicts of numpy arrays."""
  if isinstance(trees[0], dict):
    return {k: tmap(f, *(t[k] for t in trees)) for k in trees[0]}
  return f(*trees)


def to_np(tree):
  return tmap(lambda a: np.asarray(a, np.float64), jax.tree.map(np.asarray, tree))


# ----------------------------------------------------------------------------- reference


def ref_forward(layers, x):
  """layers: [{'w','b'}, ...]; returns (outputs, inputs of every layer)."""
  h = x.reshape(x.shape[0], -1)
  inputs = []
  for i, layer in enumerate(layers):
    inputs.append(h)
    z = h @ layer["w"] / np.sqrt(layer["w"].shape[0]) + layer["b"]
    h = np.tanh(z) if i < len(layers) - 1 else z
  return h, inputs


def ref_backward(layers, inputs, d_out):
  """Hand-derived gradient of sum(d_out * outputs) w.r.t. every layer."""
  grads = [None] * len(layers)
  d = d_out
  for i in reversed(range(len(layers))):
    w = layers[i]["w"]
    fan_in = w.shape[0]
    grads[i] = {"w": inputs[i].T @ d / np.sqrt(fan_in), "b": d.sum(0)}
    if i > 0:
      a = inputs[i]  # tanh output of layer i - 1
      d = (d @ w.T / np.sqrt(fan_in)) * (1.0 - a * a)
  return grads


def ref_head_loss(task, out, y, temperature):
  """(behaviour, loss, d loss / d out)."""
  b = out.shape[0]
  if task == "classification":
    z = out / temperature
    z = z - z.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    onehot = np.eye(out.shape[-1])[y]
    loss = -np.mean(np.sum(onehot * logp, -1))
    return p, loss, (p - onehot) / (b * temperature)
  diff = out - y
  return out, 0.5 * np.mean(np.sum(diff * diff, -1)), diff / b


class Reference:
  """One member as an online learner, in float64 NumPy."""

  def __init__(self, family, hparams, state0):
    self.family = family
    self.task = family.task
    self.hp = {k: np.asarray(v).item() for k, v in hparams.items()}
    self.net = networks.NETWORKS[self.hp["network"]]
    self.opt = optimizers.OPTIMIZERS[self.hp["optimizer"]]
    self.template = state0.params  # shapes for the perturbation noise helper
    self.params = to_np(state0.params)
    zeros = lambda: tmap(np.zeros_like, self.params)
    self.trace, self.mu, self.nu, self.count = zeros(), zeros(), zeros(), 0
    self.anchor = tmap(np.copy, self.params)
    self.fisher = zeros()
    m = family.replay_size
    y_shape = () if self.task == "classification" else (family.out_dim,)
    self.buf_x = np.zeros((m, DIM))
    self.buf_y = np.zeros((m,) + y_shape, np.int64 if self.task == "classification" else
                          np.float64)
    self.buf_count = 0
    self.key = state0.key
    self.t = 0

  def data(self, params, x, y):
    """(behaviour, loss, gradient tree: zeros on the member's unused network)."""
    net = params[self.net]
    layers = [net[f"dense_{i}"] for i in range(len(net))]
    out, inputs = ref_forward(layers, x)
    behaviour, loss, d_out = ref_head_loss(self.task, out, y, self.hp["temperature"])
    g = ref_backward(layers, inputs, d_out)
    grads = tmap(np.zeros_like, params)
    grads[self.net] = {f"dense_{i}": g[i] for i in range(len(g))}
    return behaviour, loss, grads

  def optimizer_step(self, g, params):
    hp = self.hp
    lr = hp["learning_rate"]
    g = tmap(lambda g, w: g + hp["weight_decay"] * w, g, params)  # coupled decay
    if self.opt == "sgd":
      upd = tmap(lambda g: -lr * g, g)
    elif self.opt == "momentum":
      self.trace = tmap(lambda g, t: g + hp["momentum"] * t, g, self.trace)
      upd = tmap(lambda t: -lr * t, self.trace)
    elif self.opt == "adam":
      b1, b2 = hp["momentum"], hp["beta2"]
      self.count += 1
      c = self.count
      self.mu = tmap(lambda g, m: b1 * m + (1 - b1) * g, g, self.mu)
      self.nu = tmap(lambda g, n: b2 * n + (1 - b2) * g * g, g, self.nu)
      upd = tmap(lambda m, n: -lr * (m / (1 - b1**c)) /
                 (np.sqrt(n / (1 - b2**c)) + optimizers.EPS), self.mu, self.nu)
    else:  # rmsprop, optax semantics (eps_in_sqrt=True, its default): g / sqrt(nu + eps)
      d = hp["beta2"]
      self.nu = tmap(lambda g, n: d * n + (1 - d) * g * g, g, self.nu)
      upd = tmap(lambda g, n: -lr * g / np.sqrt(n + optimizers.EPS), g, self.nu)
    return tmap(np.add, params, upd)

  def step(self, x, y):
    x = np.asarray(x, np.float64)
    y = np.asarray(y)
    hp, regs = self.hp, self.family.regularizers
    behaviour, loss, g0 = self.data(self.params, x, y)
    k_sample, k_insert, k_perturb = jax.random.split(jax.random.fold_in(self.key, self.t), 3)

    if "replay" in regs:
      template = regularizers.Replay(
          x=jnp.zeros(self.buf_x.shape), y=jnp.zeros(self.buf_y.shape),
          count=jnp.asarray(self.buf_count, jnp.int32))
      idx = np.asarray(regularizers.replay_indices(template, k_sample, x.shape[0]))
      x_rep, y_rep = self.buf_x[idx], self.buf_y[idx]
      ratio = hp["replay_ratio"] if self.buf_count > 0 else 0.0

    params = self.params
    for i in range(hp["inner_steps"]):
      g = g0 if i == 0 else self.data(params, x, y)[2]
      if "replay" in regs:
        g_rep = self.data(params, x_rep, y_rep)[2]
        g = tmap(lambda a, b: (1 - ratio) * a + ratio * b, g, g_rep)
      g = tmap(lambda g, w, a, f: g + hp["l2_strength"] * (w - a)
               + hp["ewc_strength"] * f * (w - a), g, params, self.anchor, self.fisher)
      params = self.optimizer_step(g, params)

    if "ewc" in regs:
      d = hp["ewc_decay"]
      self.fisher = tmap(lambda f, g: d * f + (1 - d) * g * g, self.fisher, g0)
    r = hp["anchor_rate"]
    self.anchor = tmap(lambda a, w: a + r * (w - a), self.anchor, params)
    if "replay" in regs:
      m = self.buf_x.shape[0]
      slots = np.asarray(regularizers.reservoir_slots(
          jnp.asarray(self.buf_count, jnp.int32), m, k_insert, x.shape[0]))
      c = self.buf_count + np.arange(x.shape[0])
      assert np.all(slots[c < m] == c[c < m])  # fills in order first
      for i, s in enumerate(slots):  # sequential reservoir: a later example wins
        if s < m:
          self.buf_x[s], self.buf_y[s] = x[i], y[i]
      self.buf_count += x.shape[0]
    if "shrink_perturb" in regs:
      noise = to_np(regularizers.perturbation(self.template, k_perturb))
      params = tmap(lambda w, e: (1 - hp["shrink"]) * w + hp["perturb"] * e, params, noise)
    self.params = params
    self.t += 1
    return behaviour, loss


def reference_rollout(family, hparams, init_key, stream):
  state0 = learner.init(family, hparams, init_key)
  ref = Reference(family, hparams, state0)
  out = [ref.step(x, y) for x, y in zip(np.asarray(stream.x), np.asarray(stream.y))]
  return np.stack([o[0] for o in out]), np.array([o[1] for o in out]), ref


def check_against_reference(family, hparams, stream, key=0):
  init_key = jax.random.PRNGKey(key)
  traj, state = jax_rollout(family, hparams, init_key, stream)
  behaviour, loss, ref = reference_rollout(family, hparams, init_key, stream)
  for t in range(stream.x.shape[0]):
    np.testing.assert_allclose(traj.behaviour[t], behaviour[t], rtol=RTOL, atol=ATOL,
                               err_msg=f"behaviour at step {t}")
    np.testing.assert_allclose(traj.loss[t], loss[t], rtol=RTOL, atol=ATOL,
                               err_msg=f"loss at step {t}")
  for path, got in jax.tree_util.tree_flatten_with_path(state.params)[0]:
    want = functools.reduce(lambda t, k: t[k.key], path, ref.params)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL,
                               err_msg=f"final params {jax.tree_util.keystr(path)}")
  regs = family.regularizers
  if "ewc" in regs:
    chex.assert_trees_all_close(state.fisher, ref.fisher, rtol=RTOL, atol=1e-7)
  if family.uses_anchor:
    chex.assert_trees_all_close(state.anchor, ref.anchor, rtol=RTOL, atol=ATOL)
  if "replay" in regs:
    assert int(state.replay.count) == ref.buf_count
    np.testing.assert_allclose(state.replay.x, ref.buf_x, rtol=0, atol=0)
    np.testing.assert_allclose(state.replay.y, ref.buf_y, rtol=0, atol=0)
  return traj, behaviour


# ----------------------------------------------------------------------------- tests


def test_reference_gradient_matches_finite_differences():
  """Sanity of the reference itself: the hand-derived backward pass vs float64 FD."""
  rng = np.random.default_rng(1)
  for task in ("regression", "classification"):
    layers = [{"w": rng.normal(size=(DIM, WIDTH)), "b": rng.normal(size=WIDTH)},
              {"w": rng.normal(size=(WIDTH, 3)), "b": rng.normal(size=3)}]
    x = rng.normal(size=(4, DIM))
    y = (rng.integers(0, 3, 4) if task == "classification" else rng.normal(size=(4, 3)))

    def loss_of(ls):
      return ref_head_loss(task, ref_forward(ls, x)[0], y, 0.7)[1]

    out, inputs = ref_forward(layers, x)
    grads = ref_backward(layers, inputs, ref_head_loss(task, out, y, 0.7)[2])
    eps = 1e-6
    for i in range(2):
      for name in ("w", "b"):
        it = np.nditer(layers[i][name], flags=["multi_index"])
        for _ in it:
          idx = it.multi_index
          plus = [{k: v.copy() for k, v in l.items()} for l in layers]
          minus = [{k: v.copy() for k, v in l.items()} for l in layers]
          plus[i][name][idx] += eps
          minus[i][name][idx] -= eps
          fd = (loss_of(plus) - loss_of(minus)) / (2 * eps)
          assert abs(fd - grads[i][name][idx]) < 1e-7, (task, i, name, idx)


@pytest.mark.parametrize("net", ["linear", "mlp"])
@pytest.mark.parametrize("opt", optimizers.OPTIMIZERS)
def test_optimizer_regression(opt, net):
  family = make_family(nets=(net,), opts=(opt,))
  check_against_reference(family, make_hparams(net, opt), make_stream("regression"))


@pytest.mark.parametrize("net,opt", [("linear", "sgd"), ("mlp", "adam"), ("mlp", "rmsprop")])
def test_optimizer_classification(opt, net):
  family = make_family("classification", nets=(net,), opts=(opt,))
  hparams = make_hparams(net, opt, temperature=0.7)
  check_against_reference(family, hparams, make_stream("classification"))


REGULARIZER_CASES = {
    # name: (family kwargs, hparams with it on)
    "l2": (dict(regs=("l2",)), dict(l2_strength=0.5)),
    "l2_ema_anchor": (dict(regs=("l2",)), dict(l2_strength=0.5, anchor_rate=0.2)),
    "ewc": (dict(regs=("ewc",)), dict(ewc_strength=3.0, ewc_decay=0.9)),
    "ewc_ema_anchor": (dict(regs=("ewc",)),
                       dict(ewc_strength=3.0, ewc_decay=0.9, anchor_rate=0.2)),
    "replay": (dict(regs=("replay",), replay_size=8), dict(replay_ratio=0.5)),
    "shrink_perturb": (dict(regs=("shrink_perturb",)), dict(shrink=0.02, perturb=0.02)),
    "inner_steps": (dict(max_inner_steps=3), dict(inner_steps=3)),
}


# sgd isolates each part; adam with every part on is in the combination tests below.
@pytest.mark.parametrize("opt", ["sgd"])
@pytest.mark.parametrize("case", sorted(REGULARIZER_CASES))
def test_regularizer(case, opt):
  family_kw, on = REGULARIZER_CASES[case]
  family = make_family(opts=(opt,), **family_kw)
  check_against_reference(family, make_hparams("mlp", opt, **on), make_stream("regression"))


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_inner_steps_masked_below_maximum(inner_steps):
  """inner_steps < max_inner_steps: the masked extra steps must change nothing, also not
  adam's step count (a family with max 3, a member with 1 or 2)."""
  family = make_family(opts=("adam",), max_inner_steps=3)
  hparams = make_hparams("mlp", "adam", inner_steps=inner_steps)
  check_against_reference(family, hparams, make_stream("regression"))


COMBINED = dict(nets=networks.NETWORKS, opts=optimizers.OPTIMIZERS,
                regs=family_lib.REGULARIZERS, max_inner_steps=2, replay_size=8)
COMBINED_ON = dict(l2_strength=0.3, anchor_rate=0.1, ewc_strength=2.0, ewc_decay=0.9,
                   replay_ratio=0.4, shrink=0.01, perturb=0.01, inner_steps=2,
                   weight_decay=1e-2)


@pytest.mark.parametrize("net,opt", [pytest.param("mlp", "adam", marks=pytest.mark.slow),
                                     ("linear", "momentum"), ("mlp", "rmsprop")])
def test_combination_regression(net, opt):
  """Every regularizer at once in a mixed family: the unused network still decays,
  is pulled to its anchor and perturbed, as the superset state is documented to."""
  family = make_family(**COMBINED)
  check_against_reference(family, make_hparams(net, opt, **COMBINED_ON),
                          make_stream("regression", seed=3, horizon=16))


@pytest.mark.slow
def test_combination_classification():
  family = make_family("classification", **COMBINED)
  hparams = make_hparams("mlp", "sgd", temperature=1.5, **COMBINED_ON)
  check_against_reference(family, hparams, make_stream("classification", seed=4, horizon=16))


# ------------------------------------------------- each part changes the update, or not

# name: (family kwargs, on, off, first step whose behaviour must differ)
#  - l2/ewc: the penalty is 0 at step 0 (weights at the anchor; EWC also has F = 0), so
#    the update of step 1 is the first to change: behaviour differs from step 2.
#  - anchor EMA: the anchor first moves after step 0, so step 1's penalty differs.
#  - replay: the buffer is empty at step 0 (ratio forced to 0), filled after it.
#  - shrink-perturb and inner steps change the very first update.
EFFECT_CASES = {
    "l2": (dict(regs=("l2",)), dict(l2_strength=0.5), dict(l2_strength=0.0), 2),
    "ewc": (dict(regs=("ewc",)), dict(ewc_strength=3.0), dict(ewc_strength=0.0), 2),
    "anchor_ema": (dict(regs=("l2",)), dict(l2_strength=0.5, anchor_rate=0.2),
                   dict(l2_strength=0.5, anchor_rate=0.0), 2),
    "replay": (dict(regs=("replay",)), dict(replay_ratio=0.5), dict(replay_ratio=0.0), 2),
    "shrink_perturb": (dict(regs=("shrink_perturb",)), dict(shrink=0.02, perturb=0.02),
                       dict(shrink=0.0, perturb=0.0), 1),
    "inner_steps": (dict(max_inner_steps=3), dict(inner_steps=3), dict(inner_steps=1), 1),
}


@pytest.mark.parametrize("case", sorted(EFFECT_CASES))
def test_regularizer_changes_update_exactly_when_it_must(case):
  family_kw, on, off, first = EFFECT_CASES[case]
  family = make_family(opts=("sgd",), **family_kw)
  stream = make_stream("regression", seed=5)
  key = jax.random.PRNGKey(7)
  traj_on, _ = jax_rollout(family, make_hparams("mlp", "sgd", **on), key, stream)
  traj_off, _ = jax_rollout(family, make_hparams("mlp", "sgd", **off), key, stream)
  diff = np.abs(np.asarray(traj_on.behaviour) - np.asarray(traj_off.behaviour))
  diff = diff.reshape(diff.shape[0], -1).max(-1)
  # identical before its state is non-trivial ...
  np.testing.assert_array_less(diff[:first], 1e-6)
  # ... and measurably different from then on (100x the reference tolerance)
  assert diff[first] > 1e-4, (case, diff)
  assert diff[first:].min() > 1e-4, (case, diff)


# A strength of 0 must give the trajectory of the family without the part at all.
ZERO_CASES = {
    "l2": (dict(regs=("l2",)), dict(l2_strength=0.0, anchor_rate=0.3)),
    "ewc": (dict(regs=("ewc",)), dict(ewc_strength=0.0, ewc_decay=0.9, anchor_rate=0.3)),
    "replay": (dict(regs=("replay",)), dict(replay_ratio=0.0)),
    "shrink_perturb": (dict(regs=("shrink_perturb",)), dict(shrink=0.0, perturb=0.0)),
    "inner_steps": (dict(max_inner_steps=3), dict(inner_steps=1)),
    "all": (dict(regs=family_lib.REGULARIZERS, max_inner_steps=2), dict(anchor_rate=0.3)),
}


@pytest.mark.parametrize("case,opt", [(case, "sgd") for case in sorted(ZERO_CASES)]
                         + [("all", "adam")])
def test_strength_zero_changes_nothing(case, opt):
  family_kw, zero = ZERO_CASES[case]
  stream = make_stream("regression", seed=6)
  key = jax.random.PRNGKey(8)
  base = make_family(opts=(opt,))
  traj_base, state_base = jax_rollout(base, make_hparams("mlp", opt), key, stream)
  family = make_family(opts=(opt,), **family_kw)
  traj, state = jax_rollout(family, make_hparams("mlp", opt, **zero), key, stream)
  np.testing.assert_allclose(traj.behaviour, traj_base.behaviour, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(traj.loss, traj_base.loss, rtol=1e-6, atol=1e-6)
  chex.assert_trees_all_close(state.params, state_base.params, rtol=1e-6, atol=1e-6)
