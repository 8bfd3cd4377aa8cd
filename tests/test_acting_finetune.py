"""Fine-tuning the acting imitator (`imitator.acting.finetune`) and the acting frontier:
the outcome term's policy gradient against the exact gradient of the expected reward
(every choice and reward enumerated), the process term against the overseer run by hand
on the imitator's own history, the discounted future reward against a loop, voting
copies against the member, bad settings refused, and (slow) the overseer's choice
against a loop over candidates and launch.frontier end to end on a smoke run."""

import itertools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imitator.acting import agents, closed_loop, finetune, train
from imitator.training import finetune as supervised
from launch.configs import bandits
from learners import acting, environments


def _setup(p, t, seed=0):
  fam = acting.ActingFamily(arms=2, rules=("q_learning", "thompson"))
  key = jax.random.key(seed)
  hp = fam.sample(key, p)
  bandit = environments.Bandit(arms=2, horizon=t, drift=0.1)
  tables = jax.vmap(bandit.tables)(jax.random.split(jax.random.fold_in(key, 1), p))
  im = agents.RecurrentImitator(arms=2, hidden=4)
  return fam, hp, tables, im, im.init_meta(jax.random.fold_in(key, 2))


def test_discounted_future_is_the_later_unseen_rewards_discounted():
  rng = np.random.default_rng(0)
  r = rng.random((3, 7)).astype(np.float32)
  unseen = np.arange(7)[None] >= np.array([[0], [3], [7]])
  got = np.asarray(finetune.discounted_future(jnp.asarray(r), jnp.asarray(unseen), 0.5))
  want = np.zeros((3, 7))
  for i in range(3):
    for t in range(7):
      want[i, t] = sum(0.5 ** (s - t - 1) * r[i, s] for s in range(t + 1, 7) if unseen[i, s])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # default suite budget; .ci/run runs it
def test_outcome_gradient_is_the_gradient_of_the_expected_reward():
  """The mean over many closed loops of the outcome term's gradient (discount 1) against
  d/dmeta E[sum_t r_t], with E summed over every choice and reward sequence."""
  t, n = 3, 8192
  fam, hp, _, im, meta = _setup(n, t)
  # Larger weights: a choice moves the GRU's later policy enough for the score-function
  # term to matter (a fifth of the gradient here).
  meta = jax.tree.map(lambda v: 3 * v, meta)
  p = jnp.asarray([[0.8, 0.3], [0.2, 0.6], [0.7, 0.4]])
  k_u, k_v = jax.random.split(jax.random.key(7))
  tables = environments.Tables(p=jnp.broadcast_to(p, (n, t, 2)),
                               u=jax.random.uniform(k_u, (n, t, 2)),
                               v=jax.random.uniform(k_v, (n, t)), x=jnp.zeros((n, t, 0)))
  cut = jnp.zeros((n,), jnp.int32)
  x = jnp.zeros((0,))

  def estimate(m):
    return -jnp.sum(finetune.extra_terms("outcome", fam, hp, im, m, tables, cut,
                                         discount=1.0)[1]) / n

  def expected(m):
    def value(h, s):
      if s == t:
        return 0.0
      pi = jnp.exp(im.log_policy(m, h, x))
      total = 0.0
      for c, r in itertools.product(range(2), (0.0, 1.0)):
        pr = pi[c] * (p[s, c] if r else 1 - p[s, c])
        total += pr * (r + value(im.observe(m, h, x, c, r, pi), s + 1))
      return total
    return value(im.init(m), 0)

  g_hat = jax.jit(jax.grad(estimate))(meta)
  g = jax.jit(jax.grad(expected))(meta)
  flat = lambda tree: np.concatenate([np.ravel(v) for v in jax.tree.leaves(tree)])
  err = np.linalg.norm(flat(g_hat) - flat(g)) / np.linalg.norm(flat(g))
  assert err < 0.08, err
  # Without the score-function term of later rewards the gradient misses: the check can
  # fail when that term is wrong.
  immediate = jax.jit(jax.grad(lambda m: jnp.sum(jnp.exp(closed_loop.trial_outputs(
      fam, hp, im, m, tables, cut)["log_policy_alone"]) * tables.p) / n))(meta)
  assert np.linalg.norm(flat(immediate) - flat(g)) / np.linalg.norm(flat(g)) > 3 * err


def test_process_term_is_the_overseer_on_the_imitators_history():
  fam, hp, tables, im, meta = _setup(3, 12)
  overseer = {f: v[0] for f, v in fam.sample(jax.random.key(5), 1).items()}
  cut = jnp.asarray([0, 4, 12])
  imitation, extra, seen = finetune.extra_terms("process", fam, hp, im, meta, tables, cut,
                                                overseer)
  out = closed_loop.trial_outputs(fam, hp, im, meta, tables, cut)
  policy, learn = jax.jit(fam.policy_at), jax.jit(fam.learn_at)  # each call on its own
  for i in range(3):
    state = fam.init_state(overseer)
    for s in range(12):
      row = environments.Tables(*(a[i, s] for a in tables))
      pi = np.asarray(policy(overseer, state, row.x), np.float64)
      lp = np.asarray(out["log_policy_alone"][i, s], np.float64)
      np.testing.assert_allclose(extra[i, s], np.sum(pi * (np.log(pi) - lp)), atol=1e-5)
      state = learn(overseer, state, jnp.asarray(pi, jnp.float32),
                           out["choice_alone"][i, s], out["reward_alone"][i, s], row.x)
  np.testing.assert_array_equal(seen, np.arange(12)[None] < np.asarray(cut)[:, None])
  np.testing.assert_allclose(imitation, np.where(seen, out["nll"], out["kl_alone"]),
                             atol=1e-6)


