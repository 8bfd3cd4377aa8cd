"""report.json: rows and comparisons merged by key into what the file holds, breaking
points recomputed, report.md rewritten; written whole or not at all (docs/report_schema.md)."""

from __future__ import annotations

import collections
import json
import os

import numpy as np

from imitator import metrics
from imitator.evaluation import render
from imitator.metrics import HORIZON_MULTIPLES
from imitator.rollout.references import ORACLE
from imitator.runtime import parallel, signals
from imitator.runtime import workdir as workdir_lib


# What identifies a row or a comparison when a report is merged into report.json.
ROW_KEY = ("imitator", "shift", "strength", "horizon", "observe")
COMPARISON_KEY = ("imitator", "versus", "shift", "strength", "horizon", "observe")


def _merge(old: list, new: list, fields: tuple) -> list:
  """old entries whose `fields` no new entry has, then the new ones (a missing field,
  as in reports written before it existed, counts as null)."""
  key = lambda r: tuple(r.get(f) for f in fields)
  fresh = {key(r) for r in new}
  return [r for r in old if key(r) not in fresh] + new


def _finite(value):
  """Non-finite floats (an imitation that blew up) as None: report.json stays JSON."""
  if isinstance(value, float):
    return value if np.isfinite(value) else None
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_finite(v) for v in value]
  return value


def breaking_points(results: list, t_train: int) -> list:
  """For every imitator, swept shift and cut (teacher-forced or alone): the smallest
  swept strength whose NIE at 16 x T_train exceeds metrics.IDENTIFIED_NIE
  (metrics.breaking_strength)."""
  horizon = HORIZON_MULTIPLES[-1] * t_train
  swept = collections.defaultdict(dict)
  for r in results:
    if r.get("strength") is not None and r["horizon"] == horizon and r["imitator"] != ORACLE:
      swept[(r["imitator"], r["shift"], r.get("observe"))][r["strength"]] = r["nie"]
  return [{"imitator": name, "shift": shift, "observe": observe,
           "breaking_strength": metrics.breaking_strength(list(nies), list(nies.values())),
           "swept": sorted(nies), "horizon": horizon}
          for (name, shift, observe), nies in swept.items()]


def write_report(workdir: str, t_train: int, rows: list, skipped: list | None = None,
                 comparisons: list | None = None):
  """Merges rows (by imitator, shift, strength and horizon) and comparisons into
  workdir/eval/report.json, keeping everything else it holds; recomputes the breaking
  points and rewrites report.md. If merging or writing fails, the computed rows are kept
  beside report.json and a ValueError says where (nothing computed is lost)."""
  try:
    return _merge_into_report(workdir, t_train, rows, skipped, comparisons)
  except Exception as e:  # pylint: disable=broad-except
    path = workdir_lib.keep_unmerged(workdir, rows, skipped, comparisons, e)
    raise ValueError(f"could not merge the results into {workdir_lib.report_path(workdir)} "
                     f"({type(e).__name__}: {e}); the computed rows are kept in {path}; "
                     "fix or move report.json aside and run again.") from None


def _merge_into_report(workdir, t_train, rows, skipped, comparisons):
  path = os.path.join(workdir, "eval", "report.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  report = {"t_train": t_train, "results": []}
  if os.path.exists(path):
    with open(path) as f:
      report = json.load(f)
  report["t_train"] = t_train
  report["results"] = _merge(report["results"], [_finite(r) for r in rows], ROW_KEY)
  report["comparisons"] = _merge(report.get("comparisons", []),
                                 [_finite(c) for c in comparisons or []], COMPARISON_KEY)
  report["breaking_points"] = breaking_points(report["results"], t_train)
  if skipped is not None:
    # A shift evaluated or skipped now replaces what an earlier run said about it.
    now = {(r["shift"], r.get("strength")) for r in rows + skipped}
    report["skipped"] = [s for s in report.get("skipped", [])
                         if (s["shift"], s.get("strength")) not in now] + skipped
  if not parallel.is_primary():
    return report
  with signals.uninterrupted():  # SIGTERM/SIGINT: after both files are whole
    with open(path, "w") as f:
      json.dump(report, f, indent=2, allow_nan=False)
    with open(os.path.join(workdir, "eval", "report.md"), "w") as f:
      f.write(render.markdown(report))
  return report
