"""The battery: every imitator of a checkpoint and every reference on held-out teachers,
at every horizon and shift, and on every strength of the sweeps.

Held-out teachers come from `config.eval.seed` (folded with 2; validation uses 1), never
from the training key stream. Every imitator (the trained kind and the baselines) runs
on the same teachers and streams, beside reference rows: `oracle` (the teacher itself),
`untrained` (the trained kind at its initial meta-params), `known_hparams` (the family's
learner with the teacher's hyperparams, fresh weights) and `twin` (the teacher's
hyperparams and weights, its own random draws). References may read a teacher's
hyperparams and init key; imitators never do.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from typing import NamedTuple

from absl import logging
import jax

from imitator import metrics
from imitator.evaluation import figures
from imitator.kinds import registry
from imitator.metrics import HORIZON_MULTIPLES
from imitator.rollout import co_rollout, episodes, objective, references
from imitator.rollout.references import ORACLE, REFERENCES, UNTRAINED
from imitator.runtime import signals
from learners import npz, shifts


# Longest horizon (x T_train) rolled out before the imitators run; longer ones stream.
STREAMED_ABOVE = HORIZON_MULTIPLES[-1]


BATTERY = ("none",) + tuple(shifts.SHIFTS)


class Sweep(NamedTuple):
  strengths: tuple
  log_x: bool  # plotted on a log axis: the strength is a factor, or spans decades


DEFAULT_SWEEPS = {
    "covariate_scale": Sweep((0.25, 0.5, 1.0, 2.0, 4.0, 8.0), True),
    "skewed_covariance": Sweep((0.5, 0.75, 1.0, 1.5, 2.5, 4.0), False),
    "fast_switching": Sweep((2.0, 3.0, 4.0, 6.0, 10.0, 16.0), True),
    "drift": Sweep((0.01, 0.02, 0.04, 0.08, 0.15, 0.3), True),
    "label_noise": Sweep((0.1, 0.15, 0.25, 0.4, 0.6, 0.9), False),
    "teacher_prior": Sweep((3.0, 6.0, 12.0, 25.0, 50.0, 100.0), True),
}


def parse_sweep(text: str) -> tuple[str, tuple]:
  """A --sweep value, 'SHIFT' (its default strengths) or 'SHIFT:s1,s2,...', as
  (shift, sorted strengths); ValueError naming the flag if it is not one."""
  name, _, values = (part.strip() for part in text.partition(":"))
  if name not in DEFAULT_SWEEPS:
    why = "has no strength to sweep" if name in shifts.SHIFTS else "is not a shift"
    raise ValueError(f"--sweep={text}: {name!r} {why}; allowed: {list(DEFAULT_SWEEPS)}, "
                     "as SHIFT or SHIFT:s1,s2,...")
  sweep = DEFAULT_SWEEPS[name]
  if not values:
    return name, sweep.strengths
  allowed = "numbers > 0" if sweep.log_x else "numbers >= 0"
  example = ",".join(f"{s:g}" for s in sweep.strengths)
  try:
    strengths = [float(v) for v in values.split(",") if v.strip()]
  except ValueError:
    strengths = []
  if not strengths or any(not math.isfinite(s) or s < 0 or (sweep.log_x and s == 0)
                          for s in strengths):
    raise ValueError(f"--sweep={text}: strengths {values!r}; allowed: {allowed}, "
                     f"comma-separated, e.g. {name}:{example}.")
  return name, tuple(sorted(set(strengths)))


def errors_fn(imitators, setting, ep: episodes.Episodes, chunk: int = 0,
              observe: int | None = None):
  """meta -> ({name: err [P, T]}, chance [P, T]) on fixed episodes `ep` (alone after the
  first `observe` steps when set). Each imitator object is jitted once: names that share
  one (the trained kind and `untrained`) share its compilation."""
  keys = objective.evaluation_keys(ep.x.shape[0])
  chunk = divisor(chunk, ep.x.shape[1])
  compiled = {}

  def unroll_error(im):
    if im not in compiled:
      compiled[im] = jax.jit(lambda m, x, y, a: metrics.step_error(
          setting.task, a, objective.unroll(im, m, keys, x, y, a, chunk,
                                            observe=observe)[0]))
    return compiled[im]

  chance = jax.jit(metrics.step_error, static_argnums=0)(setting.task, ep.behaviour,
                                                         ep.chance)

  def run(meta):
    return {name: unroll_error(im)(meta[name], ep.x, ep.y, ep.behaviour)
            for name, im in imitators.items()}, chance

  return run


def divisor(chunk: int, horizon: int) -> int:
  """The largest divisor of horizon that is <= chunk (0: the whole horizon)."""
  if not chunk or chunk >= horizon:
    return 0
  return max(d for d in range(1, chunk + 1) if horizon % d == 0)


def with_untrained(exp, meta) -> tuple[dict, dict]:
  """(imitators, meta-params) with `untrained`: the configured kind at the initial
  meta-params training starts from (Experiment.init_state's own draw)."""
  imitators = dict(exp.imitators, **{UNTRAINED: exp.imitators["imitator"]})
  return imitators, dict(meta, **{UNTRAINED: exp.init_state().meta["imitator"]})


def held_out_key(config):
  """The key of the held-out teachers and their streams (validation folds in 1)."""
  return jax.random.fold_in(jax.random.key(config.eval.seed), 2)


def held_out(config, setting, data, n: int, horizon: int | None = None):
  """n held-out teachers with chance teachers, from the evaluation seed."""
  if horizon:
    setting = setting.with_horizon(horizon)
  return jax.jit(lambda k: episodes.sample(setting, data, k, n, chance=True))(
      held_out_key(config))


def shifted_setting(exp, shift: str, stream_npz: str | None = None):
  """(Setting, data) of a shift, or raises shifts.NotApplicable with the reason."""
  if shift == "npz":
    cfg = copy.deepcopy(exp.config)
    cfg.stream.kind = "npz"
    cfg.stream.npz_path = stream_npz
    n = npz.load(stream_npz).x.shape[0] // cfg.stream.batch
    cfg.stream.horizon = max(n, 1)
  else:
    cfg = shifts.apply(exp.config, shift)
  setting, data = episodes.setting_from_config(cfg)
  base = exp.setting
  if (setting.task, setting.family.x_shape, setting.family.out_dim) != (
      base.task, base.family.x_shape, base.family.out_dim):
    raise shifts.NotApplicable(
        f"its streams give {setting.task} with inputs {setting.family.x_shape} and "
        f"{setting.family.out_dim} outputs; the imitators were trained on {base.task} "
        f"with {base.family.x_shape} and {base.family.out_dim}")
  return setting, data


def teachers_id(config, shift: str, horizon: int, stream_npz: str | None = None) -> str:
  """A digest of what fixes a shift's held-out teachers and their streams: the stream,
  family and teacher config, the evaluation seed and number of teachers, the shift and
  the longest horizon evaluated (which decides the streams and whether they stream).
  Runs with equal ids were evaluated on the same teachers: their rows pair."""
  what = {"stream": config.stream.to_dict(), "family": config.family.to_dict(),
          "teacher": config.teacher.to_dict() if "teacher" in config else {},
          "seed": config.eval.seed, "teachers": config.eval.teachers, "shift": shift,
          "horizon": horizon, "stream_npz": stream_npz if shift == "npz" else None}
  text = json.dumps(what, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def panel(shift: str, observe: int | None = None) -> str:
  """The name of a shift's NIE curves in plots: teacher-forced, or alone after the cut."""
  return shift if observe is None else f"{shift}, alone after {observe}"


def check_observes(observes, t_train: int, horizon: int) -> tuple:
  """--observe values (steps seen before the imitators run alone) as sorted distinct
  ints; ValueError naming the flag unless 1 <= K < horizon and, beyond STREAMED_ABOVE x
  T_train (figures per block of T_train / 4 steps), K a multiple of the block."""
  block = max(t_train // 4, 1) if horizon > STREAMED_ABOVE * t_train else 1
  for k in observes:
    if not (isinstance(k, int) and 1 <= k < horizon and k % block == 0):
      raise ValueError(
          f"--observe={k}: allowed are steps K with 1 <= K < {horizon} (the longest "
          f"horizon){f' and K a multiple of {block} (T_train / 4) beyond ' if block > 1 else ''}"
          f"{f'{STREAMED_ABOVE} x T_train' if block > 1 else ''}; e.g. --observe={t_train} "
          "or --observe=1x.")
  return tuple(sorted(set(observes)))


def run_battery(exp, meta, shift_names, stream_npz=None, sweeps=None,
                multiples=HORIZON_MULTIPLES, observes=(), extra=None) -> dict:
  """Every imitator of `meta` and every reference on every shift at every horizon of
  `multiples` x T_train, and on every strength of `sweeps` {shift: strengths}, teacher-
  forced and, for each K of `observes`, alone after the teacher's first K steps:
  {"results", "comparisons", "skipped", "curves", "cuts"} (curves: `figures.nie_curves`
  per unswept shift and cut, named by `panel`, for plots; cuts: {panel: K}). Up to STREAMED_ABOVE x T_train
  the teachers are rolled out first and figures kept per step; beyond it they stream
  beside the imitators (`co_rollout`), figures kept per block of T_train / 4 steps, in
  constant memory. `extra` {name: (imitator, meta-params)} adds imitators (ensembles)
  to the rows."""
  t = exp.setting.t
  n = exp.config.eval.teachers
  label = registry.label(exp.config)
  names = {"imitator": label}
  results, comps, skipped, curves, cuts = [], [], [], {}, {}
  imitators, metas = with_untrained(exp, meta)
  for name, (im, m) in (extra or {}).items():
    imitators[name], metas[name] = im, m
  keys = objective.evaluation_keys(n)
  compiled = {}  # one jit per imitator object and mode: `untrained` shares the kind's
  stream = max(multiples) > STREAMED_ABOVE
  observes = check_observes(observes, t, t * max(multiples))

  def run(metas, x, y, a, observe):
    out = {}
    for name, im in imitators.items():
      if (im, observe is None) not in compiled:
        compiled[(im, observe is None)] = jax.jit(
            lambda m, x, y, a, k, im=im: objective.unroll(
                im, m, keys, x, y, a, chunk=divisor(t, x.shape[1]), observe=k))
      out[name] = compiled[(im, observe is None)](metas[name], x, y, a, observe)
    return out

  def evaluated(setting, data, horizon, cuts):
    """{cut: figures.Evaluated} for cut None (teacher-forced) and each of `cuts`."""
    if stream:
      chunk = divisor(t, horizon) or horizon
      unit = divisor(max(chunk // 4, 1), chunk) or chunk
      sums = co_rollout.co_rollout(setting, data, imitators, metas,
                                   held_out_key(exp.config), n, horizon, chunk, unit, keys,
                                   observes=(None,) + cuts)
      return {k: figures.streamed(names, v, unit) for k, v in sums.items()}
    ep = held_out(exp.config, setting, data, n, horizon)
    refs = {k: (a, None, None) for k, a in references.behaviours(
        setting.family, ep.hparams, ep.init_keys, ep.x, ep.y).items()}
    keep = figures.usable_teachers(ep)
    out = {}
    for k in (None,) + cuts:
      outputs = dict(run(metas, ep.x, ep.y, ep.behaviour, k), **refs)
      kept, outputs = figures.select_teachers(ep, outputs, keep)
      out[k] = figures.materialized(setting.task, names, kept, outputs, int(n - keep.sum()))
    return out

  entries = [(s, None) for s in shift_names] + [
      (s, v) for s, strengths in (sweeps or {}).items() for v in strengths]
  for shift, strength in entries:
    signals.check("evaluation")  # a signal whose exception foreign code swallowed
    where = shift if strength is None else f"{shift} at strength {strength:g}"
    try:
      setting, data = shifted_setting(
          exp, shift if strength is None else f"{shift}:{strength!r}", stream_npz)
    except shifts.NotApplicable as e:
      skipped.append({"shift": shift, "strength": strength, "reason": str(e)})
      logging.info("shift %s: skipped (%s)", where, e)
      continue
    horizon = t * max(multiples)
    if shift == "npz":
      horizon = min(horizon, setting.t - setting.t % t if setting.t >= t else setting.t)
    evs = evaluated(setting, data, horizon, tuple(k for k in observes if k < horizon))
    if evs[None].excluded == n:
      reason = (f"all {n} held-out teachers blew up (behaviour non-finite or beyond "
                f"{figures.BLOWN_UP:g})")
      skipped.append({"shift": shift, "strength": strength, "reason": reason})
      logging.info("shift %s: skipped (%s)", where, reason)
      continue
    horizons = [m * t for m in sorted(multiples) if m * t <= horizon] or [horizon]
    for k, ev in evs.items():
      rows = figures.rows_of(
          ev, shift, t, horizons, setting.family, strength, k,
          None if strength is not None else teachers_id(exp.config, shift, horizon,
                                                        stream_npz))
      figures.add_nie_by_rule(rows, ev, setting.family, t, label)
      results += rows
      comps += figures.comparisons(label, ev.err, ev.chance, shift, t, horizons, strength,
                                   ev.unit, k)
      for name in extra or {}:  # each ensemble paired with its first member
        comps += figures.comparisons(name, ev.err, ev.chance, shift, t, horizons, strength,
                                     ev.unit, k, against=(label,))
      if strength is None:
        curves[panel(shift, k)] = figures.nie_curves(ev.err, ev.chance, t, unit=ev.unit)
        cuts[panel(shift, k)] = k
      best = min((r for r in rows if r["horizon"] == horizons[-1] and r["imitator"] not in
                  (ORACLE,) + REFERENCES), key=lambda r: r["nie"])
      logging.info("shift %s%s: NIE at %d steps, best %s %.3f (%d of %d teachers "
                   "excluded)", where, "" if k is None else f", alone after {k} steps",
                   horizons[-1], best["imitator"], best["nie"], ev.excluded, n)
  return {"results": results, "comparisons": comps, "skipped": skipped, "curves": curves,
          "cuts": cuts}
