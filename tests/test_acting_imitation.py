"""Imitating acting teachers (`imitator.acting`): the closed-loop rollout against a
trial-by-trial Python loop written from its docstring, an agent that *is* the teacher
(zero KL forced and alone, the teacher's own behaviour), the behaviour counts against
NumPy, the meta-objective against a second path (the agent reading the teacher's
recorded history), resume, and the recorded-choices evaluation."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imitator import metrics
from imitator.acting import agents, closed_loop, mle, recorded, train
from launch.configs import bandits
from learners import acting, acting_networks, environments, recorded_choices


def _teachers(rules, p, horizon, seed=0, arms=2):
  fam = acting.ActingFamily(arms=arms, rules=rules)
  key = jax.random.key(seed)
  hp = fam.sample(key, p)
  bandit = environments.Bandit(arms=arms, horizon=horizon, drift=0.08)
  tables = jax.vmap(bandit.tables)(jax.random.split(jax.random.fold_in(key, 1), p))
  return fam, hp, tables


def test_an_agent_that_is_the_teacher_matches_it_forced_and_alone():
  fam, hp, tables = _teachers(("q_learning",), 6, 40)
  model = agents.ValueModel(arms=2)
  sums = closed_loop.windowed(fam, hp, (model,), (hp,), tables, cut=10, window=10)
  np.testing.assert_allclose(sums["kl_forced"][0], 0.0, atol=1e-6)
  np.testing.assert_allclose(sums["kl_alone"][0], 0.0, atol=1e-6)
  np.testing.assert_allclose(sums["nll"][0], sums["nll_true"], atol=1e-6)
  # Common random numbers: alone, it makes the teacher's own choices and gets its rewards.
  np.testing.assert_array_equal(sums["counts_alone"][0], sums["counts"])
  assert sums["counts"][..., 2].sum() > 0  # switches happen: the check is not vacuous
  # Expected regret by hand from the teacher's own rollout: best p minus pi . p.
  pi = np.asarray(acting.population_rollout(fam, hp, tables).policy, np.float64)
  p = np.asarray(tables.p, np.float64)
  regret = (p.max(-1) - (pi * p).sum(-1)).reshape(6, 4, 10).mean(-1).T
  np.testing.assert_allclose(sums["regret"], regret, atol=1e-5)
  np.testing.assert_allclose(sums["regret_forced"][0], regret, atol=1e-5)
  np.testing.assert_allclose(sums["regret_alone"][0], regret, atol=1e-5)


def _loop_reference(fam, hp, tables, agent, meta, cut, window):
  """Per-window means of nll, kl_alone and the alone counts, trial by trial in Python
  (each library call jitted on its own, for speed)."""
  policy, learn = jax.jit(fam.policy_at), jax.jit(fam.learn_at)
  log_policy, observe = jax.jit(agent.log_policy), jax.jit(agent.observe)
  p, t = tables.v.shape
  nll = np.zeros((t // window, p))
  kl = np.zeros((t // window, p))
  counts = np.zeros((t // window, p, 7))
  for i in range(p):
    h = {k: v[i] for k, v in hp.items()}
    teacher, forced = fam.init_state(h), agent.init(meta)
    alone, shadow, prev = None, None, (-1, 0.0)
    for s in range(t):
      row = environments.Tables(*(a[i, s] for a in tables))
      pi = np.asarray(policy(h, teacher, row.x), np.float64)
      c = int(environments.choose(jnp.asarray(pi, jnp.float32), row.v))
      r = float(environments.reward(row, c))
      lp = np.asarray(log_policy(meta, forced, row.x), np.float64)
      nll[s // window, i] += -lp[c] / window
      new_teacher = learn(h, teacher, jnp.asarray(pi, jnp.float32), c, r, row.x)
      new_forced = observe(meta, forced, row.x, c, r, jnp.exp(jnp.asarray(lp, jnp.float32)))
      if s >= cut:
        lpa = np.asarray(log_policy(meta, alone, row.x), np.float64)
        ca = int(environments.choose(jnp.exp(jnp.asarray(lpa, jnp.float32)), row.v))
        ra = float(environments.reward(row, ca))
        ps = np.asarray(policy(h, shadow, row.x), np.float64)
        kl[s // window, i] += np.sum(np.where(ps > 0, ps * (np.log(np.maximum(ps, 1e-30))
                                                           - lpa), 0.0)) / window
        alone = observe(meta, alone, row.x, ca, ra, jnp.exp(jnp.asarray(lpa, jnp.float32)))
        shadow = learn(h, shadow, jnp.asarray(ps, jnp.float32), ca, ra, row.x)
      else:
        ca, ra = c, r
      if prev[0] >= 0:
        won = prev[1] > 0
        stay = ca == prev[0]
        counts[s // window, i] += [1, ra, not stay, won, won and stay, not won,
                                   (not won) and not stay]
      else:
        counts[s // window, i] += [1, ra, 0, 0, 0, 0, 0]
      prev = (ca, ra)
      teacher, forced = new_teacher, new_forced
      if s == cut - 1:
        alone, shadow = forced, teacher
  return nll, kl, counts


def _contextual_teachers(p, horizon, preset="small_mixed", seed=3):
  fam = acting_networks.NetworkActingFamily(arms=2, features=3, preset=preset)
  key = jax.random.key(seed)
  bandit = environments.Bandit(kind="contextual", arms=2, horizon=horizon, features=3,
                               switch_every=7)
  return fam, fam.sample(key, p), jax.vmap(bandit.tables)(
      jax.random.split(jax.random.fold_in(key, 1), p))


@pytest.mark.parametrize("contextual", [pytest.param(False, marks=pytest.mark.slow), True])
def test_windowed_rollout_equals_a_trial_by_trial_loop(contextual):
  if contextual:
    fam, hp, tables = _contextual_teachers(3, 15)
  else:
    fam, hp, tables = _teachers(("q_learning", "thompson", "ucb"), 3, 15, seed=2)
  im = agents.RecurrentImitator(arms=2, hidden=8, features=tables.x.shape[-1])
  meta = im.init_meta(jax.random.key(4))
  sums = jax.jit(lambda hp, tb, m: closed_loop.windowed(fam, hp, (im,), (m,), tb, 5, 5))(
      hp, tables, meta)
  nll, kl, counts = _loop_reference(fam, hp, tables, im, meta, cut=5, window=5)
  np.testing.assert_allclose(sums["nll"][0], nll, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(sums["kl_alone"][0], kl, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(sums["counts_alone"][0], counts)
  assert np.all(kl[0] == 0) and np.all(kl[1:] > 0)  # nothing alone before the cut


def test_behaviour_counts_and_rates_against_numpy():
  rng = np.random.default_rng(0)
  c = rng.integers(0, 3, 50)
  r = (rng.uniform(size=50) < 0.5).astype(np.float32)
  prev_c = np.concatenate([[-1], c[:-1]])
  prev_r = np.concatenate([[0.0], r[:-1]]).astype(np.float32)
  counts = np.asarray(metrics.behaviour_counts(prev_c, prev_r, c, r)).sum(0)
  wins = prev_r[1:] > 0
  stays = c[1:] == c[:-1]
  want = [50, r.sum(), (~stays).sum(), wins.sum(), (wins & stays).sum(), (~wins).sum(),
          (~wins & ~stays).sum()]
  np.testing.assert_array_equal(counts, want)
  rates = metrics.behaviour_rates(counts[None])
  assert rates["switch_rate"][0] == pytest.approx((~stays).mean())
  assert rates["win_stay"][0] == pytest.approx(stays[wins].mean())
  assert rates["lose_shift"][0] == pytest.approx((~stays[~wins]).mean())


def test_policy_kl_and_choice_nll_closed_forms():
  p = jnp.asarray([0.0, 0.25, 0.75])
  q = jnp.asarray([0.2, 0.3, 0.5])
  want = 0.25 * math.log(0.25 / 0.3) + 0.75 * math.log(0.75 / 0.5)
  assert float(metrics.policy_kl(p, jnp.log(q))) == pytest.approx(want, rel=1e-6)
  assert float(metrics.choice_nll(jnp.log(q), jnp.asarray(2))) == pytest.approx(-math.log(0.5))
  assert float(metrics.normalized_likelihood(-math.log(0.5))) == pytest.approx(0.5)


def test_objective_on_seen_trials_is_the_nll_of_the_recorded_history():
  config = bandits.get_config("smoke")
  fam = train.family(config)
  _, hp, tables = _teachers(tuple(config.acting.rules), 4, config.acting.t_train, seed=5)
  im = train.imitator(config)
  meta = im.init_meta(jax.random.key(1))
  t = config.acting.t_train
  loss_fn = jax.jit(lambda cut, alone=True: train.loss_fn(config, meta, hp, tables, cut,
                                                          alone), static_argnums=1)
  total, parts = loss_fn(jnp.full((4,), t))
  loss = total / (parts["seen"] + parts["alone"])
  traj = acting.population_rollout(fam, hp, tables)
  lp = jax.vmap(lambda c, r: agents.log_policies(im, meta, c, r))(traj.choice, traj.reward)
  want = -np.mean(np.take_along_axis(np.asarray(lp), np.asarray(traj.choice)[..., None],
                                     -1))
  assert float(loss) == pytest.approx(want, rel=1e-5)
  assert float(parts["nll_seen"]) / float(parts["seen"]) == pytest.approx(want, rel=1e-5)
  # All seen: skipping the alone tracks changes nothing.
  total_seen, _ = loss_fn(jnp.full((4,), t), False)
  assert float(total_seen) == pytest.approx(float(total), rel=1e-6)
  # Cut at 0: every trial is scored alone, against the shadow teacher.
  total0, parts0 = loss_fn(jnp.zeros((4,), jnp.int32))
  assert int(parts0["seen"]) == 0
  assert float(total0) == pytest.approx(float(parts0["kl_alone"]), rel=1e-6)
  assert float(total0) / int(parts0["alone"]) != pytest.approx(float(loss), rel=1e-3)


@pytest.mark.slow  # default suite budget; .ci/run runs it
def test_training_resumes_to_the_same_meta_params(tmp_path):
  config = bandits.get_config("smoke")
  config.eval.horizons = [1, 2]
  whole = train.train_and_evaluate(config, str(tmp_path / "whole"))
  stopped = train.train_and_evaluate(config, str(tmp_path / "cut"), stop_at_step=2)
  assert stopped["status"] == "preempted"
  resumed = train.train_and_evaluate(config, str(tmp_path / "cut"))
  _, meta_whole, _ = train.load(str(tmp_path / "whole"))
  _, meta_cut, untrained = train.load(str(tmp_path / "cut"))
  for a, b in zip(jax.tree.leaves(meta_whole), jax.tree.leaves(meta_cut)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(meta_whole),
                                                    jax.tree.leaves(untrained)))
  assert whole["rows"] == resumed["rows"]
  again = train.train_and_evaluate(config, str(tmp_path / "whole"))
  assert again["status"] == "complete" and again["rows"] == whole["rows"]
  alone = [r for r in whole["rows"] if r["track"] == "alone"]
  assert {r["agent"] for r in alone} == set(train.AGENTS)
  assert all(np.isfinite(r["kl"]) and r["kl"] >= 0 for r in alone)


def test_bad_acting_config_is_refused_naming_the_field():
  config = bandits.get_config("smoke")
  config.train.alone_fraction = 1.5
  with pytest.raises(ValueError, match="alone_fraction=1.5"):
    train.check(config)
  config = bandits.get_config("smoke")
  config.acting.rules = ["q_learning", "sarsa"]
  with pytest.raises(ValueError, match="sarsa"):
    train.check(config)
  config = bandits.get_config("smoke")
  config.eval.mle_restarts = 0
  with pytest.raises(ValueError, match="eval.mle_restarts=0"):
    train.check(config)
  config = bandits.get_config("smoke")
  config.acting.bandit.kind = "contextual"
  config.acting.networks = "nope"
  with pytest.raises(ValueError, match="preset 'nope'"):
    train.check(config)


@pytest.mark.slow  # default suite budget; .ci/run runs it
def test_recorded_choices_scored_after_the_watched_part(tmp_path):
  fam, hp, tables = _teachers(("q_learning",), 5, 200, seed=7)
  traj = acting.population_rollout(fam, hp, tables)
  choices = recorded_choices.Choices(
      np.asarray([f"s{i}" for i in range(5)]), np.array(traj.choice, np.int32),
      np.array(traj.reward, np.float32), np.ones((5, 200), bool))
  # Ragged: the last subject recorded 140 trials.
  choices.choice[4, 140:] = -1
  choices.reward[4, 140:] = 0
  choices.mask[4, 140:] = False
  path = str(tmp_path / "choices.csv")
  recorded_choices.write(path, choices, one_based=True)
  back = recorded_choices.read(path, one_based=True)
  im = agents.RecurrentImitator(arms=2, hidden=8)
  meta = im.init_meta(jax.random.key(0))
  result = recorded.evaluate(im, {"untrained": meta}, back, observed=0.5, mle_steps=100,
                             mle_restarts=4)
  assert result["scored_trials"] == 4 * 100 + 70
  rows = {r["agent"]: r for r in result["rows"]}
  # The untrained imitator's NLL by hand on the scored half of subject 0.
  lp = np.asarray(agents.log_policies(im, meta, traj.choice[0], traj.reward[0]))
  want = -lp[np.arange(100, 200), np.asarray(traj.choice[0, 100:])].mean()
  assert rows["untrained"]["per_subject_normalized_likelihood"][0] == pytest.approx(
      math.exp(-want), rel=1e-5)
  # The fit of the teachers' own model comes near the true model on the later trials.
  score = np.asarray(back.mask) & (np.arange(200)[None] >= np.asarray([100] * 4 + [70])[:, None])
  true = jax.vmap(lambda h, c, r, s: mle.nll(h, c, r, s, 2))(
      hp, jnp.asarray(back.choice), jnp.asarray(back.reward), jnp.asarray(score))
  true_like = float(np.mean(np.exp(-np.asarray(true))))
  assert rows["mle"]["normalized_likelihood"] == pytest.approx(true_like, abs=0.03)
  with pytest.raises(ValueError, match="observed=1.0"):
    recorded.split(back, 1.0)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=600):
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, check=False)


@pytest.mark.slow
def test_bandits_run_simulated_choices_and_launch_choices_end_to_end(tmp_path):
  workdir, path = str(tmp_path / "run"), str(tmp_path / "choices.csv")
  proc = _run("launch.train", "--config=launch/configs/bandits.py:smoke",
              f"--workdir={workdir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "alone KL(shadow||agent)" in proc.stdout
  proc = _run("launch.simulate_choices", f"--out={path}", "--subjects=6", "--trials=40",
              "--rules=q_learning,ucb", "--noone_based")
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = _run("launch.choices", f"--workdir={workdir}", f"--choices={path}",
              "--noone_based", "--observed=0.25")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "eval", "choices-choices.json")) as f:
    result = json.load(f)
  assert len(result["subjects"]) == 6 and result["scored_trials"] == 6 * 30
  assert {r["agent"] for r in result["rows"]} == {"imitator", "untrained", "mle"}
  # A 0-based file read as 1-based is refused in one line naming the value.
  proc = _run("launch.choices", f"--workdir={workdir}", f"--choices={path}",
              "--one_based")
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1 and "one_based" in lines[0], proc.stderr
  proc = _run("launch.choices", f"--workdir={workdir}", f"--choices={path}",
              "--noone_based", "--columns=choice")
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1 and "--columns" in lines[0], proc.stderr
