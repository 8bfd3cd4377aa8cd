"""Evaluation rows, references, comparisons, sweeps and the report files, on tiny
hand-made arrays and teachers (no training)."""

import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from imitator.evaluation import battery, figures, render, report_json
from imitator.rollout import episodes, references
from imitator.training import experiment
from launch.configs import default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def linear():
  """Three linear SGD teachers over 6 steps, and their reference learners."""
  config = default.get_config("smoke")
  config.family.name = "sgd_linear"
  config.stream.horizon = 6
  setting, data = episodes.setting_from_config(config)
  ep = episodes.sample(setting, data, jax.random.key(3), 3)
  refs = references.behaviours(setting.family, ep.hparams, ep.init_keys, ep.x, ep.y)
  return setting, ep, {k: np.asarray(v) for k, v in refs.items()}


def test_twin_is_the_teacher_when_the_family_draws_nothing(linear):
  _, ep, refs = linear
  # The same computation in another program: equal up to float rounding.
  np.testing.assert_allclose(refs["twin"], np.asarray(ep.behaviour), rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_twin_shares_weights_but_not_draws_with_replay_and_shrink_perturb():
  config = default.get_config("smoke")
  config.family.name = "sgd_linear"
  config.family.regularizers = "replay,shrink_perturb"
  config.family.replay_size = 4
  config.stream.horizon = 6
  config.teacher.replay_ratio = 0.5
  config.teacher.shrink = 1e-3
  setting, data = episodes.setting_from_config(config)
  ep = episodes.sample(setting, data, jax.random.key(3), 2)
  twin = np.asarray(references.behaviours(
      setting.family, ep.hparams, ep.init_keys, ep.x, ep.y)["twin"])
  a = np.asarray(ep.behaviour)
  np.testing.assert_allclose(twin[:, 0], a[:, 0], rtol=1e-6)  # same initial weights
  assert np.abs(twin[:, -1] - a[:, -1]).max() > 1e-5  # own noise since step 1


def test_known_hparams_is_sgd_from_zero_weights_by_hand(linear):
  """A linear SGD learner from w = 0, b = 0 (h = w.x/sqrt(d) + b): a_0 = 0, and after
  one step w_1 = lr y_0 x_0/sqrt(d), b_1 = lr y_0, so a_1 = lr y_0 (x_0.x_1/d + 1)."""
  _, ep, refs = linear
  ref = refs["known_hparams"]
  x, y = np.asarray(ep.x)[:, :, 0], np.asarray(ep.y)[:, :, 0, 0]
  lr = np.asarray(ep.hparams["learning_rate"])
  d = x.shape[-1]
  np.testing.assert_array_equal(ref[:, 0, 0, 0], 0.0)
  np.testing.assert_allclose(ref[:, 1, 0, 0],
                             lr * y[:, 0] * ((x[:, 0] * x[:, 1]).sum(-1) / d + 1), rtol=1e-5)
  assert not np.allclose(ref, np.asarray(ep.behaviour))  # the teacher's init is not 0


def test_untrained_meta_is_the_initial_draw_of_training():
  config = default.get_config("smoke")
  exp = experiment.Experiment(config)
  imitators, metas = battery.with_untrained(exp, {"imitator": None})
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), 1), 0)
  expected = exp.imitators["imitator"].init_meta(key)
  assert imitators["untrained"] is exp.imitators["imitator"]
  chex.assert_trees_all_equal(metas["untrained"], expected)


