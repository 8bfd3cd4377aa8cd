"""The per-subject maximum-likelihood reference (`imitator.acting.mle`): its likelihood
against an independent float64 NumPy loop written from `learners.acting`'s documented
q_learning rule, the fit being a maximum, recovery of the truth from long histories, and
held-out scoring.

The reference: q [K] = 0.5, prev [K] = 0; at each trial log softmax(beta q +
perseveration prev) before the choice; then, unless the trial is padding (choice -1),
d = r - q[c], q[c] += (alpha_pos if d > 0 else alpha_neg) d, every other arm
q[k] += forget (0.5 - q[k]), prev = one_hot(c).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from imitator.acting import mle
from learners import acting, environments

PRIOR = 0.5
FAMILY = acting.ActingFamily(arms=2, rules=("q_learning",))
S, T = 8, 300
PADDED = 4  # subjects whose history ends early (the rest of the row is padding)
T_PADDED = 200


def reference_log_policies(hp, choice, reward, arms):
  q, prev = np.full(arms, PRIOR), np.zeros(arms)
  out = np.zeros((len(choice), arms))
  for t, (c, r) in enumerate(zip(choice, reward)):
    logits = hp["beta"] * q + hp["perseveration"] * prev
    out[t] = logits - special.logsumexp(logits)
    if c < 0:
      continue
    d = r - q[c]
    new = q + hp["forget"] * (PRIOR - q)
    new[c] = q[c] + (hp["alpha_pos"] if d > 0 else hp["alpha_neg"]) * d
    q, prev = new, np.eye(arms)[c]
  return out


@functools.partial(jax.jit, static_argnums=4)
def _likelihood(hp, choice, reward, score, arms):
  """log_policies, nll and its gradient (NaN-free despite NaN rewards in padding)."""
  nll, grad = jax.value_and_grad(mle.nll)(hp, choice, reward, score, arms)
  return mle.log_policies(hp, choice, reward, arms), nll, grad


@pytest.mark.parametrize("arms,hp", [
    (3, dict(alpha_pos=0.4, alpha_neg=0.1, beta=4.0, forget=0.05, perseveration=0.7)),
    (2, dict(alpha_pos=0.07, alpha_neg=0.6, beta=15.0, forget=0.0, perseveration=-1.5)),
])
def test_likelihood_matches_reference(arms, hp):
  rng = np.random.default_rng(arms)
  n = 80
  choice = rng.integers(0, arms, n)
  choice[rng.random(n) < 0.2] = -1
  reward = rng.random(n) < 0.6
  reward = np.where(choice < 0, np.nan, reward)  # padding may hold anything
  score = rng.random(n) < 0.7
  ref = reference_log_policies(hp, choice, reward, arms)
  hp32 = {f: jnp.float32(v) for f, v in hp.items()}
  logpi, nll, grad = _likelihood(hp32, choice, reward, score, arms)
  got = np.asarray(logpi)
  valid = choice >= 0
  np.testing.assert_allclose(got[valid], ref[valid], rtol=1e-4, atol=1e-5)
  counted = score & valid
  ref_nll = -np.mean(ref[np.arange(n), choice][counted])
  np.testing.assert_allclose(float(nll), ref_nll, rtol=1e-5)
  assert all(np.isfinite(float(g)) for g in grad.values())


@functools.partial(jax.jit, static_argnums=(1, 2))
def _simulate(key, n, horizon, hp):
  k_hp, k_env = jax.random.split(key)
  hp = FAMILY.sample(k_hp, n) if hp is None else hp
  bandit = environments.Bandit(kind="drifting", horizon=horizon)
  traj = acting.population_rollout(FAMILY, hp, jax.vmap(bandit.tables)(
      jax.random.split(k_env, n)))
  return hp, traj.choice, traj.reward


def simulate(key, n, horizon, hp=None):
  """n q_learning members (drawn from the prior unless hp is given) acting on drifting
  bandits: (hp {field: [n]}, choice [n, T], reward [n, T]) (NumPy, writable)."""
  hp, choice, reward = _simulate(key, n, horizon, hp)
  return hp, np.array(choice), np.array(reward)


@jax.jit
def _batch_nll(hp, choice, reward, score):
  return jax.vmap(lambda h, c, r, s: mle.nll(h, c, r, s, 2))(hp, choice, reward, score)


def batch_nll(hp, choice, reward, score):
  """[S] mean NLL per scored trial of each subject's hp {field: [S]}."""
  return np.asarray(_batch_nll({f: hp[f] for f in mle.FIELDS}, choice, reward, score))


