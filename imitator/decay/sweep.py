"""The decay sweep: the grid of cells a config describes (validated before anything
runs), each cell run and written whole as W/decay/cells/<cell-id>.json, cells already
written under the same settings skipped, then the report (imitator.decay.report).
`launch/decay.py` is its command line."""

from __future__ import annotations

import json
import os
import time

from absl import logging

from imitator.decay import cell as decay
from imitator.decay import report as decay_report
from imitator.decay import tasks as decay_tasks
from imitator.evaluation import evaluate
from imitator.kinds import registry
from imitator.runtime import workdir as workdir_lib
from imitator.training import experiment


def _words(text) -> list[str]:
  return [w.strip() for w in str(text or "").split(",") if w.strip()]


def _ints(name: str, text) -> list[int]:
  values = []
  for w in _words(text):
    try:
      v = int(w)
    except ValueError:
      v = 0
    if v < 1:
      raise ValueError(f"{name}: {w!r} is not allowed; allowed: integers >= 1, "
                       "comma-separated, e.g. 8,32,128,512.")
    values.append(v)
  if not values:
    raise ValueError(f"{name} is empty; allowed: integers >= 1, comma-separated.")
  return values


def _regularizer(name: str, where: str) -> str:
  if name not in decay.REGULARIZERS:
    raise ValueError(f"{where}: regularizer {name!r} is not allowed; allowed: "
                     f"{list(decay.REGULARIZERS)}.")
  return name


def _sweep(text) -> list[tuple[str, float]]:
  """'REG:s1,s2,...' as [(reg, strength)]."""
  if not str(text or "").strip():
    return []
  reg, sep, values = (p.strip() for p in str(text).partition(":"))
  reg = _regularizer(reg, f"sweep={text!r}")
  allowed = (f"sweep={text!r}: allowed: REGULARIZER:s1,s2,... with strengths > 0 (and "
             "< 1 for replay, the weight of the replayed loss), e.g. l2:0.001,0.1,1.")
  if not sep or reg == "none":
    raise ValueError(allowed)
  out = []
  for w in _words(values):
    try:
      s = float(w)
    except ValueError:
      s = -1.0
    if not (s > 0 and (reg != "replay" or s < 1)):
      raise ValueError(f"sweep strength {w!r} is not allowed; {allowed}")
    out.append((reg, s))
  if not out:
    raise ValueError(allowed)
  return out


def grid(config) -> tuple[decay_tasks.DecaySpec, list[decay.Cell]]:
  """The stream spec and the cells of a config, in report order; ValueError naming the
  first bad value and what is allowed."""
  try:
    spec = decay_tasks.DecaySpec(**dict(config.stream))
  except TypeError as e:
    raise ValueError(f"stream: {e}; allowed fields: "
                     f"{sorted(decay_tasks.DecaySpec.__dataclass_fields__)}.") from None
  if not isinstance(config.teachers, int) or config.teachers < 64:
    raise ValueError(f"teachers={config.teachers!r} is not allowed; allowed: an integer "
                     ">= 64 (each cell is a population of at least 64 teachers).")
  lr = config.learning_rate
  if lr is not None and not (isinstance(lr, (int, float)) and lr > 0):
    raise ValueError(f"learning_rate={lr!r} is not allowed; allowed: a number > 0 or None.")
  for field, low, high in (("min_gain", 0.0, 1.0), ("max_retained", 0.0, 10.0)):
    v = config.fit[field]
    if not (isinstance(v, (int, float)) and low <= v <= high):
      raise ValueError(f"fit.{field}={v!r} is not allowed; allowed: a number in "
                       f"[{low}, {high}].")
  if not isinstance(config.fit.n_boot, int) or config.fit.n_boot < 20:
    raise ValueError(f"fit.n_boot={config.fit.n_boot!r}; allowed: an integer >= 20.")
  widths, depths = _ints("widths", config.widths), _ints("depths", config.depths)
  regs = [_regularizer(r, "regularizers") for r in _words(config.regularizers)]
  if not regs:
    raise ValueError(f"regularizers is empty; allowed: {list(decay.REGULARIZERS)}.")
  overlaps = [decay_tasks.parse_overlap(o) for o in _words(config.overlaps)]
  if not overlaps:
    raise ValueError("overlaps is empty; allowed: labeller, rotated:DEG, split:DATASET, "
                     "backdoor.")
  deep = [decay_tasks.parse_overlap(o) for o in _words(config.deep_overlaps)] or overlaps
  deep_widths = _ints("deep_widths", config.deep_widths) if _words(
      config.deep_widths) else widths
  sweep = _sweep(config.sweep)
  sweep_overlaps = [decay_tasks.parse_overlap(o) for o in _words(config.sweep_overlaps)]
  for o in overlaps + deep + sweep_overlaps:
    spec.check(o)
  cells = [decay.Cell(w, d, r, decay.default_strength(r), o)
           for d in depths for o in overlaps if d == 1 or o in deep
           for r in regs for w in widths if d == 1 or w in deep_widths]
  cells += [decay.Cell(w, 1, r, s, o) for o in sweep_overlaps for r, s in sweep
            for w in widths]
  unique = list(dict.fromkeys(cells))
  return spec, unique


