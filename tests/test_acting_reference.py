"""The acting family (`learners.acting`) and its bandits (`learners.environments`) against
an independent float64 NumPy reference written from their documented semantics.

The package is used only to sample a member's hyperparams (`ActingFamily.sample`), to draw
the environment's tables (`Bandit.tables`) and to run the JAX rollout that is checked. The
reference reads the tables as float64 and acts trial by trial: the policy from the state
before the choice, the choice from it with the trial's uniform v (the first arm whose
cumulative probability exceeds v, the last arm if none), the reward r = [u < p] of the
chosen arm, then learning as documented:
  q_learning      softmax(beta q + perseveration prev); asymmetric Rescorla-Wagner step,
                  the other arms forgetting toward 0.5;
  actor_critic    softmax(beta h + perseveration prev); critic v, actor h, leaky h;
  thompson        P(arm's Beta draw is the largest) by the 128-point midpoint rule on
                  the posteriors' span (+- 8 sd), cdfs by the same rule, counts
                  decaying toward Beta(1, 1);
  ucb             each arm once, then argmax q + c sqrt(log t / n), sample averages;
  epsilon_greedy  (1 - epsilon) one-hot(argmax q) + epsilon / K, constant step.
For every rule, K = 2 and 3, a drifting and a reversal bandit (reversing every 20 trials),
the rollout's choices and rewards must equal the reference's exactly and its policies
match to float32 rounding at every trial. Near-ties, where float32 and float64 could
choose differently (v next to a cumulative policy boundary, an argmax whose runner-up is
within rounding and is not bitwise-equal by construction), are asserted absent, so a
mismatch is never a rounding accident.

Also checked: the tables against their documented construction (reversal: only high and
low, one better arm, moving at exactly the multiples of reversal_every and always to
another arm, uniformly; thompson's documented quadrature within 6e-4 of the exact
probability (adaptive quadrature with the regularized incomplete beta function); drifting: in [0, 1], p[0] in [0.2, 0.8], unit Gaussian steps of
size drift; u and v shared by the kinds; `reward` and `choose`); a mixed population by
`population_rollout` giving each member its own single `rollout` (and the reference's);
the reference missing the rollout when one hyperparam it reads is changed, and ucb's
when its bonus reads log(t - 1) or log(t + 1) instead of log t (t the trials before the
choice); bad inputs refused with a ValueError naming the value.
"""

import functools

import jax
import numpy as np
import pytest
from scipy import integrate, special

from learners import acting, environments

RULES = acting.RULES
HORIZON = 150
REVERSAL_EVERY = 20
HIGH, LOW = 0.85, 0.25  # not the defaults, so that the bandit must honour them
DRIFT = 0.04
GRID = 128  # the documented quadrature of thompson's policy
PRIOR = 0.5  # q's initial value and the target of q_learning's forgetting
RTOL, ATOL = 1e-4, 1e-5
THOMPSON_ATOL = 1e-4
# Margins a float32 decision must clear to be certain: v against a cumulative policy
# boundary (the rollouts' float32 policies err by under 1e-6, thompson's by up to 2e-5),
# and an argmax's best value against its runner-up (values of order 1 to 5).
CDF_MARGIN = 1e-4
ARGMAX_MARGIN = 1e-5

KINDS = ("drifting", "reversal")  # contextual: tests/test_acting_networks.py
N_TABLES = 400  # environments drawn per kind and K (for the tables' statistics)
KEYS = jax.random.split(jax.random.key(11), N_TABLES)
# the mixed population: its hyperparams' seed and its members' tables (every rule, and no
# near-tie in any member)
POPULATION_SEED = 4
POPULATION_TABLES = slice(100, 110)
# The seed of every case's member and environment (its row of KEYS): one that leaves no
# case a near-tie (seeds 0 and 1 leave some: v within 1e-4 of a boundary, or ucb's argmax
# tied between arms of different reward histories)
SEED = 2


def bandit(kind, arms, horizon=HORIZON):
  if kind == "reversal":
    return environments.Bandit(kind=kind, arms=arms, horizon=horizon,
                               reversal_every=REVERSAL_EVERY, high=HIGH, low=LOW)
  return environments.Bandit(kind=kind, arms=arms, horizon=horizon, drift=DRIFT)


