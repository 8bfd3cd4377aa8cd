"""The `beyond_gradient` family end to end: per-kind figures of a report against a hand
computation, clear errors for what it cannot take, and the run itself (slow).

The rules themselves are checked step for step against a NumPy reference in
tests/test_rules_reference.py."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from imitator.evaluation import figures, render
from imitator.kinds import system_id
from imitator.training import config_schema
from launch.configs import beyond_gradient, default
from learners import family as family_lib
from learners import learner, rollout, rules
from learners.stream_base import Stream

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _family(**overrides):
  return family_lib.from_config({"name": "beyond_gradient", **overrides}, "regression",
                                (4,), 1)


def test_rows_per_rule_are_the_ratio_of_means_over_that_rules_teachers():
  fam = _family()
  rng = np.random.default_rng(0)
  p, t = 40, 8
  codes = rng.integers(0, len(rules.RULES), p)
  codes[:5] = np.arange(5)  # every rule has teachers
  err = {"gradient": rng.gamma(1.0, size=(p, 2 * t)),
         "untrained": rng.gamma(2.0, size=(p, 2 * t))}
  chance = rng.gamma(3.0, size=(p, 2 * t))
  ev = figures.Evaluated(err, chance, np.zeros((p, 2 * t)),
                         {k: np.zeros((p, 2 * t)) for k in err}, {}, {}, {},
                         {"rule": codes})
  rows = figures.rows_of(ev, "none", t, [t, 2 * t], fam)
  figures.add_nie_by_rule(rows, ev, fam, t, "gradient")
  for r in rows:
    assert r["chance"] == figures.FAMILY_CHANCE
    assert sorted(r["nie_by_kind"]) == sorted(rules.RULES)
    steps = slice(r["horizon"] - t, r["horizon"])
    for rule, e in r["nie_by_kind"].items():
      sel = codes == rules.RULES.index(rule)
      mine = (np.zeros_like(chance) if r["imitator"] == "oracle" else err[r["imitator"]])
      want = mine[sel][:, steps].mean() / chance[sel][:, steps].mean()
      assert e["n_teachers"] == sel.sum()
      np.testing.assert_allclose(e["family"], want, rtol=1e-6, err_msg=rule)
      assert e["family_ci"][0] <= want <= e["family_ci"][1]
      assert ("versus_untrained" in e) == (r["imitator"] == "gradient")
  table = render.kind_table(rows, t, figures.FAMILY_CHANCE)
  assert "per learner kind at 2x T_train" in table
  assert all(f"| {rule} | " in table for rule in rules.RULES)


def test_a_family_of_networks_alone_gets_no_rows_per_rule():
  fam = family_lib.from_config({"name": "small_mixed"}, "regression", (4,), 1)
  ev = figures.Evaluated({"gradient": np.ones((3, 4))}, np.ones((3, 4)), np.zeros((3, 4)),
                         {"gradient": np.zeros((3, 4))}, {}, {}, {}, {})
  rows = figures.rows_of(ev, "none", 4, [4], fam)
  figures.add_nie_by_rule(rows, ev, fam, 4, "gradient")
  assert not any("nie_by_kind" in r for r in rows)


def test_bad_rules_and_rule_fields_are_named():
  with pytest.raises(ValueError, match="unknown rule 'hebbian'"):
    _family(rules="gradient,hebbian")
  with pytest.raises(ValueError, match="window=0"):
    _family(window=0)
  fam = _family()
  hp = fam.member(fam.sample(jax.random.key(0), 1), 0)
  with pytest.raises(ValueError, match="neighbours=9 is outside"):
    fam.validate({**hp, "neighbours": np.int32(9)})
  narrow = _family(rules="gradient,knn")
  with pytest.raises(ValueError, match="rule='kalman' is outside"):
    narrow.validate({**narrow.member(narrow.sample(jax.random.key(0), 1), 0),
                     "rule": np.int32(rules.RULES.index("kalman"))})
  config = default.get_config()
  config.teacher.rule = "knn"  # a field of some families: the config takes it ...
  config_schema.validate(config)
  small = family_lib.from_config({"name": "small_mixed"}, "regression", (4,), 1)
  with pytest.raises(ValueError, match="unknown hyperparam 'rule' for family 'small_mixed'"):
    small.codes({"rule": "knn"})  # ... and a family without rules names it
  with pytest.raises(ValueError, match="has no hyperparam 'rule'"):
    small.sample(jax.random.key(0), 2, {"rule": 1})



@pytest.mark.slow
def test_small_mixed_members_are_beyond_gradients_gradient_members():
  """A member of rule `gradient` learns exactly as the same member of a family of
  networks alone (the rule dispatch adds nothing to it)."""
  big, small = _family(), family_lib.from_config({"name": "small_mixed"}, "regression",
                                                 (4,), 1)
  hp = big.sample(jax.random.key(3), 8, fixed={"rule": 0})
  x = jax.random.normal(jax.random.key(4), (8, 20, 1, 4))
  y = x[..., :1] * 0.7
  stream = Stream(x, y, np.zeros((8, 20), np.int32))
  keys = jax.random.split(jax.random.key(5), 8)
  a = rollout.population_rollout(big, hp, keys, stream)
  b = rollout.population_rollout(small, {f: hp[f] for f in family_lib.FIELDS}, keys, stream)
  np.testing.assert_allclose(np.asarray(a.behaviour), np.asarray(b.behaviour), rtol=1e-6,
                             atol=1e-6)


@pytest.mark.slow
def test_smoke_run_reports_every_learner_kind(tmp_path):
  work = str(tmp_path / "run")
  cfg = os.path.join(ROOT, "launch", "configs", "beyond_gradient.py")
  train = subprocess.run([sys.executable, "-m", "launch.train",
                          f"--config={cfg}:gradient,smoke", f"--workdir={work}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
  assert train.returncode == 0, train.stderr[-2000:]
  ev = subprocess.run([sys.executable, "-m", "launch.evaluate", f"--workdir={work}",
                       "--shifts=none", "--noforgetting", "--horizons=1,2", "--observe=16"],
                      cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert ev.returncode == 0, ev.stderr[-2000:]
  assert "## none: per learner kind" in ev.stdout
  with open(os.path.join(work, "eval", "report.json")) as f:
    rows = json.load(f)["results"]
  trained = [r for r in rows if r["imitator"] == "gradient" and r["horizon"] == 64]
  assert {r.get("observe") for r in trained} == {None, 16}
  for r in trained:
    kinds = r["nie_by_kind"]
    assert sorted(kinds) == sorted(rules.RULES)
    assert sum(e["n_teachers"] for e in kinds.values()) == r["n_teachers"]
    assert all(np.isfinite(e["family"]) for e in kinds.values())
  assert beyond_gradient.get_config("recurrent,smoke").imitator.kind == "in_context"
  assert beyond_gradient.get_config().imitator.kind == "system_id"


@pytest.mark.parametrize("rule", ["kalman", "knn", "passive_aggressive"])
def test_system_id_given_a_rules_true_hparams_is_that_teacher_alone_too(rule):
  """One particle of a rule, the teacher's hyperparams: the member itself, step for step,
  teacher-forced and alone (these rules draw no random numbers)."""
  fam = _family(rules=rule, max_neighbours=1, window=8)
  hp = fam.member(fam.sample(jax.random.key(1), 1), 0)
  key = jax.random.key(2)
  x = jax.random.normal(jax.random.key(3), (40, 2, 4))
  stream = Stream(x, 0.5 * x[..., :1] - x[..., 1:2], np.zeros(40, np.int32))
  traj = rollout.rollout(fam, hp, key, stream)
  im = system_id.SystemIdImitator(task="regression", x_shape=(4,), out_dim=1, family=fam,
                                  mode="refine", batch=2)
  assert im.particles == 1
  meta = im.meta_for_teacher(hp, learner.init(fam, hp, key).params)
  seen = np.arange(40) < 10
  for flags in (None, seen):
    state = im.init(meta, jax.random.key(9))
    _, a_hat = jax.jit(im.unroll)(meta, state, stream.x, stream.y, traj.behaviour,
                                  seen=flags)
    np.testing.assert_allclose(a_hat, traj.behaviour, atol=1e-5, rtol=1e-4)
  assert float(np.abs(traj.behaviour[-1] - traj.behaviour[5]).max()) > 0.05  # it learned