@pytest.fixture(scope="module")
def fitted():
  """Members of the prior on T-trial drifting bandits, PADDED of them cut at T_PADDED
  (choice -1, reward NaN after), fitted on every trial and on the first half."""
  hp, choice, reward = simulate(jax.random.key(0), S, T)
  choice[:PADDED, T_PADDED:] = -1
  reward[:PADDED, T_PADDED:] = np.nan
  t = np.arange(T)
  whole = np.ones((S, T), bool)
  first = np.broadcast_to(t < T // 2, (S, T))
  return dict(hp=hp, choice=choice, reward=reward, whole=whole, first=first,
              fit_whole=mle.fit(jax.random.key(1), choice, reward, whole, 2),
              fit_first=mle.fit(jax.random.key(2), choice, reward, first, 2))


def test_fit_is_a_maximum(fitted):
  hp = fitted["hp"]
  for f, (low, high, log) in zip(mle.FIELDS, mle.BOXES):
    x = np.log(hp[f]) if log else np.asarray(hp[f])
    assert np.all((x >= low - 1e-6) & (x <= high + 1e-6)), f
  out = fitted["fit_whole"]
  assert np.all(np.asarray(out["rule"]) == acting.RULES.index("q_learning"))
  data = fitted["choice"], fitted["reward"], fitted["whole"]
  got, truth = batch_nll(out, *data), batch_nll(hp, *data)
  assert np.all(got <= truth + 1e-3), (got, truth)


def test_fit_scores_held_out_trials(fitted):
  held_out = ~fitted["first"]
  data = fitted["choice"], fitted["reward"]
  got = batch_nll(fitted["fit_first"], *data, held_out)
  truth = batch_nll(fitted["hp"], *data, held_out)
  assert np.all(np.isfinite(got))
  assert got.mean() > truth.mean(), (got, truth)
  # The fit saw the first half only: there it is at least as likely as the truth.
  assert np.all(batch_nll(fitted["fit_first"], *data, fitted["first"])
                <= batch_nll(fitted["hp"], *data, fitted["first"]) + 1e-3)


@pytest.mark.slow
def test_recovers_the_truth_from_long_histories():
  # Two moderate members, four environments each: beta and alpha_pos are identified
  # (within 25% at the median over 64 environments, within 2x in the worst case).
  truths = [dict(alpha_pos=0.3, alpha_neg=0.15, beta=6.0, forget=0.02, perseveration=0.3),
            dict(alpha_pos=0.5, alpha_neg=0.3, beta=10.0, forget=0.02, perseveration=-0.3)]
  per = 4
  hp = {f: jnp.repeat(jnp.asarray([h[f] for h in truths]), per) for f in mle.FIELDS}
  hp["rule"] = jnp.zeros(len(truths) * per, jnp.int32)
  _, choice, reward = simulate(jax.random.key(3), len(truths) * per, 1000, hp)
  out = mle.fit(jax.random.key(4), choice, reward, np.ones(choice.shape, bool), 2)
  for f in ("beta", "alpha_pos"):
    ratio = np.log(np.asarray(out[f]) / np.asarray(hp[f]))
    assert np.all(np.abs(ratio) < np.log(2.0)), (f, ratio)
    median = np.median(ratio.reshape(len(truths), per), axis=1)
    assert np.all(np.abs(median) < 0.3), (f, median)
