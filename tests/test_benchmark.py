"""The benchmark script runs and prints every kind of row (speed itself is never
asserted: it is measured and written in BUILD_NOTES.md)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_benchmark_quick_prints_every_row_kind():
  out = subprocess.run([sys.executable, "-m", "launch.benchmark", "--quick"], cwd=ROOT,
                       capture_output=True, text=True, timeout=1800)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
  names = {r["name"] for r in rows}
  assert names == {"machine", "rollout", "rollout_mixed", "outer_step", "horizon_scaling",
                   "eval_horizon"}
  rollout = next(r for r in rows if r["name"] == "rollout")
  assert {"teacher_steps_per_s", "gflops", "roofline_gflops"} <= set(rollout)
  kinds = {r["imitator"] for r in rows if r["name"] == "outer_step"}
  assert kinds == {"gradient", "in_context/recurrent", "in_context/transformer",
                   "in_context/linear_transformer", "system_id/both"}
  modes = {r["remat"] for r in rows if r["name"] == "horizon_scaling"}
  assert modes == {"none", "remat", "truncation"}
  evals = [r for r in rows if r["name"] == "eval_horizon"]
  assert {(r["mode"], r["multiple"]) for r in evals} == {
      (m, k) for m in ("streamed", "materialized", "streamed_two_cuts") for k in (2, 4, 8)}
  assert all(r["peak_memory_mb"] > 0 and r["seconds"] > 0 for r in evals)
