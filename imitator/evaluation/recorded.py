"""Recorded teachers (`learners.recorded` files) as held-out teachers of a checkpoint.

Every imitator of the checkpoint (and `untrained`) runs on the file's streams x, y,
shown the recorded behaviour a (teacher-forced, or its first K steps only, then alone),
exactly as the battery runs on the family's teachers (`objective.unroll`, one state key
per teacher from `objective.evaluation_keys`). Each row's NIE is reported against two
named chance references on the same streams:

- `same_kind`: the file's `chance_a`, another learner of the teacher's own kind with
  other random hyperparameters (only when the file has it);
- `family`: a random teacher of the checkpoint's family run on the file's x, y, drawn
  from `battery.held_out`'s chance-teacher key: on a recording of the battery's own P
  held-out teachers (`battery.held_out(..., n=P)`) they are its chance teachers.

`nie` (and its CIs, identification and divergence fields) uses `same_kind` when present,
else `family` (field `chance` names it); `nie_versus` holds both. Rows go into
report.json with shift `recorded:<file stem>`. `held_out_streams` gives the x, y of a
run's held-out teachers, to record outside learners on the checkpoint's own streams.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from imitator import metrics
from imitator.evaluation import battery, figures, render
from imitator.kinds import registry
from imitator.metrics import HORIZON_MULTIPLES
from imitator.rollout import episodes, objective
from imitator.rollout.references import ORACLE, UNTRAINED
from learners import recorded, rollout, streams
from learners.stream_base import Stream

SAME_KIND, FAMILY = "same_kind", figures.FAMILY_CHANCE
PREFIX = "recorded:"


def shift_name(path: str) -> str:
  """The report shift of a file: recorded:<file name without .npz>."""
  return PREFIX + os.path.splitext(os.path.basename(path))[0]


def _keys(config):
  """(teacher, stream, chance) keys of the held-out episodes (`episodes.sample`)."""
  return jax.random.split(battery.held_out_key(config), 3)


def held_out_streams(config, n: int, horizon: int | None = None):
  """x [n, H, B, ...], y [n, H, B(, k)] (numpy): the streams of `battery.held_out(config,
  setting, data, n, H)` (H default T_train), on which the battery evaluates the run's
  checkpoint (with n = config.eval.teachers, H = 16 T_train: its `none` shift). Load a workdir's config with
  `imitator.runtime.workdir.load_config(workdir, defaults=default.get_config())`."""
  setting, data = episodes.setting_from_config(config)
  if horizon:
    setting = setting.with_horizon(horizon)
  make = lambda k: streams.make_stream(setting.spec, k, data)
  stream = jax.jit(lambda k: jax.vmap(make)(jax.random.split(k, n)))(_keys(config)[1])
  return np.asarray(stream.x), np.asarray(stream.y)


def family_chance(exp, x, y):
  """Behaviour [P, T, B, out] of P random teachers of the checkpoint's family (the
  battery's held-out chance teachers) on streams x, y [P, T, B, ...]."""
  setting = exp.setting

  @jax.jit
  def run(x, y):
    hp, init_keys = episodes.teachers(setting, _keys(exp.config)[2], x.shape[0])
    stream = Stream(x, y, jnp.zeros(x.shape[:2], jnp.int32))
    return rollout.population_rollout(setting.family, hp, init_keys, stream).behaviour

  return np.asarray(run(jnp.asarray(x), jnp.asarray(y)))


def horizons(steps: int, t_train: int, multiples) -> list:
  """The row horizons m x T_train of `multiples` within a file of `steps` steps
  (T_train alone when none is), ascending."""
  return [m * t_train for m in sorted(multiples) if m * t_train <= steps] or [t_train]


def check(exp, rec: recorded.Recorded) -> None:
  """ValueError naming the field when the checkpoint's imitators cannot take the file
  (its figures need at least T_train steps: a horizon's window is T_train long)."""
  setting = exp.setting
  recorded.check_fits(rec, setting.task, setting.family.x_shape, setting.family.out_dim,
                      batch=setting.spec.batch, steps=setting.t)


