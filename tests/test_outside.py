"""The outside battery (issue 25.4): scikit-learn learners with random hyperparameters
(learners.outside) recorded as teachers, and `python -m launch.outside`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import conftest  # the tests' shared helpers (pytest puts tests/ on the path)

from launch.configs import default
from learners import outside, recorded

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
P, T, B, D, C = 2, 12, 2, 4, 3
KINDS = [(task, name) for task, names in outside.LEARNERS.items() for name in names]


def _streams(task, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(P, T, B, D)).astype(np.float32)
  if task == "classification":
    return x, rng.integers(0, C, size=(P, T, B)).astype(np.int32)
  w = rng.normal(size=(P, 1, 1, D)) / np.sqrt(D)
  return x, ((x * w).sum(-1, keepdims=True) + 0.1 * rng.normal(size=(P, T, B, 1))
             ).astype(np.float32)


def _record(task, name, seed=0, **kwargs):
  x, y = _streams(task)
  return outside.record_battery([name], task, x, y, seed=seed,
                                n_classes=C if task == "classification" else 0, **kwargs)


@pytest.mark.parametrize("task, name", KINDS)
def test_every_learner_records_finite_behaviour_of_the_right_shape(task, name):
  rec = _record(task, name)
  out = C if task == "classification" else 1
  assert rec.a.shape == rec.chance_a.shape == (P, T, B, out)
  assert list(rec.kind) == [outside.LEARNERS[task][name]] * P
  for a in (rec.a, rec.chance_a):
    assert np.isfinite(a).all() and np.abs(a).max() < 1e3
  if task == "classification":
    np.testing.assert_allclose(rec.a.sum(-1), 1, atol=1e-4)
    np.testing.assert_allclose(rec.a[:, 0], 1 / C)  # uniform before the first step
  else:
    assert np.all(rec.a[:, 0] == 0)  # sklearn cannot predict before its first fit
  assert not np.array_equal(rec.a[:, 1:], rec.chance_a[:, 1:])  # other hyperparameters


@pytest.mark.parametrize("task, name", KINDS)
def test_hyperparameters_differ_from_the_chance_learner_and_come_from_the_seed(task, name):
  teachers, chance = outside.battery([name], task, 4, seed=3, n_classes=C)
  again, again_chance = outside.battery([name], task, 4, seed=3, n_classes=C)
  other, _ = outside.battery([name], task, 4, seed=4, n_classes=C)
  for m, c, m2, c2, o in zip(teachers, chance, again, again_chance, other):
    assert m.hparams == m2.hparams and c.hparams == c2.hparams  # reproducible
    assert m.hparams != c.hparams and m.hparams != o.hparams
    assert m.kind == c.kind == outside.LEARNERS[task][name]  # the same kind
    assert m.estimator.get_params()[next(iter(m.hparams))] == next(iter(m.hparams.values()))
  assert len({repr(m.hparams) for m in teachers}) == 4  # every teacher its own draw
  # The recorded behaviour too is a function of the seed.
  a, b = _record(task, name, seed=3), _record(task, name, seed=3)
  assert np.array_equal(a.a, b.a) and np.array_equal(a.chance_a, b.chance_a)


def test_workers_record_the_same_file_and_it_round_trips(tmp_path):
  x, y = _streams("regression")
  one = outside.record_battery(["sgd", "pa"], "regression", x, y, seed=1)
  two = outside.record_battery(["sgd", "pa"], "regression", x, y, seed=1, workers=2)
  path = str(tmp_path / "outside.npz")
  recorded.save(path, two)
  back = recorded.load(path)
  for field in ("x", "y", "a", "chance_a", "kind"):
    assert np.array_equal(getattr(one, field), getattr(back, field)), field
  assert list(back.kind) == ["SGDRegressor", "PassiveAggressiveRegressor"]


def test_names_are_checked_for_the_task():
  assert outside.check_names(["sgd", " mlp"], "regression") == ("sgd", "mlp")
  for names, task, match in [(["nb"], "regression", r"'nb'.*\['sgd', 'pa', 'mlp'\]"),
                             (["knn"], None, r"'knn'.*perceptron"),
                             (["sgd", "sgd"], None, "twice"), ([], "regression", "no")]:
    with pytest.raises(ValueError, match=match):
      outside.check_names(names, task)
  x, y = _streams("regression")
  with pytest.raises(ValueError, match="multiple"):
    outside.record_battery(["sgd", "pa", "mlp"], "regression", x, y)


def test_an_unknown_learner_exits_2_with_one_line(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "launch.outside",
                         f"--workdir={tmp_path}", "--learners=sgd,knn"], cwd=ROOT,
                        capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: --learners"), proc.stderr
  assert "'knn'" in lines[0] and "['sgd', 'pa', 'mlp']" in lines[0], lines[0]
  assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return conftest.untrained_workdir(str(tmp_path_factory.mktemp("outside_run")),
                                    default.get_config("smoke"))


@pytest.mark.slow
def test_outside_battery_end_to_end(workdir):
  t = default.get_config("smoke").stream.horizon
  proc = subprocess.run([sys.executable, "-m", "launch.outside", f"--workdir={workdir}",
                         "--teachers_per_kind=2", "--horizon=2x", f"--observe={t // 2}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rec = recorded.load(os.path.join(workdir, "eval", "outside.npz"))
  kinds = sorted(outside.LEARNERS["regression"].values())
  assert rec.shape[:2] == (6, 2 * t) and sorted(set(rec.kind)) == kinds
  with open(os.path.join(workdir, "eval", "report.json")) as f:
    report = json.load(f)
  rows = [r for r in report["results"] if r["shift"] == "recorded:outside"]
  seen = {(r["imitator"], r["horizon"], r.get("observe")) for r in rows}
  assert {("gradient", 2 * t, None), ("untrained", 2 * t, None),
          ("gradient", 2 * t, t // 2)} <= seen, seen
  for r in rows:
    assert r["chance"] == "same_kind" and sorted(r["nie_by_kind"]) == kinds
    for kind, e in r["nie_by_kind"].items():
      assert e["n_teachers"] == 2
      for ref in ("same_kind", "family"):
        lo, hi = e[f"{ref}_ci"]
        assert lo <= e[ref] <= hi or r["imitator"] == "oracle", (r["imitator"], kind, e)
      if r["imitator"] == "gradient":
        cmp_ = e["versus_untrained"]
        # This checkpoint is the initial state: trained and untrained are the same.
        assert cmp_["nie_ratio"] == pytest.approx(1) and cmp_["n_teachers"] == 2
        assert cmp_["nie_ratio_ci"][0] <= 1 <= cmp_["nie_ratio_ci"][1]
      else:
        assert "versus_untrained" not in e
  assert any(c["shift"] == "recorded:outside" and c["versus"] == "untrained"
             for c in report["comparisons"])
  assert "per learner kind at 2x T_train" in proc.stdout
  assert "wall-clock" in proc.stdout and "MLPRegressor" in proc.stdout
