"""Sampling-and-voting (`imitator.kinds.ensemble`): an ensemble of K copies of one
imitator is that imitator, seen and alone; an ensemble of different members behaves as
the mean of the members run one by one; bad sizes are refused."""

import json
import os
import subprocess
import sys

import conftest
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imitator.kinds.ensemble import EnsembleImitator
from imitator.kinds.gradient import GradientImitator
from imitator.kinds.in_context import InContextImitator
from launch.configs import default
from learners import streams

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, DIM, L = 2, 5, 12


def _stream(task):
  spec = streams.StreamSpec(kind="linear_" + task, horizon=L, dim=DIM, batch=B,
                            task_switch_every=4, n_classes=3)
  return streams.synthetic_stream(spec, jax.random.key(4))


def _members(task):
  out = 3 if task == "classification" else 1
  common = dict(task=task, x_shape=(DIM,), out_dim=out)
  return {"gradient": GradientImitator(**common, width=8, adapt_steps=True),
          "recurrent": InContextImitator(**common, arch="recurrent", batch=B, hidden=8,
                                         d_key=8, d_value=4)}


def _unroll(im, meta, stream, a, seen):
  return jax.jit(lambda m: im.unroll(m, im.init(m, jax.random.key(1)), stream.x, stream.y,
                                     a, seen=seen)[1])(meta)


@pytest.mark.parametrize("kind,task", [
    pytest.param("gradient", "regression", marks=pytest.mark.slow),
    ("recurrent", "classification"),
    pytest.param("gradient", "classification", marks=pytest.mark.slow),
    pytest.param("recurrent", "regression", marks=pytest.mark.slow)])
def test_copies_are_the_member_and_members_pool_by_their_mean(kind, task):
  member = _members(task)[kind]
  stream = _stream(task)
  out = member.out_dim
  a = jax.random.normal(jax.random.key(2), (L, B, out))
  if task == "classification":
    a = jax.nn.softmax(a)
  seen = jnp.arange(L) < L // 2  # alone after half the stream
  metas = [member.init_meta(jax.random.key(s)) for s in range(3)]
  one = _unroll(member, metas[0], stream, a, seen)
  copies, stacked = EnsembleImitator.of(member, [metas[0]] * 3)
  np.testing.assert_allclose(_unroll(copies, stacked, stream, a, seen), one, atol=1e-6)
  pooled, stacked = EnsembleImitator.of(member, metas)
  each = [np.asarray(_unroll(member, m, stream, a, seen)) for m in metas]
  assert np.max(np.abs(each[1] - each[0])) > 1e-3  # the members differ
  np.testing.assert_allclose(_unroll(pooled, stacked, stream, a, seen),
                             np.mean(each, axis=0), atol=1e-5)
  if task == "classification":  # the majority vote: each class's share of the argmaxes
    voting, stacked = EnsembleImitator.of(member, metas, vote=True)
    shares = np.mean([np.eye(out)[e.argmax(-1)] for e in each], axis=0)
    assert np.any(shares.max(-1) < 1)  # the members disagree somewhere
    np.testing.assert_allclose(_unroll(voting, stacked, stream, a, seen), shares, atol=1e-6)
    copies, stacked = EnsembleImitator.of(member, [metas[0]] * 3, vote=True)
    np.testing.assert_allclose(_unroll(copies, stacked, stream, a, seen),
                               np.eye(out)[np.asarray(one).argmax(-1)], atol=1e-6)


def test_bad_ensemble_is_refused_naming_the_value():
  member = _members("regression")["gradient"]
  with pytest.raises(ValueError, match="size=0"):
    EnsembleImitator(task="regression", x_shape=(DIM,), out_dim=1, member=member, size=0)
  with pytest.raises(ValueError, match="member"):
    EnsembleImitator(task="regression", x_shape=(DIM,), out_dim=1)
  with pytest.raises(ValueError, match="majority vote needs classification"):
    EnsembleImitator.of(member, [member.init_meta(jax.random.key(0))], vote=True)


@pytest.mark.slow
def test_launch_evaluate_ensemble_rows_and_a_foreign_run_refused(tmp_path):
  config = default.get_config("smoke")
  runs = []
  for seed in (0, 1):
    config.seed = seed
    runs.append(conftest.untrained_workdir(str(tmp_path / f"seed{seed}"), config))
  other = default.get_config("smoke")
  other.train.learning_rate *= 2
  foreign = conftest.untrained_workdir(str(tmp_path / "other"), other)

  def run(*args):
    return subprocess.run([sys.executable, "-m", "launch.evaluate", f"--workdir={runs[0]}",
                           "--shifts=none", "--noforgetting", "--horizons=1,2", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=900,
                          check=False)

  proc = run(f"--ensemble={runs[1]}", "--observe=1x")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(runs[0], "eval", "report.json")) as f:
    report = json.load(f)
  rows = report["results"]
  paired = [c for c in report["comparisons"] if c["imitator"] == "ensemble/2"]
  assert paired and all(c["versus"] == "gradient" for c in paired)
  ens = [r for r in rows if r["imitator"] == "ensemble/2"]
  assert {(r["horizon"], r.get("observe")) for r in ens} >= {
      (2 * config.stream.horizon, None), (2 * config.stream.horizon, config.stream.horizon)}
  assert all(r["nie"] is not None and np.isfinite(r["nie"]) for r in ens)
  assert os.path.exists(os.path.join(runs[0], "eval", "ensemble.png"))
  proc = run(f"--ensemble={foreign}")
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
  assert "--ensemble" in lines[0] and "learning_rate" in lines[0], lines[0]
