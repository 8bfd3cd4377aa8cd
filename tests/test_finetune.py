"""Fine-tuning after imitation (`imitator.training.finetune`, `launch.finetune`) and the
fidelity/capability frontier (`imitator.evaluation.frontier`, `launch.frontier`)."""

import json
import os
import subprocess
import sys

import chex
import conftest
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imitator import metrics
from imitator.evaluation import frontier
from imitator.kinds.gradient import GradientImitator
from imitator.rollout import episodes, objective
from imitator.training import experiment, finetune, outer_step
from launch.configs import default
from learners import learner, streams

import test_objective  # tests/ is on sys.path (pytest's default import mode)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
P = test_objective.P


def _data():
  """test_objective's teachers' streams, and a second behaviour b of the same shape."""
  keys, xs, ys, as_ = test_objective._data()  # pylint: disable=protected-access
  return keys, xs, ys, as_, jax.random.normal(jax.random.key(9), as_.shape)


@pytest.mark.slow  # default suite budget; .ci/run runs it
@pytest.mark.parametrize("observe", [None, 5])
def test_extra_term_adds_weight_times_its_divergence_and_leaves_observation(observe):
  """loss_and_grads with b and weight w is the value and gradient of a hand-written
  mean D(a, a_hat) + w mean D(b, a_hat), a_hat from the imitator observing a (not b)."""
  im = GradientImitator(task="regression", x_shape=(4,), out_dim=1, width=8)
  meta = im.init_meta(jax.random.key(2))
  keys, xs, ys, as_, bs = _data()
  w = 2.5
  cut = None if observe is None else jnp.full((P,), observe)

  def hand(meta):
    a_hat = objective.unroll(im, meta, keys, xs, ys, as_, observe=cut)[0]
    return (metrics.step_error("regression", as_, a_hat).mean()
            + w * metrics.step_error("regression", bs, a_hat).mean())

  fn = jax.jit(lambda m, b, w: objective.loss_and_grads(im, m, keys, xs, ys, as_,
                                                        observe=cut, extra=b, weight=w))
  loss, grads = fn(meta, bs, w)
  value, grad = jax.jit(jax.value_and_grad(hand))(meta)
  np.testing.assert_allclose(loss, value, rtol=1e-5)
  chex.assert_trees_all_close(grads, grad, rtol=1e-4, atol=1e-6)
  # Weight 0 is plain imitation, whatever b is.
  plain = jax.jit(lambda m: objective.loss_and_grads(im, m, keys, xs, ys, as_,
                                                     observe=cut))(meta)
  chex.assert_trees_all_close(fn(meta, bs, 0.0), plain, rtol=1e-6, atol=1e-8)


def _setting(smoke=True):
  config = default.get_config("smoke" if smoke else None)
  return config, *episodes.setting_from_config(config)


def test_outcome_is_the_label_and_process_the_overseers_learner_step_by_step():
  config, setting, data = _setting()
  ep = episodes.sample(setting, data, jax.random.key(3), 2)
  np.testing.assert_array_equal(
      finetune.extra_behaviour("outcome", setting, ep, None, None), ep.y)
  assert finetune.extra_behaviour("none", setting, ep, None, None) is None
  overseer = {f: v[0] for f, v in setting.family.sample(jax.random.key(4), 1).items()}
  key = jax.random.key(5)
  b = np.asarray(finetune.extra_behaviour("process", setting, ep, overseer, key))
  # Hand loop: the overseer's learner, its own weights, predicts before it learns.
  step = jax.jit(lambda st, x, y: learner.step(setting.family, overseer, st, x, y))
  for i, k in enumerate(jax.random.split(key, 2)):
    state = learner.init(setting.family, overseer, k)
    outs = []
    for t in range(setting.t):
      state, (out, _) = step(state, ep.x[i, t], ep.y[i, t])
      outs.append(np.asarray(out))
    np.testing.assert_allclose(b[i], np.stack(outs), rtol=1e-5, atol=1e-6)