def np_tables(tables):
  return tuple(np.asarray(x, np.float64) for x in (tables.p, tables.u, tables.v))


def np_member(hp, i=None):
  """One member's hyperparams as Python floats (rule: its name)."""
  out = {}
  for field, value in hp.items():
    value = np.asarray(value)
    if i is not None:
      value = value[i]
    out[field] = RULES[int(value)] if field == "rule" else float(value)
  return out


# ------------------------------------------------------------------ the NumPy reference


def softmax(logits):
  z = np.exp(logits - logits.max())
  return z / z.sum()


def thompson_policy(a, b):
  """P(k) = int pdf_k prod_{j != k} cdf_j by the midpoint rule on GRID points of the
  posteriors' span [max(0, min m - 8 s), min(1, max m + 8 s)], cdfs by the same rule."""
  mean = a / (a + b)
  sd = np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
  lo, hi = max(0.0, np.min(mean - 8 * sd)), min(1.0, np.max(mean + 8 * sd))
  x = lo + (hi - lo) * (np.arange(GRID) + 0.5) / GRID
  k = len(a)
  pdf = np.stack([np.exp(special.xlogy(a[i] - 1, x) + special.xlog1py(b[i] - 1, -x)
                         - special.betaln(a[i], b[i])) for i in range(k)])
  cdf = np.stack([(np.cumsum(pdf[i]) - pdf[i] / 2) / pdf[i].sum() for i in range(k)])
  pdf = pdf / pdf.sum(axis=1, keepdims=True)
  mass = np.array([np.sum(pdf[i] * np.prod(np.delete(cdf, i, axis=0), axis=0))
                   for i in range(k)])
  return mass / mass.sum()


def exact_thompson_policy(a, b):
  """P(arm 0's draw is the larger) of two Beta posteriors, by adaptive quadrature."""
  def integrand(x):
    return np.exp(special.xlogy(a[0] - 1, x) + special.xlog1py(b[0] - 1, -x)
                  - special.betaln(a[0], b[0])) * special.betainc(a[1], b[1], x)
  return integrate.quad(integrand, 0, 1, points=[a[0] / (a[0] + b[0])], limit=500,
                        epsabs=1e-10)[0]


def choose(policy, v):
  """The first arm whose cumulative probability exceeds v; the last if none does."""
  above = np.nonzero(np.cumsum(policy) > v)[0]
  return int(above[0]) if above.size else len(policy) - 1


class Reference:
  """One member of `rule` with K arms, from the documented initial state."""

  def __init__(self, hp, arms):
    self.hp, self.k, self.rule = hp, arms, hp["rule"]
    self.q = np.full(arms, PRIOR)
    self.h = np.zeros(arms)
    self.v = PRIOR
    self.a = np.ones(arms)
    self.b = np.ones(arms)
    self.n = np.zeros(arms)
    self.prev = np.zeros(arms)
    self.t = 0
    # each arm's rewards in order: arms with equal histories hold bitwise-equal values
    # (ucb, epsilon_greedy) in any precision, so their ties are certain
    self.history = [() for _ in range(arms)]
    self.tie = np.inf  # the smallest argmax margin that was not a certain tie

  def _argmax(self, values):
    best = int(np.argmax(values))  # the lowest of exact ties
    close = np.nonzero(values >= values[best] - ARGMAX_MARGIN)[0]
    if any(self.history[j] != self.history[best] for j in close):
      others = np.delete(values, best)
      self.tie = min(self.tie, values[best] - others.max())
    return best

  def policy(self):
    hp, k = self.hp, self.k
    if self.rule == "q_learning":
      return softmax(hp["beta"] * self.q + hp["perseveration"] * self.prev)
    if self.rule == "actor_critic":
      return softmax(hp["beta"] * self.h + hp["perseveration"] * self.prev)
    if self.rule == "thompson":
      return thompson_policy(self.a, self.b)
    if self.rule == "ucb":
      unseen = np.nonzero(self.n == 0)[0]
      if unseen.size:
        return np.eye(k)[unseen[0]]
      return np.eye(k)[self._argmax(
          self.q + hp["ucb_c"] * np.sqrt(np.log(self.t) / self.n))]
    if self.rule == "epsilon_greedy":
      eps = hp["epsilon"]
      return (1 - eps) * np.eye(k)[self._argmax(self.q)] + eps / k
    raise AssertionError(self.rule)

  def learn(self, pi, c, r):
    hp, k = self.hp, self.k
    onehot = np.eye(k)[c]
    if self.rule == "q_learning":
      d = r - self.q[c]
      step = hp["alpha_pos"] if d > 0 else hp["alpha_neg"]
      others = np.arange(k) != c
      self.q[others] += hp["forget"] * (PRIOR - self.q[others])
      self.q[c] += step * d
    elif self.rule == "actor_critic":
      d = r - self.v
      self.v += hp["alpha_pos"] * d
      self.h = (self.h + hp["alpha_neg"] * d * (onehot - pi)) * (1 - hp["forget"])
    elif self.rule == "thompson":
      self.a = 1 + (1 - hp["forget"]) * (self.a - 1)
      self.b = 1 + (1 - hp["forget"]) * (self.b - 1)
      self.a[c] += r
      self.b[c] += 1 - r
    elif self.rule == "ucb":
      self.n[c] += 1
      self.q[c] += (r - self.q[c]) / self.n[c]
    elif self.rule == "epsilon_greedy":
      self.q[c] += hp["alpha_pos"] * (r - self.q[c])
    self.history[c] += (r,)
    self.prev = onehot
    self.t += 1


