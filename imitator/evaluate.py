"""Evaluation of imitators beside their teachers: errors, NIE with CIs, report.json.

Held-out teachers come from `config.eval.seed` (folded with 2; validation uses 1), never
from the training key stream. The report schema (README "Report schema"):

    {"t_train": T, "results": [{"imitator", "shift", "horizon", "nie", "nie_ci",
                                "n_teachers", ...}, ...]}
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from imitator import checkpoint, episodes, kinds, metrics, objective

ORACLE = "oracle"


def errors_fn(imitators, setting, ep: episodes.Episodes, window: int = 0):
  """Jitted meta -> ({name: err [P, T]}, chance [P, T]) on fixed episodes `ep`."""
  keys = jax.random.split(jax.random.key(0), ep.x.shape[0])

  @jax.jit
  def run(meta):
    errs = {}
    for name, im in imitators.items():
      a_hat = objective.unroll(im, meta[name], keys, ep.x, ep.y, ep.behaviour,
                               window=_divisor(window, ep.x.shape[1]))
      errs[name] = metrics.step_error(setting.task, ep.behaviour, a_hat)
    return errs, metrics.step_error(setting.task, ep.behaviour, ep.chance)

  return run


def _divisor(window: int, horizon: int) -> int:
  """The largest divisor of horizon that is <= window (0: the whole horizon)."""
  if not window or window >= horizon:
    return 0
  return max(d for d in range(1, window + 1) if horizon % d == 0)


def row(name: str, shift: str, horizon: int, t_train: int, err, chance, **extra) -> dict:
  """One report row: NIE over the last t_train steps before `horizon`, CI over teachers."""
  nie, ci = metrics.nie_with_ci(err, chance, metrics.window(horizon, t_train))
  return {"imitator": name, "shift": shift, "horizon": horizon, "nie": nie,
          "nie_ci": list(ci), "n_teachers": int(np.asarray(err).shape[0]), **extra}


def restore_meta(exp, workdir: str, best: bool = True, step: int | None = None):
  """The meta-params of a checkpoint (best by validation NIE by default)."""
  ckpt = checkpoint.Checkpoints(workdir)
  state, _ = ckpt.restore(exp.init_state(), step=step, best=best)
  ckpt.close()
  if state is None:
    raise FileNotFoundError(f"no {'best ' if best else ''}checkpoint in {workdir}")
  return state.meta


def held_out(exp, n: int, horizon: int | None = None, setting=None):
  """n held-out teachers with chance teachers, from the evaluation seed."""
  setting = setting or exp.setting
  if horizon:
    setting = setting.with_horizon(horizon)
  key = jax.random.fold_in(jax.random.key(exp.config.eval.seed), 2)
  return jax.jit(lambda k: episodes.sample(setting, exp.data, k, n, chance=True))(key)


def final_report(exp, workdir: str) -> dict:
  """Evaluates the best checkpoint at the training horizon; writes eval/report.json."""
  meta = restore_meta(exp, workdir)
  t = exp.setting.t
  ep = held_out(exp, exp.config.eval.teachers)
  errs, chance = errors_fn(exp.imitators, exp.setting, ep, exp.config.eval.window)(meta)
  names = {"imitator": kinds.label(exp.config)}
  rows = [row(names.get(k, k), "none", t, t, e, chance) for k, e in errs.items()]
  zeros = np.zeros_like(np.asarray(chance))
  rows.append(row(ORACLE, "none", t, t, zeros, chance))
  report = {"t_train": t, "results": rows}
  os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
  with open(os.path.join(workdir, "eval", "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  return report