def test_rows_exclude_blown_up_teachers_and_carry_identification(linear):
  # The chance error is 1 a step (behaviour 0, chance 1); an output a_hat = sqrt(err)
  # has error err.
  family = linear[0].family
  P, T = 4, 6
  zeros = np.zeros((P, T, 1, 1))
  ep = episodes.Episodes(x=np.zeros((P, T, 1, 8)), y=zeros, task_id=np.zeros((P, T)),
                         behaviour=zeros.copy(), loss=np.zeros((P, T)),
                         hparams=family.sample(jax.random.key(0), P),
                         chance=np.ones((P, T, 1, 1)))
  err = np.array([[9.0] * 6,  # its teacher blows up below: excluded
                  [1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
                  [1.0, 0.0, 0.0, 0.0, 0.6, 0.0],
                  [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
  behaviour = ep.behaviour.copy()
  behaviour[0, 3] = np.inf
  ep = ep._replace(behaviour=behaviour)
  a_hat = np.sqrt(err)[..., None, None]
  frozen = np.ones_like(a_hat)
  frozen[2, 5] = np.nan  # an imitator that blew up on one teacher
  outputs = {"imitator": (a_hat, None, None), "frozen": (frozen, None, None)}
  keep = figures.usable_teachers(ep)
  np.testing.assert_array_equal(keep, [False, True, True, True])
  ep, outputs = figures.select_teachers(ep, outputs, keep)
  rows = figures.shift_rows("regression", {"imitator": "gradient"}, "drift", 2, [2, 4, 6],
                             ep, outputs, family, strength=0.3, excluded=1)
  by = {(r["imitator"], r["horizon"]): r for r in rows}
  r = by[("gradient", 6)]
  assert (r["n_teachers"], r["n_teachers_excluded"], r["strength"]) == (3, 1, 0.3)
  # Mean error [1, 2/3, 0, 0, .2, 0]; trailing sums over 2 steps [1, 5/3, 2/3, 0, .2, .2]
  # / [1, 2, 2, 2, 2, 2]: NIE [1, .83, .33, 0, .1, .1] is <= .25 from step 4.
  assert r["identification_step"] == {"step": 4, "t_train_multiple": 2.0}
  # Teachers identify at 4, never, 4: the median is 4, two of three identified.
  assert r["identification_step_median"] == {"step": 4, "t_train_multiple": 2.0}
  assert r["identified_fraction"] == pytest.approx(2 / 3)
  assert by[("gradient", 2)]["identification_step"] == r["identification_step"]
  assert r["nie"] == pytest.approx(0.2 / 2)
  assert by[("oracle", 6)]["identification_step"]["step"] == 1
  assert "note" not in r and "1 of 3 teachers" in by[("frozen", 6)]["note"]
  written = [report_json._finite(r) for r in rows]
  assert {r["nie"] for r in written if r["imitator"] == "frozen" and r["horizon"] == 6} == {None}
  md = render.markdown({"t_train": 2, "results": written})
  assert "## sweep: drift" in md and "| gradient |" in md


def test_comparisons_pair_the_imitator_with_each_baseline_and_reference():
  chance = np.ones((2, 4))
  errs = {"gradient": np.ones((2, 4)), "frozen": np.array([[2.0] * 4, [4.0] * 4]),
          "context_only": np.full((2, 4), 0.5), "known_hparams": np.full((2, 4), 1.0)}
  comps = figures.comparisons("gradient", errs, chance, "none", 2, [2, 4])
  by = {(c["versus"], c["horizon"]): c for c in comps}
  assert set(by) == {(v, h) for v in ("frozen", "context_only", "known_hparams")
                     for h in (2, 4)}  # untrained absent from errs: no row
  c = by[("frozen", 4)]
  assert (c["nie_diff"], c["nie_ratio"], c["n_teachers"]) == (pytest.approx(-2.0),
                                                              pytest.approx(1 / 3), 2)
  assert c["shift"] == "none" and c["strength"] is None and c["imitator"] == "gradient"
  assert by[("context_only", 2)]["nie_ratio"] == pytest.approx(2.0)


def _row(name, shift, strength, h, nie, **extra):
  return {"imitator": name, "shift": shift, "strength": strength, "horizon": h, "nie": nie,
          "nie_ci": [None if nie is None else nie * 0.9, None if nie is None else nie * 1.1],
          "n_teachers": 8, "n_teachers_excluded": 0, **extra}


def test_breaking_points_and_merged_report_keep_what_was_there(tmp_path):
  t = 2
  os.makedirs(tmp_path / "eval")
  old = {"t_train": t, "trained_by": "someone",
         "results": [_row("gradient", "none", None, t, 0.2, from_training=True),
                     _row("gradient", "covariate_scale", 0.5, 16 * t, 0.1)],
         "comparisons": [{"imitator": "gradient", "versus": "frozen", "shift": "none",
                          "horizon": t, "nie_diff": -0.5, "nie_diff_ci": [-1, 0],
                          "nie_ratio": 0.5, "nie_ratio_ci": [0.3, 0.7], "n_teachers": 8}],
         "skipped": [{"shift": "digits", "strength": None, "reason": "no data"},
                     {"shift": "covariate_scale", "strength": 2.0, "reason": "old"}]}
  with open(tmp_path / "eval" / "report.json", "w") as f:
    json.dump(old, f)
  new = [_row(n, "covariate_scale", s, h, v) for n, s, h, v in [
      ("gradient", 2.0, 16 * t, 0.3), ("gradient", 8.0, 16 * t, None),
      ("gradient", 2.0, t, 0.2), ("frozen", 2.0, 16 * t, 0.2), ("frozen", 8.0, 16 * t, 0.2),
      ("oracle", 2.0, 16 * t, 0.0)]] + [_row("gradient", "covariate_scale", None, t, 0.4),
                                         _row("frozen", "none", None, t, 0.4)]
  rep = report_json.write_report(str(tmp_path), t, new, skipped=[
      {"shift": "drift", "strength": 8.0, "reason": "new"}])
  assert rep["trained_by"] == "someone" and rep["comparisons"] == old["comparisons"]
  # digits was not evaluated now: its reason stays; covariate_scale 2 now has rows.
  assert [s["reason"] for s in rep["skipped"]] == ["no data", "new"]
  keys = {(r["imitator"], r["shift"], r["strength"], r["horizon"]) for r in rep["results"]}
  assert ("gradient", "none", None, t) in keys and len(keys) == len(rep["results"]) == 10
  points = {(p["imitator"], p["shift"]): p for p in rep["breaking_points"]}
  assert set(points) == {("gradient", "covariate_scale"), ("frozen", "covariate_scale")}
  # 0.5 -> 0.1 holds, 2 -> 0.3 breaks (the 1x row at 0.2 does not count).
  assert points[("gradient", "covariate_scale")] == {
      "imitator": "gradient", "shift": "covariate_scale", "observe": None,
      "breaking_strength": 2.0, "swept": [0.5, 2.0, 8.0], "horizon": 16 * t}
  assert points[("frozen", "covariate_scale")]["breaking_strength"] is None
  md = open(tmp_path / "eval" / "report.md").read()
  assert md.index("## breaking points") < md.index("## shift: none")
  assert "| gradient | 2 |" in md and "| frozen | none up to 8 |" in md
  assert "## sweep: covariate_scale" in md and "n/a / diverged" in md
  # The unswept covariate_scale row keeps its own table.
  assert "## shift: covariate_scale" in md
  assert "| none | 1x | frozen | -0.500 [-1.000, 0.000] | 0.500 [0.300, 0.700] |" in md
  render.plot_sweep(rep, "covariate_scale", True, str(tmp_path / "s.png"))
  assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_plots_survive_huge_zero_and_non_finite_values(tmp_path):
  steps = np.array([1, 2, 4, 8, 16])
  wild = np.array([0.0, np.inf, np.nan, 1e300, 0.5])
  curves = {"none": {"gradient": {"steps": steps, "nie": wild, "lo": wild / 2, "hi": wild},
                     "twin": {"steps": steps, "nie": np.zeros(5), "lo": np.zeros(5),
                              "hi": np.zeros(5)}},
            "drift": {"frozen": {"steps": steps, "nie": np.full(5, np.nan),
                                 "lo": np.full(5, np.nan), "hi": np.full(5, np.nan)}}}
  render.plot_nie(curves, 4, str(tmp_path / "nie.png"))
  assert (tmp_path / "nie.png").read_bytes()[:4] == b"\x89PNG"


def test_parse_sweep_defaults_values_and_refusals():
  assert battery.parse_sweep("covariate_scale") == ("covariate_scale",
                                                     (0.25, 0.5, 1.0, 2.0, 4.0, 8.0))
  assert battery.parse_sweep("drift:0.3,0.01,0.3") == ("drift", (0.01, 0.3))
  assert battery.parse_sweep("label_noise:0,0.5") == ("label_noise", (0.0, 0.5))
  for shift, sweep in battery.DEFAULT_SWEEPS.items():
    assert 5 <= len(sweep.strengths) <= 7 and list(sweep.strengths) == sorted(sweep.strengths)
  with pytest.raises(ValueError, match=r"--sweep=digits: 'digits' has no strength.*drift"):
    battery.parse_sweep("digits")
  with pytest.raises(ValueError, match="'nope' is not a shift"):
    battery.parse_sweep("nope:1")
  with pytest.raises(ValueError, match=r"--sweep=drift:0,x: strengths '0,x'; allowed: numbers > 0"):
    battery.parse_sweep("drift:0,x")
  with pytest.raises(ValueError, match="numbers > 0"):
    battery.parse_sweep("covariate_scale:0")


def test_evaluate_command_refuses_a_sweep_of_a_shift_without_strength(tmp_path):
  out = subprocess.run([sys.executable, "-m", "launch.evaluate", f"--workdir={tmp_path}",
                        "--sweep=new_task_class:1,2"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 2
  line = out.stderr.strip().splitlines()[-1]
  assert "--sweep=new_task_class:1,2" in line and "no strength" in line and "drift" in line