def reference(hp, tables, learner=Reference):
  """The reference acting in float64 tables (p, u, v): choices, rewards, policies, and the
  smallest margins of its decisions (inverse CDF, argmax)."""
  p, u, v = tables
  horizon, arms = p.shape
  member = learner(hp, arms)
  choices, rewards, policies = [], [], []
  cdf_margin = np.inf
  for t in range(horizon):
    pi = member.policy()
    cdf_margin = min(cdf_margin, np.abs(np.cumsum(pi) - v[t]).min())
    c = choose(pi, v[t])
    r = 1.0 if u[t, c] < p[t, c] else 0.0
    member.learn(pi, c, r)
    choices.append(c)
    rewards.append(r)
    policies.append(pi)
  return (np.array(choices), np.array(rewards), np.array(policies), cdf_margin,
          member.tie)


# ------------------------------------------------------------------ the JAX side


@functools.lru_cache(maxsize=None)
def jitted_rollout(rules, arms):
  family = acting.ActingFamily(arms=arms, rules=rules)
  return jax.jit(functools.partial(acting.rollout, family))


@functools.lru_cache(maxsize=None)
def many_tables(kind, arms):
  """The tables of `bandit(kind, arms)` drawn from the keys KEYS (vmapped, as numpy
  float32, leading axis N_TABLES): every kind from the same keys."""
  tables = jax.jit(jax.vmap(bandit(kind, arms).tables))(KEYS)
  return environments.Tables(*(np.asarray(x) for x in tables))


def table(tables, i):
  return environments.Tables(*(x[i] for x in tables))


def draw(rule, arms, kind, seed):
  """A member of a single-rule family and its environment: (hp, tables)."""
  family = acting.ActingFamily(arms=arms, rules=(rule,))
  hp = family.sample(jax.random.fold_in(jax.random.key(2024), seed), 1)
  hp = {field: np.asarray(x)[0] for field, x in hp.items()}
  return hp, table(many_tables(kind, arms), seed)


def check(traj, ref, rule, where):
  """The rollout `traj` against the reference's output `ref`."""
  choice, reward, policy, cdf_margin, tie = ref
  assert cdf_margin > CDF_MARGIN, (f"{where}: v is a near-tie with a cumulative policy "
                                   f"boundary (margin {cdf_margin:.2g}); pick another "
                                   "seed")
  assert tie > ARGMAX_MARGIN, (f"{where}: an argmax is a near-tie (margin {tie:.2g}); "
                               "pick another seed")
  got_c = np.asarray(traj.choice)
  got_r = np.asarray(traj.reward, np.float64)
  got_p = np.asarray(traj.policy, np.float64)
  assert got_c.shape == choice.shape and got_p.shape == policy.shape, where
  assert traj.choice.dtype == np.int32, where
  atol = THOMPSON_ATOL if rule == "thompson" else ATOL
  for t in range(len(choice)):
    np.testing.assert_allclose(got_p[t], policy[t], rtol=RTOL, atol=atol,
                               err_msg=f"{where}: policy at trial {t}")
    assert got_c[t] == choice[t], (f"{where}: choice at trial {t}: rollout {got_c[t]}, "
                                   f"reference {choice[t]} (policy {policy[t]})")
    assert got_r[t] == reward[t], f"{where}: reward at trial {t}"


