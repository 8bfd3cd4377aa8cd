"""Recorded teachers (issue 25): the file format and recording API (learners.recorded),
their evaluation against a checkpoint (imitator.evaluation.recorded) and
`launch.evaluate --teachers=FILE`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import conftest  # the tests' shared helpers (pytest puts tests/ on the path)
from sklearn.linear_model import SGDClassifier, SGDRegressor

from imitator.evaluation import battery
from imitator.evaluation import recorded as recorded_eval
from imitator.training import experiment
from launch.configs import default
from learners import recorded

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
P, T, B, D = 3, 12, 2, 4


def _streams(seed=0, classification=False):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(P, T, B, D)).astype(np.float32)
  if classification:
    return x, rng.integers(0, 3, size=(P, T, B)).astype(np.int32)
  w = rng.normal(size=(P, 1, 1, D))
  return x, ((x * w).sum(-1, keepdims=True) + 0.1 * rng.normal(size=(P, T, B, 1))
             ).astype(np.float32)


def _sgd(seed, eta0=0.05):
  return SGDRegressor(learning_rate="constant", eta0=eta0, random_state=seed)


def test_sklearn_recording_round_trips_and_matches_a_hand_written_loop(tmp_path):
  x, y = _streams()
  rec = recorded.record([recorded.Sklearn(_sgd(p)) for p in range(P)], x, y, "regression",
                        chance=[recorded.Sklearn(_sgd(10 + p, 0.01)) for p in range(P)])
  # The same learners by hand: predict (0 before the first fit), then partial_fit.
  for p in range(P):
    est, seen = _sgd(p), False
    for t in range(T):
      want = est.predict(x[p, t]) if seen else np.zeros(B)
      np.testing.assert_array_equal(rec.a[p, t, :, 0], want.astype(np.float32))
      est.partial_fit(x[p, t], y[p, t, :, 0])
      seen = True
  assert rec.a.shape == (P, T, B, 1) and list(rec.kind) == ["SGDRegressor"] * P
  assert not np.array_equal(rec.a, rec.chance_a)  # other hyperparams, same kind
  path = str(tmp_path / "sgd.npz")
  recorded.save(path, rec)
  back = recorded.load(path)
  for field in ("x", "y", "a", "kind", "chance_a"):
    got, want = getattr(back, field), getattr(rec, field)
    assert got.dtype == want.dtype and np.array_equal(got, want), field
  assert back.task == "regression" and back.path == path


def test_classifier_behaviour_is_probabilities():
  x, y = _streams(classification=True)
  # hinge loss has no predict_proba: decision scores go through a softmax.
  rec = recorded.record([recorded.Sklearn(SGDClassifier(random_state=p), "classification",
                                          n_classes=3) for p in range(P)], x, y,
                        "classification")
  assert rec.a.shape == (P, T, B, 3)
  np.testing.assert_allclose(rec.a.sum(-1), 1, atol=1e-5)
  np.testing.assert_allclose(rec.a[:, 0], 1 / 3)  # uniform before the first step


@pytest.mark.parametrize("change, field", [
    (lambda d: d.pop("a"), "'a' is missing"),
    (lambda d: d.update(task=np.str_("ranking")), "'task'"),
    # Classification with one behaviour column: not class probabilities.
    (lambda d: d.update(task=np.str_("classification"), y=np.zeros((P, T, B), np.int64)),
     "'a'"),
    (lambda d: d.update(kind=np.array([1, 2, 3])), "'kind'"),
    (lambda d: d.update(chance_a=d["a"][:, :-1]), "'chance_a'"),
    (lambda d: d.update(x=d["x"][..., 0, 0]), "'x'"),
])
def test_a_bad_file_is_refused_naming_the_field(tmp_path, change, field):
  x, y = _streams()
  arrays = {"x": x, "y": y, "a": np.zeros((P, T, B, 1), np.float32), "kind":
            np.array(["k"] * P), "task": np.str_("regression"),
            "chance_a": np.zeros((P, T, B, 1), np.float32)}
  change(arrays)
  path = str(tmp_path / "bad.npz")
  with open(path, "wb") as f:
    np.savez(f, **arrays)
  with pytest.raises(ValueError, match=field):
    recorded.load(path)


def test_check_fits_names_the_field():
  x, y = _streams()
  rec = recorded.Recorded(x, y, np.zeros((P, T, B, 1), np.float32), np.array(["k"] * P),
                          "regression", path="r.npz")
  recorded.check_fits(rec, "regression", (D,), 1, batch=B)
  for args, field in [(("classification", (D,), 1), "task"), (("regression", (8,), 1), "x"),
                      (("regression", (D,), 2), "a has 1"),
                      (("regression", (D,), 1, 1), "B=2"),
                      (("regression", (D,), 1, B, T + 1), f"T={T} steps")]:
    with pytest.raises(ValueError, match=field):
      recorded.check_fits(rec, *args)


@pytest.fixture(scope="module")
def smoke():
  """The smoke config's experiment with 4 held-out teachers and only its trained kind
  (the baselines take the same path: compiling them too would only cost time), and its
  initial meta."""
  config = default.get_config("smoke")
  config.eval.teachers = 4
  exp = experiment.Experiment(config)
  exp.imitators = {"imitator": exp.imitators["imitator"]}
  return exp, exp.init_state().meta


@pytest.mark.slow  # about 30 s: kept out of the default suite's 5 minutes
def test_recorded_project_teachers_give_the_battery_nie(smoke):
  """Recording the battery's own held-out teachers (behaviour and chance teachers):
  the recorded evaluation's NIE equals a float64 numpy computation on its imitator
  outputs and the battery's teacher-forced NIE (errors_fn) on the same teachers; the
  family chance teachers are the battery's."""
  exp, meta = smoke
  t, n = exp.setting.t, 4
  ep = battery.held_out(exp.config, exp.setting, exp.data, n, 2 * t)
  x, y = recorded_eval.held_out_streams(exp.config, n, 2 * t)
  np.testing.assert_array_equal(x, ep.x)
  np.testing.assert_array_equal(y, ep.y)
  rec = recorded.Recorded(np.asarray(ep.x), np.asarray(ep.y), np.asarray(ep.behaviour),
                          np.array(["family"] * n), exp.setting.task,
                          chance_a=np.asarray(ep.chance), path="/tmp/own.npz")
  outputs = {}
  ran = recorded_eval.evaluate_recorded(exp, meta, rec, multiples=(1, 2), observes=(t,),
                                        outputs=outputs)
  assert ran["shift"] == "recorded:own"
  rows = {(r["imitator"], r["horizon"], r["observe"]): r for r in ran["results"]}
  assert set(rows) >= {("gradient", t, None), ("untrained", 2 * t, None),
                       ("gradient", 2 * t, t), ("oracle", 2 * t, None)}
  assert ("gradient", t, t) not in rows  # alone rows only after the cut

  a = np.asarray(ep.behaviour, np.float64)
  d = lambda b: ((a - np.asarray(b, np.float64)) ** 2).sum(-1).mean(-1)  # [P, T]
  chance = d(ep.chance)
  # The battery's own unroll of the trained kind (teacher-forced) on the same episodes.
  battery_err, _ = battery.errors_fn({"imitator": exp.imitators["imitator"]}, exp.setting,
                                     ep)(meta)
  for h in (t, 2 * t):
    steps = slice(h - t, h)
    r = rows[("gradient", h, None)]
    numpy_nie = d(outputs[None]["imitator"])[:, steps].mean() / chance[:, steps].mean()
    assert r["nie"] == pytest.approx(numpy_nie, rel=1e-5)
    battery_nie = np.asarray(battery_err["imitator"])[:, steps].mean() / chance[:, steps].mean()
    assert r["nie"] == pytest.approx(battery_nie, rel=1e-4)
    # Both denominators named; the family's chance teachers are the battery's.
    assert r["chance"] == "same_kind"
    assert r["nie_versus"]["family"]["nie"] == pytest.approx(
        r["nie_versus"]["same_kind"]["nie"], rel=1e-4)
    assert r["nie_by_kind"]["family"]["n_teachers"] == n
  alone = rows[("gradient", 2 * t, t)]
  numpy_alone = d(outputs[t]["imitator"])[:, t:].mean() / chance[:, t:].mean()
  assert alone["nie"] == pytest.approx(numpy_alone, rel=1e-5)
  assert "free_running_horizon" in alone
  assert rows[("oracle", t, None)]["nie"] == 0


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return conftest.untrained_workdir(str(tmp_path_factory.mktemp("recorded_run")),
                                    default.get_config("smoke"))


