"""The family: sampling bounds, determinism, validation messages, config, describe, and
the stability of every preset over long default streams."""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from learners import family as family_lib
from learners import networks, optimizers, rollout, rules, streams
from learners.family import FAMILIES, Family
from learners.streams import StreamSpec

# What the family documents, written out here rather than read from the code:
# the field each regularizer switches on (exactly 0 when it is not in the family) ...
REGULARIZER_FIELDS = {"l2": ("l2_strength",), "ewc": ("ewc_strength", "ewc_decay"),
                      "replay": ("replay_ratio",), "shrink_perturb": ("shrink", "perturb")}
# ... and the learning-rate ranges per optimizer (factor 30 each).
LR_RANGES = {"sgd": (0.01, 0.3), "momentum": (0.003, 0.09), "adam": (0.001, 0.03),
             "rmsprop": (0.001, 0.03)}
N = 4000


def family(name, task="regression", **overrides):
  return family_lib.from_config({"name": name, **overrides}, task, (8,),
                                4 if task == "classification" else 1)


def np_hp(hp):
  return {k: np.asarray(v) for k, v in hp.items()}


CASES = [(name, task) for name in FAMILIES for task in ("regression", "classification")]
CASES += [("mixed", "regression", dict(lr_scale=1 / 30, max_inner_steps=3))]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c[:2])) +
                         ("-scaled" if len(c) > 2 else ""))
def test_sample_respects_bounds(case):
  name, task, *rest = case
  fam = family(name, task, **(rest[0] if rest else {}))
  hp = np_hp(fam.sample(jax.random.PRNGKey(0), N))
  assert set(hp) == set(family_lib.ALL_FIELDS if name == "beyond_gradient"
                        else family_lib.FIELDS)
  for field, v in hp.items():
    assert v.shape == (N,), field
    want = np.int32 if field in ("network", "activation", "optimizer", "inner_steps",
                                 "rule", "neighbours") else np.float32
    assert v.dtype == want, (field, v.dtype)
    assert np.all(np.isfinite(v)), field

  # discrete codes in the family's support, and every supported choice drawn
  for field, names, support in (("network", networks.NETWORKS, fam.networks),
                                ("activation", networks.ACTIVATIONS, fam.activations),
                                ("optimizer", optimizers.OPTIMIZERS, fam.optimizers)):
    allowed = {names.index(s) for s in support}
    assert set(hp[field].tolist()) == allowed, field
  assert set(hp["inner_steps"].tolist()) == set(range(1, fam.max_inner_steps + 1))
  if fam.beyond_gradient:
    assert set(hp["rule"].tolist()) == {rules.RULES.index(r) for r in fam.rules}
    assert set(hp["neighbours"].tolist()) == set(range(1, fam.max_neighbours + 1))

  # learning rate inside its own optimizer's range, spread log-uniformly over it
  for opt in fam.optimizers:
    low, high = (r * fam.lr_scale for r in LR_RANGES[opt])
    lr = hp["learning_rate"][hp["optimizer"] == optimizers.OPTIMIZERS.index(opt)]
    assert lr.size > 100
    assert lr.min() >= low * (1 - 1e-6) and lr.max() <= high * (1 + 1e-6), opt
    frac = (np.log(lr) - math.log(low)) / (math.log(high) - math.log(low))
    assert frac.min() < 0.05 and frac.max() > 0.95, opt
    assert abs(frac.mean() - 0.5) < 0.05, opt

  # regularizer fields: exactly 0 when the regularizer is not in the family
  for reg, fields in REGULARIZER_FIELDS.items():
    for field in fields:
      if reg not in fam.regularizers:
        assert np.all(hp[field] == 0.0), field
      else:
        assert np.any(hp[field] != 0), field
  uses_anchor = "l2" in fam.regularizers or "ewc" in fam.regularizers
  if not uses_anchor:
    assert np.all(hp["anchor_rate"] == 0.0)
  # shrink and perturb come on and off together, each about half the time
  on = hp["shrink"] > 0
  np.testing.assert_array_equal(on, hp["perturb"] > 0)
  if "shrink_perturb" in fam.regularizers:
    assert 0.4 < on.mean() < 0.6
  # every other continuous field inside the family's prior for it (0 only if it may be off)
  for field in fam.continuous:
    if field == "learning_rate":
      continue
    prior = fam.prior(field)
    v = hp[field]
    if prior.kind == "fixed":
      np.testing.assert_array_equal(v, np.float32(prior.low), err_msg=field)
      continue
    if prior.p_off:
      off = v == 0
      assert abs(off.mean() - prior.p_off) < 0.05, (field, off.mean())
      v = v[~off]
    assert v.min() >= prior.low * (1 - 1e-6) and v.max() <= prior.high * (1 + 1e-6), field
    assert v.min() < prior.low + 0.05 * (prior.high - prior.low), field  # spans the range
    assert v.max() > prior.high - 0.05 * (prior.high - prior.low), field
  if task == "regression":
    assert np.all(hp["temperature"] == 1.0)
  else:
    assert hp["temperature"].std() > 0.1
  fam.validate(hp)  # every sampled member is valid