# ------------------------------------------------------------------ the rollouts


CASES = [(rule, arms, kind) for rule in RULES for arms in (2, 3) for kind in KINDS]


@pytest.mark.parametrize("rule,arms,kind", CASES)
def test_reference_reproduces_the_rollout(rule, arms, kind):
  hp, tables = draw(rule, arms, kind, SEED)
  member = np_member(hp)
  assert member["rule"] == rule
  traj = jitted_rollout((rule,), arms)(hp, tables)
  ref = reference(member, np_tables(tables))
  check(traj, ref, rule, f"{rule} K={arms} {kind} seed {SEED}")
  # the case exercises its rule: every arm chosen, rewards of both values
  assert set(ref[0]) == set(range(arms)) and set(ref[1]) == {0.0, 1.0}, (rule, arms, kind)


# field -> a wrong value given the member's
WRONG_VALUE = {
    "alpha_pos": lambda x: 2 * x if x < 0.4 else x / 2,
    "alpha_neg": lambda x: 2 * x if x < 0.4 else x / 2,
    "beta": lambda x: 2 * x,
    "forget": lambda x: 0.0 if x > 0.02 else 0.1,
    "perseveration": lambda x: -x if abs(x) > 0.2 else x + 0.5,
    "ucb_c": lambda x: x + 1.0,
    "epsilon": lambda x: x / 2,
}
# the hyperparams each rule is documented to read
WRONG = [("q_learning", f) for f in ("alpha_pos", "alpha_neg", "beta", "forget",
                                     "perseveration")]
WRONG += [("actor_critic", f) for f in ("alpha_pos", "alpha_neg", "beta", "forget",
                                        "perseveration")]
WRONG += [("thompson", "forget"), ("ucb", "ucb_c"), ("epsilon_greedy", "epsilon"),
          ("epsilon_greedy", "alpha_pos")]


@pytest.mark.parametrize("rule,field", WRONG)
def test_reference_misses_the_rollout_with_a_wrong_hyperparam(rule, field):
  arms, kind = 3, "reversal"
  hp, tables = draw(rule, arms, kind, SEED)
  traj = jitted_rollout((rule,), arms)(hp, tables)
  member = np_member(hp)
  right = reference(member, np_tables(tables))
  wrong = {**member, field: WRONG_VALUE[field](member[field])}
  miss = reference(wrong, np_tables(tables))
  got_p = np.asarray(traj.policy, np.float64)
  assert np.array_equal(right[0], np.asarray(traj.choice))
  assert np.abs(right[2] - got_p).max() < 1e-3
  assert (not np.array_equal(miss[0], np.asarray(traj.choice))
          or np.abs(miss[2] - got_p).max() > 1e-2), (rule, field, member)


class ShiftedUcb(Reference):
  """ucb with its bonus reading log(t + shift): t off by one."""
  shift = 0

  def policy(self):
    if self.rule == "ucb" and np.all(self.n > 0):
      bonus = self.hp["ucb_c"] * np.sqrt(np.log(self.t + self.shift) / self.n)
      return np.eye(self.k)[self._argmax(self.q + bonus)]
    return super().policy()


# A ucb case whose choices tell log(t) from log(t - 1) and log(t + 1) (ucb_c = 1.01): in
# most cases (the one of SEED too) the argmax never depends on it.
UCB_T_SEED = 3


@pytest.mark.parametrize("shift", [-1, 1])
def test_ucb_bonus_reads_the_trials_before_the_choice(shift):
  arms, kind = 2, "drifting"
  hp, tables = draw("ucb", arms, kind, UCB_T_SEED)
  traj = jitted_rollout(("ucb",), arms)(hp, tables)
  member = np_member(hp)
  check(traj, reference(member, np_tables(tables)), "ucb", f"ucb K={arms} {kind}")
  shifted = type("Shifted", (ShiftedUcb,), {"shift": shift})
  miss = reference(member, np_tables(tables), shifted)
  assert not np.array_equal(miss[0], np.asarray(traj.choice)), (shift, member)