def test_evaluate_refuses_a_file_that_does_not_fit_with_one_line(workdir, tmp_path):
  x, y = _streams()  # D = 4 inputs; the smoke run's are 8
  path = str(tmp_path / "narrow.npz")
  recorded.save(path, recorded.Recorded(x[:, :, :1], y[:, :, :1],
                                        np.zeros((P, T, 1, 1), np.float32),
                                        np.array(["k"] * P), "regression"))
  before = sorted(os.listdir(workdir))
  proc = subprocess.run([sys.executable, "-m", "launch.evaluate", f"--workdir={workdir}",
                         f"--teachers={path}"], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "x has examples of shape (4,)" in lines[0], proc.stderr
  assert "(8,)" in lines[0] and "Traceback" not in proc.stderr
  assert sorted(os.listdir(workdir)) == before  # nothing written


@pytest.mark.slow
def test_evaluate_on_sklearn_learners_recorded_on_the_runs_streams(workdir, tmp_path):
  from imitator.runtime import workdir as workdir_lib
  config = workdir_lib.load_config(workdir, defaults=default.get_config())
  t, n = config.stream.horizon, 4
  x, y = recorded_eval.held_out_streams(config, n, 2 * t)
  rec = recorded.record([recorded.Sklearn(_sgd(p)) for p in range(n)], x, y, "regression",
                        chance=[recorded.Sklearn(_sgd(10 + p, 0.01)) for p in range(n)])
  path = str(tmp_path / "sgd.npz")
  recorded.save(path, rec)
  proc = subprocess.run([sys.executable, "-m", "launch.evaluate", f"--workdir={workdir}",
                         f"--teachers={path}", "--horizons=1,2", "--observe=1x"], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "eval", "report.json")) as f:
    rows = [r for r in json.load(f)["results"] if r["shift"] == "recorded:sgd"]
  seen = {(r["imitator"], r["horizon"], r.get("observe")) for r in rows}
  assert ("gradient", 2 * t, None) in seen and ("gradient", 2 * t, t) in seen, seen
  for r in rows:
    assert set(r["nie_versus"]) == {"same_kind", "family"} and r["chance"] == "same_kind"
    assert r["nie"] == r["nie_versus"]["same_kind"]["nie"]
  assert "NIE vs same_kind chance" in proc.stdout