def test_rules_leave_the_network_members_draws_unchanged():
  """beyond_gradient is small_mixed plus rules: a key draws the same network fields in
  both (old runs keep their teachers), and the rule fields of their own."""
  a = np_hp(family("small_mixed").sample(jax.random.PRNGKey(5), 256))
  b = np_hp(family("beyond_gradient").sample(jax.random.PRNGKey(5), 256))
  for f in family_lib.FIELDS:
    np.testing.assert_array_equal(a[f], b[f], err_msg=f)
  assert set(b) - set(a) == set(family_lib.RULE_FIELDS)
  narrow = family("beyond_gradient", rules="gradient,knn")
  c = np_hp(narrow.sample(jax.random.PRNGKey(5), 256))
  assert set(c["rule"].tolist()) == {0, 2}
  assert np.all(c["kalman_drift"] == 0) and np.all(c["value_rate"] == 0)  # rules it lacks
  with pytest.raises(ValueError, match="no hyperparam 'rule'"):
    family("small_mixed").sample(jax.random.PRNGKey(5), 4, fixed={"rule": 1})


@pytest.mark.slow
def test_sample_is_deterministic_per_key():
  fam = family("mixed")
  a = np_hp(fam.sample(jax.random.PRNGKey(1), 64))
  b = np_hp(fam.sample(jax.random.PRNGKey(1), 64))
  c = np_hp(fam.sample(jax.random.PRNGKey(2), 64))
  for f in family_lib.FIELDS:
    np.testing.assert_array_equal(a[f], b[f], err_msg=f)
  for f in ("learning_rate", "momentum", "init_scale", "optimizer"):
    assert not np.array_equal(a[f], c[f]), f
  # jittable with n static, same values
  jitted = np_hp(jax.jit(fam.sample, static_argnums=1)(jax.random.PRNGKey(1), 64))
  for f in family_lib.FIELDS:
    np.testing.assert_allclose(jitted[f], a[f], rtol=1e-6, err_msg=f)


def valid_member(fam, key=3):
  return fam.member(fam.sample(jax.random.PRNGKey(key), 1), 0)


def with_field(hp, field, value):
  out = dict(hp)
  out[field] = np.asarray(value, np.int32 if field in family_lib.DISCRETE else np.float32)
  return out