def test_classification_outcome_is_one_hot():
  config = default.get_config("smoke")
  config.stream.kind = "linear_classification"
  config.stream.n_classes = 3
  setting, data = episodes.setting_from_config(config)
  ep = episodes.sample(setting, data, jax.random.key(3), 2)
  b = np.asarray(finetune.extra_behaviour("outcome", setting, ep, None, None))
  assert b.shape == ep.behaviour.shape
  np.testing.assert_array_equal(b.argmax(-1), ep.y)
  np.testing.assert_array_equal(b.sum(-1), 1.0)


@pytest.mark.slow
def test_overseer_trusts_the_candidate_with_the_lowest_task_loss(monkeypatch):
  monkeypatch.setattr(finetune, "OVERSEER_CANDIDATES", 5)
  monkeypatch.setattr(finetune, "OVERSEER_STREAMS", 2)
  _, setting, data = _setting()
  key = jax.random.key(7)
  chosen = finetune.overseer_member(setting, data, key)
  # Independently: every candidate's mean loss on the same streams, by a Python loop.
  k_hp, k_init, k_stream = jax.random.split(key, 3)
  hp = setting.family.sample(k_hp, 5, fixed=dict(setting.teacher))
  stream_keys = jax.random.split(k_stream, 2)
  init_keys = jax.random.split(k_init, 10)
  losses = []
  for c in range(5):
    member = {f: v[c] for f, v in hp.items()}
    total = 0.0
    for s in range(2):
      stream = streams.make_stream(setting.spec, stream_keys[s], data)
      state = learner.init(setting.family, member, init_keys[2 * c + s])
      step = jax.jit(lambda st, x, y: learner.step(setting.family, member, st, x, y))
      for t in range(setting.t):
        state, (_, loss) = step(state, stream.x[t], stream.y[t])
        total += float(loss)
    losses.append(total)
  best = int(np.argmin(losses))
  for f in hp:
    np.testing.assert_array_equal(chosen[f], hp[f][best])


@pytest.mark.slow  # default suite budget; .ci/run runs it
def test_finetuning_step_trains_the_imitator_only_and_the_config_is_checked(tmp_path):
  config = default.get_config("smoke")
  source = conftest.untrained_workdir(str(tmp_path / "source"), config)
  ft = finetune.run_config(source, default.get_config(), "outcome", 3.0, 20, 1e-2)
  assert (ft.train.finetune.source, ft.train.finetune.extra, ft.train.finetune.weight) == (
      os.path.abspath(source), "outcome", 3.0)
  assert ft.train.eval_every == 20 and ft.train.free_running.start_fraction == 0.0
  exp = experiment.Experiment(ft)
  ts = exp.place(exp.init_state())
  before = jax.device_get(ts.meta)
  step = outer_step.step_fn(exp, exp.setting.t)
  after = jax.device_get(step(step(ts)).meta)  # the first step's rate is 0 (warmup)
  chex.assert_trees_all_equal(after["frozen"], before["frozen"])
  chex.assert_trees_all_equal(after["context_only"], before["context_only"])
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(after["imitator"]), jax.tree.leaves(before["imitator"])))
  with pytest.raises(ValueError, match="lambda >= 0"):
    finetune.run_config(source, default.get_config(), "outcome", -1.0, 20, 1e-2)
  ft.train.truncation = 16
  with pytest.raises(ValueError, match="train.truncation=0"):
    experiment.Experiment(ft)


def _figs(rng, n=64):
  chance = rng.uniform(1, 2, n)
  teacher = rng.uniform(0.5, 1, n)
  base = {m: {"err": rng.uniform(0.1, 0.2, n), "loss": teacher * rng.uniform(0.9, 1.1, n)}
          for m in frontier.MODES}
  better = {m: {"err": base[m]["err"] * 0.8, "loss": base[m]["loss"] * 0.9}
            for m in frontier.MODES}
  worse = {m: {"err": base[m]["err"] * 1.5, "loss": base[m]["loss"] * 0.95}
           for m in frontier.MODES}
  return {"chance": chance, "teacher_loss": teacher, frontier.SOURCE: base,
          "process/1": better, "outcome/1": worse}