def test_thompson_quadrature_is_near_the_exact_probability():
  rng = np.random.default_rng(3)
  policy = jax.jit(acting._thompson_policy)  # pylint: disable=protected-access
  for _ in range(100):
    # From flat posteriors to counts of 10^4 (a long run with little forgetting).
    a, b = 1 + rng.uniform(0, 1, (2, 2)) * 10 ** rng.uniform(0, 4)
    p = np.asarray(policy(a.astype(np.float32), b.astype(np.float32)))
    exact = exact_thompson_policy(a, b)
    np.testing.assert_allclose(p[0], exact, atol=6e-4)
    np.testing.assert_allclose(thompson_policy(a, b)[0], exact, atol=6e-4)


def test_mixed_population_gives_each_member_its_single_rollout():
  arms, n = 3, 10
  family = acting.ActingFamily(arms=arms)
  hp = family.sample(jax.random.key(POPULATION_SEED), n)
  names = [RULES[int(c)] for c in np.asarray(hp["rule"])]
  assert set(names) == set(RULES), names
  tables = many_tables("reversal", arms)
  tables = environments.Tables(*(x[POPULATION_TABLES] for x in tables))
  assert tables.p.shape == (n, HORIZON, arms)
  traj = jax.jit(functools.partial(acting.population_rollout, family))(hp, tables)
  traj = acting.Trajectory(*(np.asarray(x) for x in traj))
  single = jitted_rollout(family.rules, arms)
  hp = {field: np.asarray(x) for field, x in hp.items()}
  for i in range(n):
    alone = single({field: x[i] for field, x in hp.items()}, table(tables, i))
    where = f"member {i} ({names[i]})"
    np.testing.assert_array_equal(traj.choice[i], alone.choice, err_msg=where)
    np.testing.assert_array_equal(traj.reward[i], alone.reward, err_msg=where)
    np.testing.assert_allclose(traj.policy[i], alone.policy, rtol=1e-5, atol=1e-6,
                               err_msg=where)
    # and the population's member is the reference's
    check(acting.Trajectory(*(x[i] for x in traj)),
          reference(np_member(hp, i), np_tables(table(tables, i))), names[i],
          f"population {where}")


# ------------------------------------------------------------------ the environments


@pytest.mark.parametrize("arms", [2, 3])
def test_reversal_tables_follow_their_construction(arms):
  p = many_tables("reversal", arms).p
  assert p.shape == (N_TABLES, HORIZON, arms)
  assert set(np.unique(p)) == {np.float32(HIGH), np.float32(LOW)}
  high = p == np.float32(HIGH)
  assert np.all(high.sum(-1) == 1)  # exactly one better arm at each trial
  best = high.argmax(-1)  # [N, T]
  moved = best[:, 1:] != best[:, :-1]  # moved[:, t - 1]: the better arm changed at t
  at = (np.arange(1, HORIZON) % REVERSAL_EVERY) == 0
  assert at.sum() == (HORIZON - 1) // REVERSAL_EVERY >= 5
  assert np.all(moved[:, at]), "a reversal left the better arm in place"
  assert not np.any(moved[:, ~at]), "the better arm moved between reversals"
  # uniform at the start, and to a uniformly drawn other arm (k + 1 ... k + K - 1 mod K)
  start = np.bincount(best[:, 0], minlength=arms) / N_TABLES
  assert np.all(np.abs(start - 1 / arms) < 5 * np.sqrt(1 / arms / N_TABLES)), start
  steps = (best[:, 1:] - best[:, :-1])[:, at] % arms
  shares = np.bincount(steps.ravel(), minlength=arms)[1:] / steps.size
  assert np.all(np.abs(shares - 1 / (arms - 1)) < 5 * np.sqrt(1 / steps.size)), shares


