"""The non-gradient rules (kalman, knn, passive_aggressive, prototype) against an
independent float64 NumPy reference that reads only a teacher dump.

Each case writes one member's dump with `learners.teacher_dump` (the package is used only
to sample the member's hyperparams, roll it out and write the file) and reads it back with
`np.load`. The reference below is written from the rules' documented semantics, not from
the code: phi(x) = [x.ravel() / sqrt(in_dim), 1]; the answer to the whole batch from the
state before learning, then learning from its examples one at a time, in order:
  kalman              Bayesian linear regression with drifting weights (W, P);
  knn                 the mean target of the nearest slots of a sliding window;
  passive_aggressive  PA-I, epsilon-insensitive, multi-output;
  prototype           winner-takes-all competitive learning, from the dump's initial
                      centers (the only part of the state it reads from the file).
Its behaviour and loss must equal the dumped ones at every step, for regression with
B = 1 and B = 3 and for classification; knn's window wraps within the stream, with one
neighbour and the maximum. Near-ties of an argmin (where float32 and float64 could pick
different slots) are asserted absent, so a mismatch is never a rounding accident.

Also checked: the dump's initial state of every rule is the documented one; a mixed
population (several rules in one `family.sample`) rolled out by one vmap gives each
member its own single rollout; and the reference is sensitive: with one hyperparam of
each rule changed (e.g. kalman's drift q set to 0) it misses the dump.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from learners import family as family_lib
from learners import rollout, teacher_dump
from learners.streams import Stream

RULES = ("kalman", "knn", "passive_aggressive", "prototype")
# The code table of the `rule` hyperparam (the dump's codes/rule).
RULE_CODES = family_lib.CODE_TABLES["rule"]
# knn's window: the streams below wrap it (48 examples or more), and it holds more than
# the family's max_neighbours, so even the maximum picks a subset of it
WINDOW = 12
HORIZON = 48
DIM = 6
OUT = 2
N_CLASSES = 3
RTOL, ATOL = 1e-4, 1e-5
# Relative margin an argmin must clear (float32 distances err by ~1e-6 relative).
TIE_MARGIN = 1e-4

# setting -> (task, x_shape, batch, stream seed)
SETTINGS = {
    "regression_b1": ("regression", (DIM,), 1, 0),
    "regression_b3": ("regression", (DIM,), 3, 1),
    "classification_b1": ("classification", (2, 3), 1, 2),
}


# ------------------------------------------------------------------ the NumPy reference
#
# Reads only np.load's arrays: x, y, hparams/<field>, codes/rule, the description JSON,
# and init_rules/prototype/centers.


def _phi(x):
  x = x.ravel()
  return np.concatenate([x / np.sqrt(x.size), [1.0]])


class Kalman:

  def __init__(self, hp, desc, arrays, in_dim, out_dim):
    d = in_dim + 1
    self.w = np.zeros((d, out_dim))
    self.p = hp["init_scale"] ** 2 * np.eye(d)
    self.q, self.r = hp["kalman_drift"], hp["kalman_noise"]

  def predict(self, x):
    return _phi(x) @ self.w, np.inf

  def learn(self, x, t):
    phi = _phi(x)
    p_minus = self.p + self.q * np.eye(len(phi))
    p_phi = p_minus @ phi
    k = p_phi / (phi @ p_phi + self.r)
    self.w = self.w + np.outer(k, t - phi @ self.w)
    self.p = p_minus - np.outer(k, p_phi)


class Knn:

  def __init__(self, hp, desc, arrays, in_dim, out_dim):
    self.m = desc["window"]
    self.x, self.y, self.count = np.zeros((self.m, in_dim)), np.zeros((self.m, out_dim)), 0
    self.k = int(hp["neighbours"])
    assert 1 <= self.k <= desc["max_neighbours"]

  def predict(self, x):
    filled = min(self.count, self.m)
    if not filled:
      return np.zeros(self.y.shape[1]), np.inf
    x = x.ravel()
    d = np.sum((self.x[:filled] - x) ** 2, -1)
    order = np.argsort(d, kind="stable")  # ties: lowest slot first
    n = min(self.k, filled)
    margin = np.inf
    if n < filled:  # the n-th and the (n+1)-th nearest must be told apart
      scale = x @ x + np.max(np.sum(self.x[:filled] ** 2, -1)) + 1.0
      margin = (d[order[n]] - d[order[n - 1]]) / scale
    return self.y[order[:n]].mean(0), margin

  def learn(self, x, t):
    slot = self.count % self.m
    self.x[slot], self.y[slot] = x.ravel(), t
    self.count += 1


class PassiveAggressive:

  def __init__(self, hp, desc, arrays, in_dim, out_dim):
    self.w = np.zeros((in_dim + 1, out_dim))
    self.eps, self.c = hp["pa_epsilon"], hp["pa_aggressiveness"]

  def predict(self, x):
    return _phi(x) @ self.w, np.inf

  def learn(self, x, t):
    phi = _phi(x)
    e = t - phi @ self.w
    norm = np.linalg.norm(e)
    loss = max(0.0, norm - self.eps)
    if loss > 0:
      tau = min(self.c, loss / (phi @ phi))
      self.w = self.w + tau * np.outer(phi, e / norm)


class Prototype:

  def __init__(self, hp, desc, arrays, in_dim, out_dim):
    self.centers = arrays["init_rules/prototype/centers"].astype(np.float64).copy()
    assert self.centers.shape == (desc["prototypes"], in_dim)
    self.values = np.zeros((desc["prototypes"], out_dim))
    self.eta_c, self.eta_v = hp["prototype_rate"], hp["value_rate"]

  def winner(self, x):
    x = x.ravel()
    d = np.sum((self.centers - x) ** 2, -1)
    j = int(np.argmin(d))  # ties: lowest index
    margin = np.inf
    if len(d) > 1:
      scale = x @ x + np.max(np.sum(self.centers ** 2, -1)) + 1.0
      margin = (np.partition(d, 1)[1] - d[j]) / scale
    return j, margin

  def predict(self, x):
    j, margin = self.winner(x)
    return self.values[j].copy(), margin

  def learn(self, x, t):
    j, _ = self.winner(x)
    self.centers[j] += self.eta_c * (x.ravel() - self.centers[j])
    self.values[j] += self.eta_v * (t - self.values[j])


REFERENCES = {"kalman": Kalman, "knn": Knn, "passive_aggressive": PassiveAggressive,
              "prototype": Prototype}


def hparams_of(arrays):
  return {k.split("/", 1)[1]: arrays[k].item() for k in arrays if k.startswith("hparams/")}


def reproduce(arrays, **override):
  """(behaviour [T, B, out], loss [T], smallest argmin margin) of the dumped member, with
  any hyperparam replaced by `override`."""
  desc = json.loads(str(arrays["description"]))
  hp = {**hparams_of(arrays), **override}
  rule = str(arrays["codes/rule"][int(hp["rule"])])
  task, out_dim = desc["task"], desc["out_dim"]
  x_all = arrays["x"].astype(np.float64)
  T, B = x_all.shape[:2]
  in_dim = int(np.prod(desc["x_shape"]))
  assert x_all.shape[2:] == tuple(desc["x_shape"])
  if task == "classification":
    labels = arrays["y"].astype(np.int64)
    targets = np.eye(out_dim)[labels]
  else:
    targets = arrays["y"].astype(np.float64)
  learner = REFERENCES[rule](hp, desc, arrays, in_dim, out_dim)
  behaviour, losses, margin = [], [], np.inf
  for t in range(T):
    answers = [learner.predict(x) for x in x_all[t]]  # the state before learning
    out = np.stack([a[0] for a in answers])
    margin = min([margin] + [a[1] for a in answers])
    if task == "classification":
      z = out / hp["temperature"]
      z = z - z.max(-1, keepdims=True)
      log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
      behaviour.append(np.exp(log_p))
      losses.append(-np.mean(log_p[np.arange(B), labels[t]]))
    else:
      behaviour.append(out)
      losses.append(0.5 * np.mean(np.sum((out - targets[t]) ** 2, -1)))
    for i in range(B):  # then learns from the examples one at a time, in order
      learner.learn(x_all[t, i], targets[t, i])
  return np.stack(behaviour), np.array(losses), margin


# ------------------------------------------------------------------ dumps (package side)


def make_stream(task, x_shape, batch, seed, horizon=HORIZON):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(horizon, batch) + x_shape).astype(np.float32)
  flat = x.reshape(horizon, batch, -1)
  if task == "classification":
    a = rng.normal(size=(flat.shape[-1], N_CLASSES))
    y = np.argmax(flat @ a, -1)
    y = np.where(rng.uniform(size=y.shape) < 0.2, rng.integers(0, N_CLASSES, y.shape), y)
    y = y.astype(np.int32)
  else:
    a = rng.normal(size=(flat.shape[-1], OUT)) / np.sqrt(flat.shape[-1])
    y = (flat @ a + 0.1 * rng.normal(size=(horizon, batch, OUT))).astype(np.float32)
  return Stream(jnp.asarray(x), jnp.asarray(y), jnp.zeros((horizon,), jnp.int32))


@functools.lru_cache(maxsize=None)
def make_family(task, x_shape):
  """The beyond_gradient preset with a small window (equal families share a compile)."""
  return family_lib.from_config({"name": "beyond_gradient", "window": WINDOW}, task,
                                x_shape, N_CLASSES if task == "classification" else OUT)


def member(family, rule, seed, **fixed):
  hp = family.sample(jax.random.key(seed), 1,
                     fixed={"rule": RULE_CODES.index(rule), **fixed})
  return {f: v[0] for f, v in hp.items()}


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
  """dump(rule, setting, neighbours=None) -> the arrays np.load reads from its file."""
  root = tmp_path_factory.mktemp("rule_dumps")

  @functools.lru_cache(maxsize=None)
  def dump(rule, setting, neighbours=None):
    task, x_shape, batch, seed = SETTINGS[setting]
    family = make_family(task, x_shape)
    fixed = {} if neighbours is None else {"neighbours": neighbours}
    hp = member(family, rule, 10 + RULES.index(rule), **fixed)
    stream = make_stream(task, x_shape, batch, seed)
    name = f"{rule}_{setting}_{neighbours}.npz"
    teacher_dump.save(str(root / name),
                      teacher_dump.record(family, hp, jax.random.key(seed), stream))
    with np.load(str(root / name), allow_pickle=False) as f:
      return {k: f[k] for k in f.files}

  return dump


def _max_neighbours(task, x_shape):
  return make_family(task, x_shape).max_neighbours


# ------------------------------------------------------------------ tests


def check(arrays, where):
  behaviour, loss, margin = reproduce(arrays)
  assert margin > TIE_MARGIN, (f"{where}: an argmin is a near-tie (margin {margin:.2g}); "
                               f"pick another stream seed")
  assert behaviour.shape == arrays["behaviour"].shape
  for t in range(len(loss)):
    np.testing.assert_allclose(arrays["behaviour"][t], behaviour[t], rtol=RTOL, atol=ATOL,
                               err_msg=f"{where}: behaviour at step {t}")
    np.testing.assert_allclose(arrays["loss"][t], loss[t], rtol=RTOL, atol=ATOL,
                               err_msg=f"{where}: loss at step {t}")


CASES = [(rule, setting, None) for rule in RULES for setting in SETTINGS
         if rule != "knn"]
CASES += [("knn", setting, k) for setting in SETTINGS for k in (1, "max")]


@pytest.mark.parametrize("rule,setting,neighbours", CASES)
def test_reference_reproduces_the_dump(dumps, rule, setting, neighbours):
  task, x_shape = SETTINGS[setting][:2]
  if neighbours == "max":
    neighbours = _max_neighbours(task, x_shape)
    assert neighbours > 1
  arrays = dumps(rule, setting, neighbours)
  desc = json.loads(str(arrays["description"]))
  hp = hparams_of(arrays)
  assert str(arrays["codes/rule"][int(hp["rule"])]) == rule
  assert tuple(str(r) for r in arrays["codes/rule"]) == RULE_CODES
  assert rule in desc["support"]["rule"]
  if rule == "knn":
    assert int(hp["neighbours"]) == neighbours
    T, B = arrays["x"].shape[:2]
    assert desc["window"] == WINDOW and T * B > 2 * WINDOW  # the window wraps
    assert desc["max_neighbours"] < WINDOW  # the maximum still picks a subset
  check(arrays, f"{rule} {setting}")


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_dump_holds_the_documented_initial_state(dumps, setting):
  arrays = dumps("prototype", setting)
  desc = json.loads(str(arrays["description"]))
  hp = hparams_of(arrays)
  in_dim, out_dim = int(np.prod(desc["x_shape"])), desc["out_dim"]
  d, m, k = in_dim + 1, desc["window"], desc["prototypes"]
  want = {
      "kalman/w": np.zeros((d, out_dim)),
      "kalman/p": hp["init_scale"] ** 2 * np.eye(d),
      "knn/x": np.zeros((m, in_dim)), "knn/y": np.zeros((m, out_dim)), "knn/count": 0,
      "passive_aggressive/w": np.zeros((d, out_dim)),
      "prototype/centers": None,  # random: checked below
      "prototype/values": np.zeros((k, out_dim)),
  }
  want = {key: v for key, v in want.items() if key.split("/")[0] in desc["support"]["rule"]}
  found = {key[len("init_rules/"):] for key in arrays if key.startswith("init_rules/")}
  assert found == set(want), (f"init_rules keys: documented {sorted(want)}, dumped "
                              f"{sorted(found)}")
  for key, value in want.items():
    if value is not None:
      got = arrays[f"init_rules/{key}"]
      assert got.shape == np.shape(value), key
      np.testing.assert_allclose(got, value, rtol=1e-6, atol=0, err_msg=key)
  centers = arrays["init_rules/prototype/centers"]
  assert centers.shape == (k, in_dim) and np.all(np.isfinite(centers))
  assert len(np.unique(centers.round(6), axis=0)) == k  # random, distinct


# rule -> hyperparams that must make the reference miss the dump (regression, B = 3)
WRONG = {
    "kalman": lambda hp: {"kalman_drift": 0.0},
    "knn": lambda hp: {"neighbours": 2},  # the dump's member has 1 neighbour
    "passive_aggressive": lambda hp: {"pa_epsilon": 0.0 if hp["pa_epsilon"] else 0.1},
    "prototype": lambda hp: {"prototype_rate": 0.0},
}


@pytest.mark.parametrize("rule", RULES)
def test_reference_misses_the_dump_with_a_wrong_hyperparam(dumps, rule):
  arrays = dumps(rule, "regression_b3", 1 if rule == "knn" else None)
  hp = hparams_of(arrays)
  behaviour = reproduce(arrays)[0]
  wrong = reproduce(arrays, **WRONG[rule](hp))[0]
  assert np.abs(behaviour - arrays["behaviour"]).max() < 1e-4
  assert np.abs(wrong - arrays["behaviour"]).max() > 1e-3, (rule, hp)


@pytest.mark.slow  # default suite budget; .ci/run runs it
def test_mixed_population_gives_each_member_its_single_rollout(dumps):
  task, x_shape, batch, seed = SETTINGS["regression_b3"]
  family = make_family(task, x_shape)
  n = 8
  hp = family.sample(jax.random.key(3), n)
  codes = np.asarray(hp["rule"])
  names = {RULE_CODES[c] for c in codes}
  assert len(names) >= 3 and len(names & set(RULES)) >= 2, names
  keys = jax.random.split(jax.random.key(4), n)
  stream = make_stream(task, x_shape, batch, seed)
  traj = jax.jit(lambda h, k, s: rollout.population_rollout(family, h, k, s,
                                                            shared_stream=True))(
      hp, keys, stream)
  for i in range(n):
    one = family.member(hp, i)
    arrays = teacher_dump.record(family, one, keys[i], stream)
    rule = RULE_CODES[codes[i]]
    np.testing.assert_allclose(traj.behaviour[i], arrays["behaviour"], rtol=1e-5,
                               atol=1e-6, err_msg=f"member {i} ({rule}): behaviour")
    np.testing.assert_allclose(traj.loss[i], arrays["loss"], rtol=1e-5, atol=1e-6,
                               err_msg=f"member {i} ({rule}): loss")
    if rule in RULES:  # and the population's member is the reference's
      check(arrays, f"population member {i} ({rule})")