def test_validate_rejects_bad_members_with_a_clear_message():
  fam = family("mixed")  # max_inner_steps 2, every optimizer
  hp = valid_member(fam)
  fam.validate(hp)
  sgd = optimizers.OPTIMIZERS.index("sgd")
  adam = optimizers.OPTIMIZERS.index("adam")

  with pytest.raises(ValueError) as e:
    fam.validate(with_field(hp, "optimizer", 7))
  msg = str(e.value)
  assert "optimizer" in msg and "7" in msg
  assert all(o in msg for o in optimizers.OPTIMIZERS), msg

  sgd_hp = with_field(with_field(hp, "optimizer", sgd), "learning_rate", 0.1)
  fam.validate(sgd_hp)
  with pytest.raises(ValueError) as e:
    fam.validate(with_field(sgd_hp, "learning_rate", -0.1))
  msg = str(e.value)
  assert "learning_rate" in msg and "-0.1" in msg and "sgd" in msg, msg
  assert "0.01" in msg and "0.3" in msg, msg

  # 0.1 is a fine sgd rate but outside adam's range [0.001, 0.03]
  with pytest.raises(ValueError) as e:
    fam.validate(with_field(sgd_hp, "optimizer", adam))
  msg = str(e.value)
  assert "learning_rate" in msg and "0.1" in msg and "adam" in msg, msg
  assert "0.001" in msg and "0.03" in msg, msg

  for steps in (0, 3):
    with pytest.raises(ValueError) as e:
      fam.validate(with_field(hp, "inner_steps", steps))
    msg = str(e.value)
    # (the value may print as a numpy scalar, 'inner_steps=np.int32(3)')
    assert re.search(rf"inner_steps=(np\.int32\()?{steps}\b", msg) and "1..2" in msg, msg

  # a valid code outside this family's support
  lin = family("sgd_linear")
  lin_hp = valid_member(lin)
  with pytest.raises(ValueError) as e:
    lin.validate(with_field(with_field(lin_hp, "optimizer", adam), "learning_rate", 0.01))
  msg = str(e.value)
  assert "optimizer" in msg and "adam" in msg and "sgd" in msg, msg

  # a regularizer field set in a family without the regularizer
  with pytest.raises(ValueError) as e:
    lin.validate(with_field(lin_hp, "ewc_strength", 0.5))
  assert "ewc_strength" in str(e.value) and "0.5" in str(e.value)

  # a population is validated member by member
  pop = fam.sample(jax.random.PRNGKey(4), 8)
  fam.validate(pop)
  bad = dict(pop)
  bad["learning_rate"] = pop["learning_rate"].at[5].set(-1.0)
  with pytest.raises(ValueError, match="learning_rate=-1"):
    fam.validate(bad)


def test_with_overrides():
  fam = family("mixed")
  pop = fam.sample(jax.random.PRNGKey(5), 4)
  with pytest.raises(ValueError) as e:
    fam.with_overrides(pop, {"optimizer": "adamw"})
  msg = str(e.value)
  assert "adamw" in msg and all(o in msg for o in optimizers.OPTIMIZERS), msg
  with pytest.raises(ValueError, match="learning_rte"):
    fam.with_overrides(pop, {"learning_rte": 0.1})
  out = fam.with_overrides(pop, {"optimizer": "sgd", "learning_rate": 0.05,
                                 "inner_steps": 2})
  np.testing.assert_array_equal(out["optimizer"], optimizers.OPTIMIZERS.index("sgd"))
  np.testing.assert_allclose(out["learning_rate"], 0.05)
  assert out["optimizer"].dtype == jnp.int32 and out["learning_rate"].dtype == jnp.float32
  np.testing.assert_array_equal(out["momentum"], pop["momentum"])  # others untouched
  # an override that leaves the family is rejected (adam's range is [0.001, 0.03])
  with pytest.raises(ValueError, match="learning_rate"):
    fam.with_overrides(pop, {"optimizer": "adam", "learning_rate": 0.2})


def test_from_config():
  with pytest.raises(ValueError) as e:
    family_lib.from_config({"name": "no_such_family"}, "regression", (8,), 1)
  msg = str(e.value)
  assert "no_such_family" in msg and all(n in msg for n in FAMILIES), msg
  with pytest.raises(ValueError) as e:
    family_lib.from_config({"name": "mixed", "widht": 3}, "regression", (8,), 1)
  assert "widht" in str(e.value)
  fam = family_lib.from_config({"name": "mixed", "optimizers": "sgd, adam", "width": 5,
                                "depth": None}, "classification", (2, 3), 4)
  assert fam.optimizers == ("sgd", "adam") and fam.width == 5
  assert fam.depth == Family.depth  # None: the preset's value
  assert fam.in_dim == 6 and fam.task == "classification"
  with pytest.raises(ValueError, match="adamw"):
    family_lib.from_config({"name": "mixed", "optimizers": "sgd,adamw"}, "regression",
                           (8,), 1)