def evaluate_recorded(exp, meta, rec: recorded.Recorded, multiples=HORIZON_MULTIPLES,
                      observes=(), outputs: dict | None = None) -> dict:
  """Every imitator of `meta` (and `untrained`) on the recorded teachers at the
  horizons m x T_train of `multiples` within the file's T (T_train when none
  is), teacher-forced and alone after each K < H of `observes`:
  {"results", "comparisons", "shift", "excluded"}. `outputs`, when a dict, receives
  {observe: {name: a_hat [P, H, B, out]}} (for checks)."""
  check(exp, rec)
  t = exp.setting.t
  task = exp.setting.task
  P, T, _ = rec.shape
  rows_at = horizons(T, t, multiples)  # T >= t: `check`
  H = rows_at[-1]
  cut = lambda v: None if v is None else np.asarray(v)[:, :H]
  x, y, a = cut(rec.x), cut(rec.y), cut(rec.a)
  chances = {FAMILY: family_chance(exp, x, y)}
  if rec.chance_a is not None:
    chances = {SAME_KIND: cut(rec.chance_a), **chances}
  primary = next(iter(chances))
  axes = tuple(range(1, a.ndim))
  keep = ~np.any([figures.blown_up(v, axes) for v in (a, *chances.values())], axis=0)
  if not keep.any():
    raise ValueError(f"recorded teachers file {rec.path!r}: every teacher's behaviour or "
                     f"chance reference is non-finite or beyond {figures.BLOWN_UP:g}.")
  excluded = int(P - keep.sum())
  label = registry.label(exp.config)
  names = {"imitator": label}
  imitators, metas = battery.with_untrained(exp, meta)
  keys = objective.evaluation_keys(P)
  chunk = battery.divisor(t, H)
  compiled = {}

  def unroll(name, observe):
    im = imitators[name]
    if (im, observe is None) not in compiled:  # `untrained` shares the kind's compilation
      compiled[(im, observe is None)] = jax.jit(
          lambda m, x, y, a, k, im=im: objective.unroll(im, m, keys, x, y, a, chunk=chunk,
                                                        observe=k)[0])
    return compiled[(im, observe is None)](metas[name], x, y, a, observe)

  shift = shift_name(rec.path or "recorded.npz")
  kinds = np.asarray(rec.kind)[keep]
  loss = metrics.task_loss(task, jnp.asarray(a), jnp.asarray(y))
  ep = episodes.Episodes(x, y, np.zeros((P, H), np.int32), a, loss, {},
                         chances[primary])
  results, comps = [], []
  for k in (None,) + tuple(sorted(o for o in observes if o < H)):
    a_hat = {name: unroll(name, k) for name in imitators}
    if outputs is not None:
      outputs[k] = {n: np.asarray(v) for n, v in a_hat.items()}
    kept, outs = figures.select_teachers(
        ep, {n: (v, None, None) for n, v in a_hat.items()}, keep)
    ev = figures.materialized(task, names, kept, outs, excluded)
    rows = figures.rows_of(ev, shift, t, rows_at, exp.setting.family, None, k)
    errs = dict(ev.err, **{ORACLE: np.zeros_like(ev.chance)})
    kept_chances = {n: np.asarray(metrics.step_error(task, kept.behaviour, c[keep]))
                    for n, c in chances.items()}
    for r in rows:
      err, steps = errs[r["imitator"]], metrics.figure_steps(r["horizon"], t)
      r["chance"] = primary
      r["nie_versus"] = {}
      for n, c in kept_chances.items():
        nie, ci = metrics.nie_with_ci(err, c, steps)
        r["nie_versus"][n] = {"nie": nie, "nie_ci": list(ci)}
      untrained = errs.get(UNTRAINED) if r["imitator"] == label else None
      r["nie_by_kind"] = {kind: figures.nie_by_kind(err, kept_chances, primary, steps,
                                                    kinds == kind, untrained)
                          for kind in sorted(set(kinds.tolist()))}
      r["recorded_file"] = rec.path
    results += rows
    comps += figures.comparisons(label, ev.err, ev.chance, shift, t, rows_at, None, 1, k)
  return {"results": results, "comparisons": comps, "shift": shift, "excluded": excluded}


def table(results: list, t_train: int) -> str:
  """A short text table: NIE [95% CI] against each chance reference, per imitator,
  horizon and cut (teacher-forced or alone)."""
  refs = [n for n in (SAME_KIND, FAMILY) if any(n in r["nie_versus"] for r in results)]
  head = ["imitator", "horizon", "seen"] + [f"NIE vs {n} chance [95% CI]" for n in refs]
  lines = [" | ".join(head)]
  for r in results:
    if r["imitator"] == ORACLE:
      continue
    cells = [r["imitator"], f"{r['horizon'] // t_train}x" if r["horizon"] % t_train == 0
             else str(r["horizon"]),
             "all" if r.get("observe") is None else f"first {r['observe']}"]
    for n in refs:
      v = r["nie_versus"].get(n)
      cells.append("-" if v is None else render.with_ci(v["nie"], v["nie_ci"]))
    lines.append(" | ".join(cells))
  return "\n".join(lines)