def test_frontier_figures_against_hand_computation():
  figs = _figs(np.random.default_rng(0))
  points = [{"name": frontier.SOURCE, "method": "imitation", "lambda": None},
            {"name": "outcome/1", "method": "outcome", "lambda": 1.0},
            {"name": "process/1", "method": "process", "lambda": 1.0}]
  out = frontier.frontier(figs, points)
  p = out["points"][2]["alone"]
  f = figs["process/1"]["alone"]
  np.testing.assert_allclose(p["nie"], f["err"].mean() / figs["chance"].mean())
  np.testing.assert_allclose(p["loss_ratio"], f["loss"].mean() / figs["teacher_loss"].mean())
  src = figs[frontier.SOURCE]["alone"]
  np.testing.assert_allclose(p["versus_source"]["nie_ratio"], 0.8, rtol=1e-9)
  np.testing.assert_allclose(p["versus_source"]["capability_gain"],
                             (src["loss"].mean() - f["loss"].mean())
                             / figs["teacher_loss"].mean())
  assert p["versus_source"]["capability_gain_ci"][0] > 0
  # Process here is more faithful and more capable than outcome in both modes: strict.
  assert [(d["mode"], d["better"], d["strict"]) for d in out["dominance"]] == [
      ("forced", "process", True), ("alone", "process", True)]
  assert len(frontier.table(out)) == 2 + len(points)
  text = frontier.markdown(dict(out, command="cmd", seconds=1), every_pair=False)
  assert text.count("process better in 1 (1 on both axes), outcome in 0") == 2, text
  assert "  - alone: process lambda=1 vs outcome lambda=1: process is better on both" in (
      frontier.markdown(out))


@pytest.mark.slow
def test_finetune_and_frontier_end_to_end(tmp_path):
  """Smoke config trained 300 steps; lambda = 0 fine-tuning keeps its NIE within noise;
  launch.frontier writes the table, json and plot with paired figures."""
  work = str(tmp_path / "run")
  env = dict(os.environ, PYTHONPATH=ROOT)
  run = lambda *args: subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env,
                                     capture_output=True, text=True, timeout=900)
  r = run("launch.train", "--config=launch/configs/default.py:smoke", f"--workdir={work}")
  assert r.returncode == 0, r.stderr[-2000:]
  r = run("launch.finetune", f"--workdir={work}", "--extra=none", "--lambda=0",
          "--steps=20")
  assert r.returncode == 0, r.stderr[-2000:]
  rows = lambda w: {row["imitator"]: row for row in json.load(
      open(os.path.join(w, "eval", "report.json")))["results"]}
  src, ft = rows(work)["gradient"], rows(os.path.join(work, "finetune", "none_0"))["gradient"]
  assert ft["nie_ci"][0] <= src["nie"] <= ft["nie_ci"][1], (src, ft)
  config = default.get_config("smoke")
  config.seed = 1
  other = conftest.untrained_workdir(str(tmp_path / "seed1"), config)
  r = run("launch.frontier", f"--workdir={work}", "--lambdas=3", "--steps=20",
          "--multiple=2", f"--ensemble={other}")
  assert r.returncode == 0, r.stderr[-2000:]
  out = json.load(open(os.path.join(work, "frontier", "frontier.json")))
  assert {p["name"] for p in out["points"]} == {
      "imitator", "none/0", "outcome/3", "process/3", "voting/2"}
  assert os.path.exists(os.path.join(work, "frontier", "frontier.png"))
  # lambda = 0: fidelity unchanged within its paired CI.
  none = next(p for p in out["points"] if p["name"] == "none/0")
  lo, hi = none["forced"]["versus_source"]["nie_ratio_ci"]
  assert lo <= 1.0 <= hi or abs(none["forced"]["versus_source"]["nie_ratio"] - 1) < 0.05
  r = run("launch.finetune", f"--workdir={work}", "--extra=outcome", "--lambda=-1")
  assert r.returncode == 2 and "lambda >= 0" in r.stderr