def settings(config, spec, imitator_workdir) -> dict:
  """What a finished cell's figures depend on besides the cell itself: a cell file
  written under other settings is computed again."""
  return {"stream": dict(spec.__dict__), "teachers": config.teachers, "seed": config.seed,
          "learning_rate": config.learning_rate, "fit": dict(config.fit),
          "data_dir": config.data_dir,
          "imitator_workdir": os.path.abspath(imitator_workdir) if imitator_workdir else None}


def _imitator(workdir: str, defaults):
  """(Experiment, meta, label) of a trained workdir's best checkpoint; `defaults`: the
  config that fills fields its config.json predates."""
  if not any(os.path.isdir(os.path.join(workdir, d)) for d in ("best", "checkpoints")):
    raise ValueError(f"--imitator_workdir={workdir}: no checkpoint (no best/ or "
                     "checkpoints/); train one with python -m launch.train --workdir=W0.")
  config = workdir_lib.load_config(workdir, defaults=defaults)
  exp = experiment.Experiment(config)
  return exp, evaluate.restore_meta(exp, workdir), registry.label(config)


def run(config, workdir: str, imitator_workdir: str | None = None,
        run_cell=decay.run_cell, imitator_defaults=None) -> dict:
  """Every cell of the grid (skipping those already written), then the report.
  `run_cell` is `decay.run_cell` or a stand-in with its signature (tests);
  `imitator_defaults`: the training config that fills fields the imitator workdir's
  config.json predates (launch.decay passes launch/configs/default.py's)."""
  spec, cells = grid(config)
  if imitator_workdir and not os.path.isdir(imitator_workdir):
    raise ValueError(f"--imitator_workdir={imitator_workdir} does not exist.")
  out = os.path.join(workdir, "decay")
  cell_dir = os.path.join(out, "cells")
  os.makedirs(cell_dir, exist_ok=True)
  want = settings(config, spec, imitator_workdir)
  todo, rows = [], {}
  for cell in cells:
    saved = workdir_lib.read_json(os.path.join(cell_dir, f"{cell.id}.json"),
                                  "delete it to compute the cell again.")
    if saved is not None and saved.get("settings") == want:
      rows[cell.id] = saved["row"]
    else:
      todo.append(cell)
  logging.info("%d cells, %d already done, %d to run", len(cells), len(cells) - len(todo),
               len(todo))
  data = {o.dataset: decay_tasks.load_split(o.dataset, spec, config.data_dir)
          for o in {c.overlap for c in todo if not c.overlap.synthetic}}
  imitator = (_imitator(imitator_workdir, imitator_defaults) if imitator_workdir and todo
              else None)
  start = time.time()
  for i, cell in enumerate(todo):
    t = time.time()
    row = run_cell(cell, spec, config.teachers, config.seed, dict(config.fit),
                   config.learning_rate, data.get(cell.overlap.dataset), imitator)
    workdir_lib.write_atomically(os.path.join(cell_dir, f"{cell.id}.json"),
                                 json.dumps({"settings": want, "row": row}))
    rows[cell.id] = row
    logging.info("[%d/%d] %s: %s (%.1fs, %.0fs so far)", i + 1, len(todo), cell.id,
                 decay_report.summary(row), time.time() - t, time.time() - start)
  report = decay_report.write(out, [rows[c.id] for c in cells], spec)
  logging.info("wrote %s/report.json, report.md and %d plots", out, len(report["plots"]))
  return report