def test_describe_names_optimizer_rate_and_active_regularizers():
  fam = family("mixed", "classification")
  hp = valid_member(fam)
  on = fam.with_overrides(hp, dict(
      network="mlp", optimizer="adam", learning_rate=0.0123, l2_strength=0.05,
      ewc_strength=0.2, ewc_decay=0.95, replay_ratio=0.4, shrink=1e-4, perturb=1e-3,
      anchor_rate=0.0))
  text = fam.describe(on)
  for word in ("adam", "0.0123", "l2", "ewc", "replay", "shrink", "0.05", "0.2", "0.4"):
    assert word in text, (word, text)
  off = fam.with_overrides(hp, dict(
      network="linear", optimizer="rmsprop", learning_rate=0.002, l2_strength=0.0,
      ewc_strength=0.0, replay_ratio=0.0, shrink=0.0, perturb=0.0))
  text = fam.describe(off)
  assert "rmsprop" in text and "0.002" in text, text
  for word in ("l2", "ewc", "replay", "shrink"):
    assert word not in text, (word, text)


# ----------------------------------------------------------------------- stability

N_STABLE = 256
TASKS = ("regression", "classification")
HORIZON = StreamSpec().horizon * 16


N_STREAMS = 16  # distinct streams per condition, each seen by several members


@functools.lru_cache(maxsize=None)
def default_streams(kind):
  """N_STABLE default streams of 16x the default horizon, shared by every preset: the
  first half never switches tasks, the second half switches every default horizon.
  N_STREAMS distinct streams per half, tiled (generating 256 long streams would cost
  more than the rollouts of most presets)."""
  halves, specs = [], []
  for switch_every in (0, StreamSpec().horizon):
    spec = StreamSpec(kind=kind, horizon=HORIZON, task_switch_every=switch_every)
    keys = jax.random.split(jax.random.PRNGKey(1000 + switch_every), N_STREAMS)
    half = jax.jit(jax.vmap(lambda k: streams.synthetic_stream(spec, k)))(keys)
    reps = N_STABLE // 2 // N_STREAMS
    halves.append(jax.tree.map(lambda a: jnp.tile(a, (reps,) + (1,) * (a.ndim - 1)), half))
    specs.append(spec)
  return specs[0], jax.tree.map(lambda a, b: jnp.concatenate([a, b]), *halves)


@functools.partial(jax.jit, static_argnums=0)
def finite_rollouts(fam, hp, keys, stream):
  traj = rollout.population_rollout(fam, hp, keys, stream)
  return (jnp.isfinite(traj.behaviour).reshape(N_STABLE, -1).all(-1)
          & jnp.isfinite(traj.loss).all(-1))


# sgd_mlp stays in the default suite as the representative (the suite's time budget).
SLOW_PRESETS = ("sgd_mlp", "mixed", "small_mixed", "continual_mlp", "adam_mlp",
                "optimizers_mlp", "optimizers_linear", "sgd_linear", "beyond_gradient")


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n in SLOW_PRESETS else n
    for n in sorted(FAMILIES)])
def test_presets_are_stable_over_16x_the_default_horizon(name):
  """Per task, 256 sampled members on default streams of 16x the default horizon, half
  of them on streams that switch tasks every default horizon: every behaviour and loss
  finite. One jitted population call per (preset, task)."""
  for task, kind in (("regression", "linear_regression"),
                     ("classification", "linear_classification")):
    spec, stream = default_streams(kind)
    assert stream.x.shape == (N_STABLE, HORIZON, spec.batch, spec.dim)
    half = N_STABLE // 2
    assert np.all(np.asarray(stream.task_id[:half]) == 0)
    assert int(stream.task_id[half, -1]) == 15
    fam = family_lib.from_config({"name": name}, task, (spec.dim,),
                                 spec.n_classes if task == "classification" else
                                 spec.out_dim)
    key = jax.random.fold_in(jax.random.PRNGKey(sorted(FAMILIES).index(name)),
                             TASKS.index(task))
    k_hp, k_init = jax.random.split(key)
    hp = fam.sample(k_hp, N_STABLE)
    finite = finite_rollouts(fam, hp, jax.random.split(k_init, N_STABLE), stream)
    bad = np.flatnonzero(~np.asarray(finite))
    assert bad.size == 0, (
        f"{name} {task}: {bad.size} members diverge, e.g. member {bad[0]} "
        f"({'with' if bad[0] >= half else 'without'} task switches): "
        f"{fam.describe(fam.member(hp, int(bad[0])))}")