@pytest.mark.parametrize("arms", [2, 3])
def test_drifting_tables_follow_their_construction(arms):
  p = many_tables("drifting", arms).p.astype(np.float64)
  assert p.shape == (N_TABLES, HORIZON, arms)
  assert np.all((p >= 0) & (p <= 1))
  assert np.all((p[:, 0] >= 0.2) & (p[:, 0] <= 0.8))
  assert abs(p[:, 0].mean() - 0.5) < 0.03 and p[:, 0].std() == pytest.approx(
      0.6 / np.sqrt(12), rel=0.1)  # U(0.2, 0.8)
  # a random walk of N(0, drift^2) steps, clipped: its unclipped steps are drift times
  # unit Gaussians, and clipping happens (walks reach 0 or 1 and stay within)
  inside = (p[:, 1:] > 0) & (p[:, 1:] < 1)
  z = ((p[:, 1:] - p[:, :-1]) / DRIFT)[inside]
  assert z.size > 0.5 * p[:, 1:].size
  assert abs(z.mean()) < 0.05, z.mean()
  assert z.std() == pytest.approx(1, abs=0.05), z.std()
  assert np.abs(z).max() < 7
  assert np.any(p[:, 1:] == 0) and np.any(p[:, 1:] == 1)


@pytest.mark.parametrize("arms", [2, 3])
def test_rewards_and_common_random_numbers(arms):
  drifting, reversal = many_tables("drifting", arms), many_tables("reversal", arms)
  # u and v come from their own keys, whatever the kind: a teacher and an imitator of
  # either kind share them; p differs; other keys give other numbers
  np.testing.assert_array_equal(drifting.u, reversal.u)
  np.testing.assert_array_equal(drifting.v, reversal.v)
  assert not np.array_equal(drifting.p[0], reversal.p[0])
  assert not np.array_equal(drifting.u[0], drifting.u[1])
  assert not np.array_equal(drifting.v[0], drifting.v[1])
  for tables in (drifting, reversal):
    p, u, v = np_tables(tables)
    assert u.shape == (N_TABLES, HORIZON, arms) and v.shape == (N_TABLES, HORIZON)
    assert np.all((u >= 0) & (u < 1)) and np.all((v >= 0) & (v < 1))
    assert abs(u.mean() - 0.5) < 0.01 and abs(v.mean() - 0.5) < 0.01
    rows = table(tables, 0)
    rewards = jax.vmap(lambda row: jax.vmap(lambda k: environments.reward(row, k))(
        np.arange(arms)))(rows)
    np.testing.assert_array_equal(np.asarray(rewards, np.float64),
                                  (u[0] < p[0]).astype(np.float64))


@pytest.mark.parametrize("kind", KINDS)
def test_one_key_draws_the_batched_tables(kind):
  """`tables` of one key is that key's slice of the vmapped tables the tests use."""
  one = jax.jit(bandit(kind, 3).tables)(KEYS[5])
  batched = table(many_tables(kind, 3), 5)
  for got, want in zip(one, batched):
    np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("policy,v,arm", [
    ([0.2, 0.3, 0.5], 0.0, 0),
    ([0.2, 0.3, 0.5], 0.1999, 0),
    ([0.25, 0.25, 0.5], 0.25, 1),  # exceeds: equal is not enough
    ([0.2, 0.3, 0.5], 0.4999, 1),
    ([0.2, 0.3, 0.5], 0.9, 2),
    ([0.0, 1.0, 0.0], 0.0, 1),
    ([0.5, 0.5, 0.0], 0.75, 1),
    ([0.3, 0.3, 0.3], 0.95, 2),  # rounding leaves none: the last arm
    ([0.45, 0.45, 0.0], 0.95, 2),
    ([0.7, 0.3], 0.6999, 0),
])
def test_choose_is_the_inverse_cdf(policy, v, arm):
  assert choose(np.array(policy), v) == arm  # the reference's own choose
  assert int(environments.choose(np.array(policy, np.float32), np.float32(v))) == arm


# ------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("make,words", [
    (lambda: environments.Bandit(kind="foo"), ["'foo'", "drifting", "reversal"]),
    (lambda: environments.Bandit(arms=1), ["arms=1"]),
    (lambda: acting.ActingFamily(rules=("sarsa",)), ["sarsa", "q_learning"]),
])
def test_bad_inputs_are_refused_naming_the_value(make, words):
  with pytest.raises(ValueError) as info:
    make()
  for w in words:
    assert w in str(info.value), str(info.value)
