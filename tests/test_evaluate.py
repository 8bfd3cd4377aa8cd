"""The evaluation battery, its report, and the inspection script, on a smoke checkpoint."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from imitator import metrics
from imitator.evaluation import battery, evaluate, figures
from imitator.rollout import references
from imitator.training import experiment, train
from launch.configs import default, digits
from learners import npz, shifts, streams

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("smoke"))
  config = default.get_config("smoke")
  config.train.steps = 40
  config.train.log_every = 20
  config.train.eval_every = 20
  config.train.checkpoint_every = 20
  train.train_and_evaluate(config, workdir)
  return workdir, config


@pytest.mark.slow
def test_battery_report_schema_table_and_plots(run, tmp_path):
  workdir, config = run
  exp = experiment.Experiment(config)
  stream_file = str(tmp_path / "stream.npz")
  npz.save_stream(stream_file, streams.synthetic_stream(
      streams.StreamSpec(kind="linear_regression", dim=8, horizon=96), jax.random.key(7)))
  evaluate.evaluate(exp, workdir, ["none", "covariate_scale", "new_task_class", "npz"],
                    stream_npz=stream_file, sweeps={"covariate_scale": (0.5, 8.0)})
  report = json.load(open(os.path.join(workdir, "eval", "report.json")))
  t = config.stream.horizon
  n = config.eval.teachers
  assert report["t_train"] == t
  rows = {(r["imitator"], r["shift"], r["strength"], r["horizon"]): r
          for r in report["results"]}
  names = ("gradient", "frozen", "context_only", "oracle") + references.REFERENCES
  for name in names:
    for shift, strength in (("none", None), ("covariate_scale", None),
                            ("new_task_class", None), ("covariate_scale", 0.5),
                            ("covariate_scale", 8.0)):
      for m in metrics.HORIZON_MULTIPLES:
        r = rows[(name, shift, strength, m * t)]
        assert r["n_teachers"] + r["n_teachers_excluded"] == n >= 64
        assert r["n_teachers"] > 0
        assert set(r) >= {"nie", "nie_ci", "horizon_to_divergence", "task_gap",
                          "task_gap_ci", "identification_step",
                          "identification_step_median", "identified_fraction"}
        assert set(r["horizon_to_divergence"]) == {"0.1", "0.25"}
        # One identification per imitator and shift, on every horizon's row.
        assert r["identification_step"] == rows[(name, shift, strength, t)][
            "identification_step"]
        if r["nie"] is not None and r["nie_ci"][0] is not None:
          assert r["nie_ci"][0] <= r["nie"] <= r["nie_ci"][1]
    # The user's stream: 96 steps hold the horizons 32 and 64 (3 x 32 would not be a
    # power of two of T_train), evaluated on the teachers rolled out on it.
    assert (name, "npz", None, t) in rows and (name, "npz", None, 2 * t) in rows
  assert ("gradient", "forgetting", None, 4 * t) in rows
  assert rows[("oracle", "none", None, t)]["nie"] == 0.0
  # SGD teachers of this family have no draws of their own: the twin is the teacher.
  assert rows[("twin", "none", None, 16 * t)]["nie"] < 1e-6
  # Inputs 8 times larger: teachers that blow up are excluded and counted.
  strong = rows[("gradient", "covariate_scale", 8.0, t)]
  assert strong["n_teachers_excluded"] > 0 and strong["n_teachers"] < n
  # The row written at the end of training is still there, now with the battery's.
  assert rows[("gradient", "none", None, t)]["nie"] is not None
  comps = {(c["versus"], c["shift"], c["strength"], c["horizon"]): c
           for c in report["comparisons"]}
  for versus in figures.VERSUS:
    c = comps[(versus, "covariate_scale", 8.0, 16 * t)]
    assert c["imitator"] == "gradient" and c["n_teachers"] == strong["n_teachers"]
  c = comps[("frozen", "none", None, t)]
  g, f = rows[("gradient", "none", None, t)]["nie"], rows[("frozen", "none", None, t)]["nie"]
  assert c["nie_diff"] == pytest.approx(g - f) and c["nie_ratio"] == pytest.approx(g / f)
  points = {(p["imitator"], p["shift"]): p for p in report["breaking_points"]}
  p = points[("gradient", "covariate_scale")]
  assert p["swept"] == [0.5, 8.0] and p["horizon"] == 16 * t
  nie_16 = {s: rows[("gradient", "covariate_scale", s, 16 * t)]["nie"] for s in (0.5, 8.0)}
  broken = [s for s, v in nie_16.items() if v is None or v > 0.25]
  assert p["breaking_strength"] == (min(broken) if broken else None)
  md = open(os.path.join(workdir, "eval", "report.md")).read()
  assert "## shift: covariate_scale" in md and "## forgetting" in md
  assert "## sweep: covariate_scale" in md and "## breaking points" in md
  assert "| gradient |" in md and "| known_hparams |" in md and "## comparisons" in md
  for png in ("nie.png", "forgetting.png", "sweep_covariate_scale.png"):
    with open(os.path.join(workdir, "eval", png), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  forgetting = json.load(open(os.path.join(workdir, "eval", "forgetting.json")))
  assert len(forgetting["teacher"]) == len(forgetting["steps"]) == 4 * t // (t // 8)


def test_new_shifts_do_what_their_docs_say():
  config = default.get_config()
  config.family.name = "sgd_linear"  # one optimizer: out_of_family has three to pick from
  assert shifts.apply(config, "new_task_class").stream.kind == "mlp_regression"
  assert shifts.apply(config, "digits").stream.real_inputs == "digits"
  assert shifts.apply(config, "mnist1d").stream.real_inputs == "mnist1d"
  base = experiment.Experiment(config).setting.family
  for name, check in [
      ("teacher_prior", lambda f: f.learning_rate_range("sgd")[1] <= base.learning_rate_range(
          "sgd")[0] + 1e-12),
      ("out_of_family", lambda f: f.optimizers == ("adam",) and "adam" not in base.optimizers),
  ]:
    setting, _ = battery.shifted_setting(experiment.Experiment(config), name)
    assert check(setting.family), name
    hp = setting.family.sample(jax.random.key(0), 256)
    if name == "teacher_prior":  # every sampled teacher is outside the training prior
      assert float(np.max(hp["learning_rate"])) <= base.learning_rate_range("sgd")[0] * 1.0001
  # Real inputs really are digits: their projection, not Gaussian draws.
  setting, data = battery.shifted_setting(experiment.Experiment(config), "digits")
  assert data is not None and data.x.shape[1] == config.stream.dim
  with pytest.raises(shifts.NotApplicable, match="already 'dataset'"):
    shifts.apply(digits.get_config(), "digits")
  with pytest.raises(ValueError, match="unknown shift 'nope'"):
    shifts.apply(config, "nope")


@pytest.mark.slow
def test_battery_beyond_16x_streams_and_agrees_with_the_materialized_rows(run):
  """Multiples past battery.STREAMED_ABOVE run through the co-rollout: its rows at 1x
  and 2x T_train equal the materialized battery's, and it reaches 32x."""
  workdir, config = run
  exp = experiment.Experiment(config)
  meta = evaluate.restore_meta(exp, workdir)
  t = config.stream.horizon
  rows = {}
  for multiples in ((1, 2), (1, 2, 32)):
    ran = battery.run_battery(exp, meta, ["none"], multiples=multiples)
    rows[multiples] = {(r["imitator"], r["horizon"]): r for r in ran["results"]}
  streamed, materialized = rows[(1, 2, 32)], rows[(1, 2)]
  assert {h for _, h in streamed} == {t, 2 * t, 32 * t}
  for key, want in materialized.items():
    got = streamed[key]
    for field in ("nie", "nie_median", "task_gap"):
      assert got[field] == pytest.approx(want[field], rel=1e-4, abs=1e-6), (key, field)
    assert got["n_teachers"] == want["n_teachers"]
  for name in ("gradient", "frozen", "context_only", "untrained", "known_hparams", "twin"):
    r = streamed[(name, 32 * t)]
    assert np.isfinite(r["nie"]) and r["nie_ci"][0] <= r["nie"] <= r["nie_ci"][1]
    step = r["identification_step"]["step"]
    assert step is None or step % (t // 4) == 0  # block ends: T_train / 4 steps


@pytest.mark.slow
def test_alone_rows_agree_streamed_and_materialized_and_references_ignore_the_cut(run):
  workdir, config = run
  exp = experiment.Experiment(config)
  meta = evaluate.restore_meta(exp, workdir)
  t = config.stream.horizon
  rows, comps = {}, {}
  for multiples in ((1, 2), (1, 2, 32)):
    ran = battery.run_battery(exp, meta, ["none"], multiples=multiples, observes=(t,))
    rows[multiples] = {(r["imitator"], r["horizon"], r["observe"]): r
                       for r in ran["results"]}
    comps[multiples] = {(c["versus"], c["horizon"], c["observe"]) for c in ran["comparisons"]}
    assert set(ran["cuts"]) == {"none", f"none, alone after {t}"}
  streamed, materialized = rows[(1, 2, 32)], rows[(1, 2)]
  assert ("gradient", t, t) not in materialized  # alone rows start after the cut
  for key, want in materialized.items():
    got = streamed[key]
    for field in ("nie", "nie_median", "task_gap"):
      assert got[field] == pytest.approx(want[field], rel=1e-4, abs=1e-6), (key, field)
  for name in ("known_hparams", "twin"):  # they never see the teacher
    assert materialized[(name, 2 * t, t)]["nie"] == materialized[(name, 2 * t, None)]["nie"]
  assert materialized[("gradient", 2 * t, t)]["nie"] != pytest.approx(
      materialized[("gradient", 2 * t, None)]["nie"])
  fr = streamed[("gradient", 32 * t, t)]["free_running_horizon"]
  assert fr["within_steps"] == 31 * t and 0 <= fr["beyond_fraction"] <= 1
  assert fr["steps"] is None or t <= fr["steps"] <= 31 * t
  assert ("context_only", 32 * t, t) in comps[(1, 2, 32)]
  assert ("known_hparams", 2 * t, t) in comps[(1, 2)]


@pytest.mark.slow
def test_inspect_checkpoint_prints_and_exports(run, tmp_path):
  workdir, config = run
  export = str(tmp_path / "meta.npz")
  out = subprocess.run([sys.executable, "-m", "launch.inspect_checkpoint",
                        f"--workdir={workdir}", "--compare", "--compare_steps=5",
                        f"--export={export}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  text = out.stdout
  assert "checkpoint step: 40" in text and '"val_nie/imitator"' in text
  assert "imitator: " in text and "init/dense_0/w" in text
  assert "teacher:" in text and "context_only" in text
  step_row = re.compile(r"\s*\d+(\s+[+-]\d+\.\d+)+\s*")
  step_rows = [l for l in text.splitlines() if step_row.fullmatch(l)]
  assert len(step_rows) >= 5, text
  arrays = np.load(export)
  assert arrays["imitator/init/dense_0/w"].shape[0] == config.stream.dim
  assert f"{tuple(arrays['imitator/init/dense_0/w'].shape)}" in text
  bad = subprocess.run([sys.executable, "-m", "launch.inspect_checkpoint",
                        f"--workdir={workdir}", "--step=7"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert bad.returncode == 2 and "--step=7" in bad.stderr and "[20, 40]" in bad.stderr


@pytest.mark.slow
def test_evaluate_command_refuses_an_unknown_shift(run):
  workdir, _ = run
  out = subprocess.run([sys.executable, "-m", "launch.evaluate", f"--workdir={workdir}",
                        "--shifts=none,typo"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 2 and "'typo'" in out.stderr and "covariate_scale" in out.stderr


def test_rows_with_hparam_estimates_and_markdown():
  """A system_id-like output (estimates per horizon) through shift_rows and markdown."""
  from imitator.rollout import episodes
  from imitator.evaluation import render
  from learners import family as family_lib
  fam = family_lib.from_config({"name": "optimizers_linear"}, "regression", (3,), 1)
  P, t = 4, 8
  hp = fam.sample(jax.random.key(0), P)
  rng = np.random.default_rng(0)
  behaviour = rng.normal(size=(P, 2 * t, 1, 1)).astype(np.float32)
  ep = episodes.Episodes(x=np.zeros((P, 2 * t, 1, 3)), y=behaviour + 0.1,
                         task_id=np.zeros((P, 2 * t)), behaviour=behaviour,
                         loss=np.ones((P, 2 * t)), hparams=hp,
                         chance=behaviour + rng.normal(size=behaviour.shape))
  est = {f: np.stack([np.asarray(v), 2 * np.asarray(v)], 1) for f, v in hp.items()}
  outputs = {"imitator": (behaviour + 0.05, est, None), "frozen": (behaviour * 0, None, None)}
  rows = figures.shift_rows("regression", {"imitator": "system_id/both"}, "none", t,
                             [t, 2 * t], ep, outputs, fam)
  by = {(r["imitator"], r["horizon"]): r for r in rows}
  rec = by[("system_id/both", t)]["hparam_recovery"]
  assert rec["learning_rate"] == pytest.approx(0.0, abs=1e-6)  # exact at horizon T
  assert by[("system_id/both", 2 * t)]["hparam_recovery"]["learning_rate"] == pytest.approx(
      np.log(2), rel=1e-5)  # estimates doubled by 2T
  rec["momentum"] = None  # a figure that blew up is null in report.json
  md = render.markdown({"t_train": t, "results": rows})
  assert "hparam recovery of system_id/both" in md and "n/a" in md
