"""The decay experiment (issue 13): fits on curves of known half-life, the grid's bad
values, resume after a kill, the tasks, and (slow) the real job end to end."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from imitator.decay import cell as decay
from imitator.decay import fit as decay_fit
from imitator.decay import sweep as decay_sweep
from imitator.decay import tasks as decay_tasks
from launch.configs import decay as decay_config
from launch.configs import default as default_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAU = np.arange(0, 16 * 64 + 1, 8.0)  # phase 2 of N = 64, read every 8 steps


# --------------------------------------------------------------------------- fits


@pytest.mark.parametrize("time_constant", [20.0, 150.0, 900.0])
def test_exponential_fit_recovers_the_half_life_of_exp_minus_t_over_T(time_constant):
  # g = a e^{-t/T} halves at T ln 2: the closed form, independent of the code's 2^{-t/h}.
  y = 0.8 * np.exp(-TAU / time_constant)
  fit = decay_fit.fit_exponential(TAU, y[None])
  assert fit["half_life"][0] == pytest.approx(time_constant * math.log(2), rel=2e-3)
  assert fit["amplitude"][0] == pytest.approx(0.8, rel=2e-3)
  assert decay_fit.half_life_crossing(TAU, y[None])[0] == pytest.approx(
      time_constant * math.log(2), rel=0.05 if time_constant > 50 else 0.2)


@pytest.mark.parametrize("scale,alpha", [(10.0, 0.5), (40.0, 1.0), (5.0, 2.0)])
def test_power_law_fit_half_life_is_where_the_true_curve_halves(scale, alpha):
  y = 0.6 * (1.0 + TAU / scale) ** -alpha
  h = decay_fit.fit_power_law(TAU, y[None])["half_life"][0]
  # The generating curve at the fitted half-life is half its start: solved by bisection.
  lo, hi = 0.0, 1e7
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if (1.0 + mid / scale) ** -alpha > 0.5 else (lo, mid)
  assert h == pytest.approx(lo, rel=0.01)


def test_held_out_error_picks_the_law_that_made_the_curve():
  exp_curve = 0.7 * np.exp(-TAU / 200.0)
  pow_curve = 0.7 * (1.0 + TAU / 8.0) ** -0.7
  for curve, law in ((exp_curve, "exponential"), (pow_curve, "power_law")):
    held = decay_fit.held_out_errors(TAU, curve)
    assert min(held, key=held.get) == law


def _population(curve, n=64, noise=0.05, seed=0):
  return curve[None] + noise * np.random.default_rng(seed).normal(size=(n, len(curve)))


def test_decay_fit_population_ci_covers_the_truth_and_retained_is_closed_form():
  T = 300.0
  gains = _population(0.5 * np.exp(-TAU / T))
  out = decay_fit.decay_fit(TAU, gains, min_gain=0.1, max_retained=0.9,
                            untrained=np.ones(64), n_boot=200)
  assert out["flag"] is None and out["fit"] == "exponential"
  lo, hi = out["half_life_ci"]
  assert lo < T * math.log(2) < hi and hi - lo < 0.5 * T
  assert out["retained"] == pytest.approx(math.exp(-TAU[-1] / T), abs=0.06)
  assert out["retained_ci"][0] < math.exp(-TAU[-1] / T) < out["retained_ci"][1]
  assert len(out["half_life_boot"]) == 200


def test_cells_never_learned_or_never_decaying_are_flagged_not_fitted():
  flat = _population(np.full_like(TAU, 0.5))
  nothing = _population(np.zeros_like(TAU))
  kw = dict(min_gain=0.1, max_retained=0.9, untrained=np.ones(64), n_boot=50)
  never = decay_fit.decay_fit(TAU, flat, **kw)
  assert never["flag"] == "never_decays" and "half_life" not in never
  unlearned = decay_fit.decay_fit(TAU, nothing, **kw)
  assert unlearned["flag"] == "not_learned" and "half_life" not in unlearned


def test_curves_that_overshoot_below_untrained_are_fitted_before_the_crossing():
  # Exponential decay to 0 up to the crossing, then far below: the tail must not count.
  y = 0.5 * np.exp(-TAU / 60.0)
  y[TAU > 240] = -2.0
  h = decay_fit.fit_exponential(TAU, y[None])["half_life"][0]
  assert h == pytest.approx(60.0 * math.log(2), rel=0.01)


def test_scaling_exponent_of_a_power_of_width():
  widths = [8, 32, 128, 512]
  h = [3.0 * w**0.5 for w in widths]
  boot = [np.full(100, v) * np.exp(0.01 * np.random.default_rng(i).normal(size=100))
          for i, v in enumerate(h)]
  out = decay_fit.scaling_exponent(widths, boot, h)
  assert out["exponent"] == pytest.approx(0.5, abs=1e-9)
  assert out["exponent_ci"][0] < 0.5 < out["exponent_ci"][1]


# --------------------------------------------------------------------------- grid


@pytest.mark.parametrize("field,value,named", [
    ("widths", "8,abc", "'abc'"), ("depths", "0", "'0'"),
    ("regularizers", "none,dropout", "'dropout'"),
    ("overlaps", "rotated:200", "'rotated:200'"), ("overlaps", "split:cifar", "split:cifar"),
    ("sweep", "l2:-1", "'-1'"), ("sweep", "replay:2", "'2'"), ("teachers", 32, "teachers=32")])
def test_bad_grid_values_name_the_value_and_what_is_allowed(field, value, named):
  config = decay_config.get_config("smoke")
  config[field] = value
  with pytest.raises(ValueError, match="allowed") as e:
    decay_sweep.grid(config)
  assert named in str(e.value)


def test_bad_grid_value_exits_2_before_anything_runs(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "launch.decay", "--config=launch/configs/decay.py:smoke",
       f"--workdir={tmp_path}", "--config.overlaps=labeller,rotated:x"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2, out.stderr
  assert "rotated:x" in out.stderr and "allowed" in out.stderr
  assert "Traceback" not in out.stderr
  assert not os.path.exists(tmp_path / "decay")


def test_default_grid_covers_the_issue():
  spec, cells = decay_sweep.grid(decay_config.get_config())
  assert {c.width for c in cells} >= {8, 32, 128, 512} and {c.depth for c in cells} == {1, 2}
  assert {c.regularizer for c in cells} == set(decay.REGULARIZERS)
  assert {c.overlap.name for c in cells} == {"labeller", "rotated:0", "rotated:30",
                                             "rotated:90", "split:digits", "backdoor"}
  l2 = {c.strength for c in cells if c.regularizer == "l2"}
  assert len(l2) >= 3 and decay.default_strength("l2") in l2
  assert spec.phase2 >= 16 * spec.phase1
  assert len({c.id for c in cells}) == len(cells)


# --------------------------------------------------------------------------- resume


def _fake_cell(calls, die_after=None):
  """A stand-in for decay.run_cell: a row whose half-life grows like sqrt(width)."""

  def run_cell(cell, spec, n, seed, fit_cfg, learning_rate, data, imitator):
    if die_after is not None and len(calls) == die_after:
      raise KeyboardInterrupt  # a kill between two cells
    calls.append(cell.id)
    tau = np.arange(0, spec.phase2 + 1, spec.probe_every, dtype=float)
    gains = _population(0.5 * np.exp(-tau / (5.0 * math.sqrt(cell.width))), n, 0.02,
                        seed=len(cell.id))
    fit = decay_fit.decay_fit(tau, gains, **fit_cfg, untrained=np.ones(n))
    return {"cell": cell.id, "width": cell.width, "depth": cell.depth,
            "regularizer": cell.regularizer, "strength": cell.strength,
            "overlap": cell.overlap.name, "n_teachers": n, **fit}

  return run_cell


def _report(workdir):
  with open(os.path.join(workdir, "decay", "report.json")) as f:
    return json.load(f)


def test_a_killed_sweep_resumes_skipping_finished_cells_with_the_same_report(tmp_path):
  config = decay_config.get_config("smoke")
  config.fit.n_boot = 20
  cells = decay_sweep.grid(config)[1]
  whole, killed = tmp_path / "whole", tmp_path / "killed"
  decay_sweep.run(config, str(whole), run_cell=_fake_cell([]))
  first = []
  with pytest.raises(KeyboardInterrupt):
    decay_sweep.run(config, str(killed), run_cell=_fake_cell(first, die_after=3))
  assert sorted(os.listdir(killed / "decay" / "cells")) == sorted(f"{c}.json" for c in first)
  again = []
  decay_sweep.run(config, str(killed), run_cell=_fake_cell(again))
  assert len(first) == 3 and set(again) == {c.id for c in cells} - set(first)
  assert _report(killed) == _report(whole)
  rows = _report(whole)["rows"]
  assert [r["cell"] for r in rows] == [c.id for c in cells]
  scaling = [s for s in _report(whole)["scaling"] if s["exponent"] is not None]
  assert scaling and all(abs(s["exponent"] - 0.5) < 0.1 for s in scaling)
  for name in _report(whole)["plots"]:
    assert os.path.getsize(whole / "decay" / name) > 0
  # Changed settings: finished cells are computed again (stopped after the first).
  config.seed = 1
  more = []
  with pytest.raises(KeyboardInterrupt):
    decay_sweep.run(config, str(killed), run_cell=_fake_cell(more, die_after=1))
  assert more == [cells[0].id]


# --------------------------------------------------------------------------- tasks


def test_rotation_turns_each_coordinate_plane():
  r = np.asarray(decay_tasks.rotation(4, 90.0))
  np.testing.assert_allclose(np.array([1.0, 0, 0, 0]) @ r, [0, 1, 0, 0], atol=1e-6)
  np.testing.assert_allclose(np.array([0, 0, 0, 1.0]) @ r, [0, 0, -1, 0], atol=1e-6)
  r30 = np.asarray(decay_tasks.rotation(4, 30.0))
  np.testing.assert_allclose(r30 @ r30.T, np.eye(4), atol=1e-6)
  c = math.cos(math.radians(30))
  assert (np.array([1.0, 0, 0, 0]) @ r30)[0] == pytest.approx(c, abs=1e-6)


@pytest.mark.slow
def test_synthetic_tasks_by_hand():
  import jax
  spec = decay_tasks.DecaySpec(dim=6, n_classes=3, batch=2, phase1=8, probe_every=2,
                               n_probes=50)
  key = jax.random.key(3)
  pairs = decay_tasks.synthetic_pairs(spec, key, 90.0)
  a, b = pairs["rotated"]
  stream = decay_tasks.synthetic_stream(spec, (a, b), jax.random.key(4))
  assert stream.x.shape == (spec.horizon, 2, 6)
  np.testing.assert_array_equal(stream.task_id[:8], [0, 1] * 4)
  assert not np.any(np.asarray(stream.task_id[8:]))
  # rotated: B's label is A's labeller on the un-rotated input x_B R^T.
  px, py = decay_tasks.synthetic_probes(spec, (a, b), jax.random.key(5))
  z = np.asarray(px) @ np.asarray(decay_tasks.rotation(6, 90.0)).T
  np.testing.assert_array_equal(np.argmax(z @ np.asarray(a.w), -1), np.asarray(py))
  # backdoor: B's probes carry the trigger and one label; A's steps never do.
  a, b = pairs["backdoor"]
  px, py = decay_tasks.synthetic_probes(spec, (a, b), jax.random.key(5))
  assert len(set(np.asarray(py).tolist())) == 1
  assert np.all(np.abs(np.asarray(px)[:, -spec.trigger_size:]) == spec.trigger_value)
  stream = decay_tasks.synthetic_stream(spec, (a, b), jax.random.key(4))
  x_a = np.asarray(stream.x)[np.asarray(stream.task_id) == 0]
  assert not np.any(np.all(np.abs(x_a[..., -spec.trigger_size:]) == spec.trigger_value, -1))
  # labeller: the cue tells the tasks apart; labels ignore feature 0.
  a, b = pairs["labeller"]
  stream = decay_tasks.synthetic_stream(spec, (a, b), jax.random.key(4))
  np.testing.assert_array_equal(np.asarray(stream.x)[:8, :, 0],
                                np.where(np.arange(8) % 2, -spec.cue, spec.cue)[:, None]
                                * np.ones((8, 2)))


@pytest.mark.slow
def test_split_probes_are_held_out_b_classes():
  import jax
  spec = decay_tasks.DecaySpec(phase1=8, probe_every=2, n_probes=40)
  data = decay_tasks.load_split("digits", spec)
  stream = decay_tasks.split_stream(spec, data, jax.random.key(0))
  y, task = np.asarray(stream.y), np.asarray(stream.task_id)
  assert set(y[task == 0].ravel()) <= {0, 1} and set(y[task == 1].ravel()) <= {2, 3}
  px, py = decay_tasks.split_probes(spec, data, jax.random.key(1))
  assert set(np.asarray(py).tolist()) <= {2, 3}
  train = np.asarray(data.x)
  dist = ((np.asarray(px)[:, None] - train[None]) ** 2).sum(-1).min(1)
  assert np.all(dist > 1e-6)  # no probe is a training input


# --------------------------------------------------------------------------- teachers


@pytest.mark.slow
def test_cell_probe_curves_match_a_hand_written_loop():
  import jax
  from learners import learner
  spec = decay_tasks.DecaySpec(phase1=8, probe_every=2, n_probes=10, batch=2)
  cell = decay.Cell(16, 1, "ewc", decay.default_strength("ewc"),
                    decay_tasks.parse_overlap("rotated:30"))
  family = decay.teacher_family(cell, spec.task, (spec.dim,), spec.out)
  stream, (px, py) = decay.cell_streams(spec, cell.overlap, 4, jax.random.key(0))
  hp = family.sample(jax.random.key(1), 4, fixed=decay.fixed_fields("ewc", cell.strength))
  keys = jax.random.split(jax.random.key(2), 4)
  traj = decay.teacher_rollouts(family, spec.probe_every, hp, keys, stream, px)
  loss, acc = decay.probe_curves(spec.task, traj.probe_outputs, py)
  i = 2
  h = family.member(hp, i)
  state = learner.init(family, h, keys[i])
  want_loss, want_acc = [], []
  for t in range(spec.horizon):
    if t % spec.probe_every == 0:
      p = np.asarray(learner.behave(family, h, state, px[i]))
      yi = np.asarray(py[i])
      want_loss.append(-np.mean(np.log(p[np.arange(len(yi)), yi])))
      want_acc.append(np.mean(p.argmax(-1) == yi))
    state, _ = learner.step(family, h, state, stream.x[i, t], stream.y[i, t])
  np.testing.assert_allclose(loss[i], want_loss, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(acc[i], want_acc)
  assert hp["ewc_strength"][0] == pytest.approx(0.1) and hp["l2_strength"][0] == 0


def _decay(workdir, *flags):
  return subprocess.Popen(
      [sys.executable, "-m", "launch.decay", "--config=launch/configs/decay.py:smoke",
       f"--workdir={workdir}", *flags], cwd=ROOT, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_the_smoke_job_killed_then_rerun_skips_finished_cells(tmp_path):
  cells_dir = tmp_path / "decay" / "cells"
  proc = _decay(tmp_path)
  deadline = time.time() + 300
  while time.time() < deadline and len(os.listdir(cells_dir) if cells_dir.exists() else []) < 2:
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done = sorted(os.listdir(cells_dir))
  assert len(done) >= 2 and not any(".tmp" in f for f in done)
  rerun = _decay(tmp_path)
  _, err = rerun.communicate(timeout=600)
  assert rerun.returncode == 0, err
  total = len(decay_sweep.grid(decay_config.get_config("smoke"))[1])
  assert f"{total} cells, {len(done)} already done" in err
  report = _report(tmp_path)
  assert len(report["rows"]) == total
  assert all(r["n_teachers"] >= 64 for r in report["rows"])
  fresh = tmp_path / "fresh"
  again = _decay(fresh)
  again.communicate(timeout=600)
  assert _report(fresh)["rows"] == report["rows"]


@pytest.mark.slow
def test_imitator_side_reports_covered_and_not_covered_cells(tmp_path):
  w0 = tmp_path / "w0"
  train = subprocess.run(
      [sys.executable, "-m", "launch.train", "--config=launch/configs/default.py:smoke",
       f"--workdir={w0}"], cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert train.returncode == 0, train.stderr
  config = decay_config.get_config("smoke,imitator")
  config.widths, config.overlaps, config.sweep = "8,32", "labeller,backdoor", ""
  report = decay_sweep.run(config, str(tmp_path / "w"), str(w0),
                           imitator_defaults=default_config.get_config())
  rows = {r["cell"]: r for r in report["rows"]}
  covered = [r for r in rows.values() if r["imitator_covered"]]
  assert {r["cell"] for r in covered} == {"w32-d1-none-0-labeller", "w32-d1-l2-0.01-labeller",
                                          "w32-d1-none-0-backdoor", "w32-d1-l2-0.01-backdoor"}
  for r in covered:
    assert r["forgetting_gap"] >= 0 and r["forgetting_gap_ci"][0] <= r["forgetting_gap"]
    assert "imitator_half_life" in r
  assert "width 32" in rows["w8-d1-none-0-labeller"]["imitator_reason"]
  with open(tmp_path / "w" / "decay" / "report.md") as f:
    assert "Not covered by the imitator's family" in f.read()
