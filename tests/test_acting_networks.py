"""Contextual bandits and network members acting in them (`learners.acting_networks`),
against a float64 NumPy loop written from their docstrings: an SGD linear member's
Q-learning (softmax(beta Q(x)) choices, the chosen arm's value stepped toward its
reward by SGD with the family's coupled weight decay, g + weight_decay * params) from
its initial weights and hyperparams alone, choice for choice; the
contextual tables against their documented construction; a mixed population (networks,
optimizers, the l2 regularizer) running in one vmap, finite and learning."""

import jax
import numpy as np
import pytest

from learners import acting, acting_networks, environments

D, K, T = 4, 3, 120
CDF_MARGIN = 1e-4


def _bandit(**kw):
  return environments.Bandit(kind="contextual", arms=K, horizon=T, features=D,
                             switch_every=30, **kw)


def test_contextual_tables_follow_their_construction():
  bandit = _bandit(tasks=3, gain=2.0)
  key = jax.random.key(5)
  tables = bandit.tables(key)
  x = np.asarray(jax.random.normal(jax.random.fold_in(key, 3), (T, D)))
  w = np.asarray(jax.random.normal(jax.random.fold_in(key, 0), (3, K, D)), np.float64)
  task = (np.arange(T) // 30) % 3
  logits = 2.0 * np.einsum("tkd,td->tk", w[task], x) / np.sqrt(D)
  np.testing.assert_allclose(tables.x, x)
  np.testing.assert_allclose(tables.p, 1 / (1 + np.exp(-logits)), atol=1e-6)
  # Context-free kinds carry an empty context.
  assert environments.Bandit(horizon=T).tables(key).x.shape == (T, 0)


def _softmax(z):
  e = np.exp(z - z.max())
  return e / e.sum()


def test_sgd_linear_member_against_numpy_q_learning():
  fam = acting_networks.NetworkActingFamily(arms=K, features=D, preset="sgd_linear")
  hp_all = fam.sample(jax.random.key(0), 4)
  tables_all = jax.vmap(_bandit().tables)(jax.random.split(jax.random.key(1), 4))
  traj = acting.population_rollout(fam, hp_all, tables_all)
  checked = 0
  for i in range(4):
    hp = {k: v[i] for k, v in hp_all.items()}
    # The member's initial weights, as a dump would record them.
    layer = fam.init_state(hp).params["linear"]["dense_0"]
    w = np.array(layer["w"], np.float64)
    b = np.array(layer["b"], np.float64)
    lr, beta, wd = (float(hp[k]) for k in ("learning_rate", "beta", "weight_decay"))
    tb = jax.tree.map(lambda a: np.asarray(a[i], np.float64), tables_all)
    for t in range(T):
      x = tb.x[t]
      q = x @ w / np.sqrt(D) + b
      pi = _softmax(beta * q)
      np.testing.assert_allclose(traj.policy[i, t], pi, atol=2e-5, rtol=1e-4)
      cdf = np.cumsum(pi)
      assert np.min(np.abs(cdf[:-1] - tb.v[t])) > CDF_MARGIN  # no near-tie
      c = min(int(np.sum(cdf <= tb.v[t])), K - 1)
      r = float(tb.u[t, c] < tb.p[t, c])
      assert int(traj.choice[i, t]) == c and float(traj.reward[i, t]) == r
      grad_q = np.zeros(K)
      grad_q[c] = q[c] - r  # d/dQ of 0.5 ||Q - y||^2: the other arms' targets are Q
      w -= lr * (np.outer(x / np.sqrt(D), grad_q) + wd * w)
      b -= lr * (grad_q + wd * b)
      checked += 1
  assert checked == 4 * T


@pytest.mark.slow  # default suite budget; .ci/run runs it
def test_mixed_network_population_acts_and_learns_in_one_vmap():
  fam = acting_networks.NetworkActingFamily(arms=2, features=D, preset="small_mixed")
  hp = fam.sample(jax.random.key(2), 16)
  bandit = environments.Bandit(kind="contextual", arms=2, horizon=400, features=D,
                               switch_every=400, gain=4.0)
  tables = jax.vmap(bandit.tables)(jax.random.split(jax.random.key(3), 16))
  traj = jax.jit(lambda h, tb: acting.population_rollout(fam, h, tb))(hp, tables)
  assert np.all(np.isfinite(traj.policy))
  assert len(set(fam.kinds(hp))) == 4  # both networks, both optimizers
  # Learning pays: later rewards beat early ones and the arms' average.
  early = float(traj.reward[:, :50].mean())
  late = float(traj.reward[:, -100:].mean())
  mean_p = float(tables.p[:, -100:].mean())
  assert late > early and late > mean_p + 0.05, (early, late, mean_p)


def test_bad_network_acting_family_is_refused_naming_the_value():
  with pytest.raises(ValueError, match="preset 'nope'"):
    acting_networks.NetworkActingFamily(preset="nope")
  with pytest.raises(ValueError, match="features=0"):
    acting_networks.NetworkActingFamily(features=0)
  with pytest.raises(ValueError, match="features=0"):
    environments.Bandit(kind="contextual", features=0)