def test_voting_copies_act_as_the_member_and_voting_averages_policies():
  fam, hp, tables, im, meta = _setup(4, 20)
  other = im.init_meta(jax.random.key(11))
  one = closed_loop.windowed(fam, hp, (im,), (meta,), tables, 5, 10)
  three = closed_loop.windowed(fam, hp, (agents.Voting(im),), ((meta,) * 3,), tables, 5, 10)
  for k in ("kl_forced", "kl_alone", "regret_alone", "counts_alone"):
    np.testing.assert_allclose(three[k][0], one[k][0], rtol=1e-5, atol=1e-6)
  x = jnp.zeros((0,))
  h = (im.init(meta), im.init(other))
  h = agents.Voting(im).observe((meta, other), h, x, 1, 1.0, None)
  want = (np.exp(im.log_policy(meta, h[0], x)) + np.exp(im.log_policy(other, h[1], x))) / 2
  np.testing.assert_allclose(np.exp(agents.Voting(im).log_policy((meta, other), h, x)), want,
                             rtol=1e-6)


def test_bad_finetuning_settings_are_refused():
  assert finetune.EXTRAS == supervised.EXTRAS  # one launch.finetune flag for both
  config = bandits.get_config("smoke")
  with pytest.raises(ValueError, match="--extra='reward'"):
    finetune.run_config(config, "/tmp/w", "reward", 1.0, 10, 1e-3)
  with pytest.raises(ValueError, match="--lambda=-1"):
    finetune.run_config(config, "/tmp/w", "outcome", -1.0, 10, 1e-3)
  config.train.finetune.extra = "outcome"  # without a source run
  with pytest.raises(ValueError, match="config.train.finetune="):
    train.check(config)


@pytest.mark.slow
def test_overseer_is_the_best_rewarded_candidate():
  config = bandits.get_config("smoke")
  fam, bandit = train.family(config), train.bandit(config, 1)
  key = jax.random.key(3)
  member = finetune.overseer_member(fam, bandit, key)
  k_hp, k_env = jax.random.split(key)
  hp = fam.sample(k_hp, finetune.OVERSEER_CANDIDATES)
  envs = jax.random.split(k_env, finetune.OVERSEER_BANDITS)
  run = jax.jit(lambda h, k: acting.rollout(fam, h, bandit.tables(k)).reward.mean())
  rates = [np.mean([run({f: v[i] for f, v in hp.items()}, k) for k in envs])
           for i in range(finetune.OVERSEER_CANDIDATES)]
  best = int(np.argmax(rates))
  for f, v in hp.items():
    np.testing.assert_array_equal(member[f], v[best])


@pytest.mark.slow
def test_acting_frontier_end_to_end(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  work = str(tmp_path / "b")
  subprocess.run([sys.executable, "-m", "launch.train",
                  "--config=launch/configs/bandits.py:smoke", f"--workdir={work}"],
                 check=True, env=env, capture_output=True)
  done = subprocess.run([sys.executable, "-m", "launch.frontier", f"--workdir={work}",
                         "--steps=3", "--lambdas=10", "--multiple=4", f"--ensemble={work}"],
                        env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.load(open(os.path.join(work, "frontier", "frontier.json")))
  assert result["fidelity"] == "KL" and result["n_teachers"] == 8
  points = {p["name"]: p for p in result["points"]}
  assert set(points) == {"imitator", "none/0", "outcome/10", "process/10", "voting/2"}
  for mode in ("forced", "alone"):
    # Two copies of the source vote as the source.
    assert points["voting/2"][mode]["nie"] == pytest.approx(points["imitator"][mode]["nie"],
                                                            rel=1e-5)
    # Three steps of plain imitation stay within the source's interval.
    lo, hi = points["imitator"][mode]["nie_ci"]
    assert lo <= points["none/0"][mode]["nie"] <= hi
  # The fine-tuned runs started from the source and moved; the source is untouched.
  _, source, _ = train.load(work)
  _, tuned, _ = train.load(os.path.join(work, "finetune", "outcome_10"))
  diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree.leaves(source), jax.tree.leaves(tuned)))
  assert 0 < diff < 0.1
  assert os.path.exists(os.path.join(work, "frontier", "frontier.png"))
  # Trained further since: its fine-tuning runs are not reused, and the error says so.
  with open(os.path.join(work, "metrics.jsonl"), "a") as f:
    f.write(json.dumps({"step": 5, "loss": 0.5}) + "\n")
  again = subprocess.run([sys.executable, "-m", "launch.frontier", f"--workdir={work}",
                          "--steps=3", "--lambdas=10", "--multiple=4"],
                         env=env, capture_output=True, text=True)
  assert again.returncode == 2, again.stderr[-2000:]
  assert "earlier training" in again.stderr + again.stdout
