"""Evaluation beside held-out teachers: the battery of horizons and shifts, the
forgetting experiment, report.json / report.md / plots.

Held-out teachers come from `config.eval.seed` (folded with 2; validation uses 1), never
from the training key stream. Every imitator of a checkpoint (the trained kind and the
baselines) runs on the same teachers and streams, beside reference rows: `oracle` (the
teacher itself), `untrained` (the trained kind at its initial meta-params),
`known_hparams` (the family's learner with the teacher's hyperparams, fresh weights) and
`twin` (the teacher's hyperparams and weights, its own random draws). References may read
a teacher's hyperparams and init key; imitators never do. Teachers whose behaviour (or
chance teacher's) blows up are excluded from a shift's figures and counted.
The report schema is documented in README ("Report schema").
"""

from __future__ import annotations

import collections
import copy
import json
import math
import os
from typing import NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from imitator import checkpoint, co_rollout, episodes, kinds, metrics, objective, parallel
from imitator import references
from imitator import report as report_lib
from imitator.metrics import HORIZON_MULTIPLES
from imitator.references import BASELINES, KNOWN_HPARAMS, ORACLE, REFERENCES, UNTRAINED
from imitator import workdir as workdir_lib
from learners import family as family_lib
from learners import npz, rollout, shifts, streams

VERSUS = BASELINES + (UNTRAINED, KNOWN_HPARAMS)  # what the trained imitator is paired with
# Longest horizon (x T_train) rolled out before the imitators run; longer ones stream.
STREAMED_ABOVE = HORIZON_MULTIPLES[-1]
DIVERGENCE_EPS = (0.1, 0.25)
BATTERY = ("none",) + tuple(shifts.SHIFTS)
# Behaviour beyond this (or non-finite) is a learner that blew up: such teachers leave a
# shift's figures, such imitator predictions get a note.
BLOWN_UP = 1e6
PLOT_POINTS = 100  # log-spaced steps of the NIE curves in nie.png
# What identifies a row or a comparison when a report is merged into report.json.
ROW_KEY = ("imitator", "shift", "strength", "horizon")
COMPARISON_KEY = ("imitator", "versus", "shift", "strength", "horizon")


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


# --------------------------------------------------------------------------- unrolls


def errors_fn(imitators, setting, ep: episodes.Episodes, chunk: int = 0):
  """meta -> ({name: err [P, T]}, chance [P, T]) on fixed episodes `ep`. Each imitator
  object is jitted once: names that share one (the trained kind and `untrained`) share
  its compilation."""
  keys = objective.evaluation_keys(ep.x.shape[0])
  chunk = _divisor(chunk, ep.x.shape[1])
  compiled = {}

  def unroll_error(im):
    if im not in compiled:
      compiled[im] = jax.jit(lambda m, x, y, a: metrics.step_error(
          setting.task, a, objective.unroll(im, m, keys, x, y, a, chunk)[0]))
    return compiled[im]

  chance = jax.jit(metrics.step_error, static_argnums=0)(setting.task, ep.behaviour,
                                                         ep.chance)

  def run(meta):
    return {name: unroll_error(im)(meta[name], ep.x, ep.y, ep.behaviour)
            for name, im in imitators.items()}, chance

  return run


def _divisor(chunk: int, horizon: int) -> int:
  """The largest divisor of horizon that is <= chunk (0: the whole horizon)."""
  if not chunk or chunk >= horizon:
    return 0
  return max(d for d in range(1, chunk + 1) if horizon % d == 0)


# --------------------------------------------------------------------------- references


def with_untrained(exp, meta) -> tuple[dict, dict]:
  """(imitators, meta-params) with `untrained`: the configured kind at the initial
  meta-params training starts from (Experiment.init_state's own draw)."""
  imitators = dict(exp.imitators, **{UNTRAINED: exp.imitators["imitator"]})
  return imitators, dict(meta, **{UNTRAINED: exp.init_state().meta["imitator"]})


# --------------------------------------------------------------------------- rows


def row(name: str, shift: str, horizon: int, t_train: int, err, chance, strength=None,
        excluded: int = 0, unit: int = 1, **extra) -> dict:
  """One report row: NIE over the last t_train steps before `horizon`, CI over the
  teachers of err, chance [P, T / unit] (per step, or means over blocks of `unit`
  steps); `excluded` teachers were left out (they blew up)."""
  steps = metrics.figure_steps(horizon // unit, t_train // unit)
  nie, ci = metrics.nie_with_ci(err, chance, steps)
  median, median_ci = metrics.median_nie_with_ci(err, chance, steps)
  return {"imitator": name, "shift": shift, "strength": strength, "horizon": horizon,
          "nie": nie, "nie_ci": list(ci), "nie_median": median,
          "nie_median_ci": list(median_ci), "n_teachers": int(np.asarray(err).shape[0]),
          "n_teachers_excluded": int(excluded), **extra}


def _steps(step, unit):
  """A 1-based count of blocks of `unit` steps as a count of steps (None stays None)."""
  return None if step is None else step * unit


def _divergence(err, chance, t_train, unit: int = 1):
  out = {}
  for eps in DIVERGENCE_EPS:
    step, multiple = metrics.horizon_to_divergence(err, chance, eps, t_train // unit,
                                                   t_train // unit)
    out[str(eps)] = {"step": _steps(step, unit), "t_train_multiple": multiple}
  return out


def _identification(err, chance, t_train, unit: int = 1) -> dict:
  """The identification fields of every row of one imitator and shift (err, chance over
  the whole evaluated stream, per step or per block of `unit` steps)."""
  w = t_train // unit
  step, multiple = metrics.identification_step(err, chance, w, w)
  median, median_multiple, fraction = metrics.identification_step_median(err, chance, w, w)
  return {"identification_step": {"step": _steps(step, unit), "t_train_multiple": multiple},
          "identification_step_median": {"step": _steps(median, unit),
                                         "t_train_multiple": median_multiple},
          "identified_fraction": fraction}


def _blown_up(a, axes):
  """Where behaviour [P, ...] is non-finite or beyond BLOWN_UP anywhere over `axes`."""
  a = np.asarray(a)
  return ~np.all(np.isfinite(a) & (np.abs(a) <= BLOWN_UP), axis=axes)


def usable_teachers(ep: episodes.Episodes):
  """[P] bool: teachers whose behaviour and chance teacher's stay finite and below
  BLOWN_UP over the whole stream (SGD can diverge under strong shifts)."""
  axes = tuple(range(1, np.ndim(ep.behaviour)))
  return ~(_blown_up(ep.behaviour, axes) | _blown_up(ep.chance, axes))


def select_teachers(ep: episodes.Episodes, outputs: dict, keep):
  """The episodes (without init keys) and imitator outputs of the teachers in `keep`."""
  take = lambda tree: jax.tree.map(lambda a: np.asarray(a)[keep], tree)
  return take(ep._replace(init_keys=None)), {
      name: (take(a_hat), take(est), take(probe)) for name, (a_hat, est, probe) in
      outputs.items()}


def errors(task, ep, outputs, names) -> tuple[dict, np.ndarray]:
  """({name in reports: err [P, T]}, chance err [P, T])."""
  with np.errstate(over="ignore", invalid="ignore"):  # predictions that blew up: inf/nan
    errs = {names.get(k, k): np.asarray(metrics.step_error(task, ep.behaviour, o[0]))
            for k, o in outputs.items()}
  return errs, np.asarray(metrics.step_error(task, ep.behaviour, ep.chance))


class Evaluated(NamedTuple):
  """One shift's figures on the teachers kept, per step (unit 1) or as means over
  blocks of `unit` steps: err and loss {name: [P, n]}, chance and teacher_loss [P, n],
  agree {name: [P, n]} (classification, else {}), blown {name: teachers whose
  predictions blew up}, estimates {name: {field: [P, one per t_train steps]}}
  (system_id, materialized only), the teachers' hparams {field: [P]}."""

  err: dict
  chance: np.ndarray
  teacher_loss: np.ndarray
  loss: dict
  agree: dict
  blown: dict
  estimates: dict
  hparams: dict
  excluded: int = 0
  unit: int = 1


def materialized(task, names, ep, outputs, excluded: int = 0) -> Evaluated:
  """`Evaluated` per step from episodes `ep` of the teachers kept and their imitators'
  `outputs` {name: (a_hat [P, T, B, out], estimates or None, probes)}."""
  errs, chance = errors(task, ep, outputs, names)
  axes = tuple(range(1, np.ndim(ep.behaviour)))
  loss, agree, blown, estimates = {}, {}, {}, {}
  for name, (a_hat, est, _) in outputs.items():
    label = names.get(name, name)
    with np.errstate(over="ignore", invalid="ignore"):
      loss[label] = np.asarray(metrics.task_loss(task, a_hat, ep.y))
    if task == "classification":
      agree[label] = np.asarray(metrics.argmax_agreement(ep.behaviour, a_hat))
    blown[label] = int(_blown_up(a_hat, axes).sum())
    if est is not None:
      estimates[label] = est
  return Evaluated(errs, chance, np.asarray(ep.loss), loss, agree, blown, estimates,
                   ep.hparams, excluded)


def streamed(names, sums: co_rollout.Sums, unit: int) -> Evaluated:
  """`Evaluated` per block of `unit` steps from co-rollout sums, keeping the teachers
  whose behaviour and chance teacher's stayed finite and within BLOWN_UP."""
  peak = {k: np.asarray(v) for k, v in sums.peak.items()}
  keep = (peak.pop("teacher") <= BLOWN_UP) & (peak.pop("chance") <= BLOWN_UP)
  label = lambda k: names.get(k, k)
  per = lambda d: {label(k): np.asarray(v)[keep] for k, v in d.items()}
  return Evaluated(per(sums.err), np.asarray(sums.chance)[keep],
                   np.asarray(sums.teacher_loss)[keep], per(sums.loss), per(sums.agree),
                   {label(k): int((~(v[keep] <= BLOWN_UP)).sum()) for k, v in peak.items()},
                   {}, {}, int((~keep).sum()), unit)


def shift_rows(task, names, shift, t_train, horizons, ep, outputs, family, strength=None,
               excluded: int = 0) -> list:
  """Rows of one shift from materialized episodes (see `materialized`, `rows_of`)."""
  return rows_of(materialized(task, names, ep, outputs, excluded), shift, t_train,
                 horizons, family, strength)


def rows_of(ev: Evaluated, shift, t_train, horizons, family, strength=None) -> list:
  """Rows of one shift: every imitator and reference (and the oracle) at every horizon."""
  u = ev.unit
  common = dict(strength=strength, excluded=ev.excluded, unit=u)
  rows = []
  for label, err in ev.err.items():
    per_shift = {"horizon_to_divergence": _divergence(err, ev.chance, t_train, u),
                 **_identification(err, ev.chance, t_train, u)}
    if ev.blown.get(label):
      per_shift["note"] = (f"predictions non-finite or beyond {BLOWN_UP:g} for "
                           f"{ev.blown[label]} of {err.shape[0]} teachers")
    for h in horizons:
      steps = metrics.figure_steps(h // u, t_train // u)
      with np.errstate(invalid="ignore", over="ignore"):
        gap, gap_ci = metrics.task_gap(ev.teacher_loss, ev.loss[label], steps)
      extra = {**per_shift, "task_gap": gap, "task_gap_ci": list(gap_ci)}
      if label in ev.agree:
        extra["argmax_agreement"] = float(ev.agree[label][:, steps].mean())
      if label in ev.estimates:
        est, i = ev.estimates[label], h // t_train - 1
        true = {f: np.asarray(ev.hparams[f]) for f in family_lib.CONTINUOUS
                if f == "learning_rate" or family.prior(f).kind != "fixed"}
        extra["hparam_recovery"] = metrics.hparam_recovery(
            true, {f: np.asarray(est[f])[:, i] for f in true}, family.log_scale_fields())
      rows.append(row(label, shift, h, t_train, err, ev.chance, **common, **extra))
  zeros = np.zeros_like(ev.chance)
  for h in horizons:
    rows.append(row(ORACLE, shift, h, t_train, zeros, ev.chance, **common,
                    horizon_to_divergence=_divergence(zeros, ev.chance, t_train, u),
                    **_identification(zeros, ev.chance, t_train, u),
                    task_gap=0.0, task_gap_ci=[0.0, 0.0]))
  return rows


def comparisons(label: str, errs: dict, chance, shift, t_train, horizons,
                strength=None, unit: int = 1) -> list:
  """The trained imitator `label` paired with each of VERSUS present in errs {name:
  err [P, T / unit]}, at every horizon (metrics.paired_comparison)."""
  return [{"shift": shift, "strength": strength, "horizon": h, "imitator": label,
           "versus": versus, **metrics.paired_comparison(
               errs[label], errs[versus], chance,
               metrics.figure_steps(h // unit, t_train // unit))}
          for versus in VERSUS if versus in errs for h in horizons]


def nie_curves(errs: dict, chance, t_train: int, points: int = PLOT_POINTS,
               unit: int = 1) -> dict:
  """{name: {"steps", "nie", "lo", "hi"}}: the NIE over the trailing t_train steps at
  ~`points` log-spaced steps, with its 95% band over teachers (err, chance per step, or
  per block of `unit` steps: then at block ends)."""
  blocks = np.unique(np.geomspace(1, chance.shape[1], points).round().astype(int))
  return {name: dict(zip(("nie", "lo", "hi"),
                         metrics.windowed_nie_band(err, chance, t_train // unit, blocks)),
                     steps=blocks * unit) for name, err in errs.items()}


# --------------------------------------------------------------------------- battery


def restore_meta(exp, workdir: str, best: bool = True, step: int | None = None):
  """The meta-params of a checkpoint (best by validation NIE by default)."""
  ckpt = checkpoint.Checkpoints(workdir)
  state, _ = ckpt.restore(exp.abstract_state(), step=step, best=best)
  ckpt.close()
  if state is None:
    raise FileNotFoundError(f"no {'best ' if best else ''}checkpoint in {workdir}")
  return state.meta


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


def run_battery(exp, meta, shift_names, stream_npz=None, sweeps=None,
                multiples=HORIZON_MULTIPLES) -> dict:
  """Every imitator of `meta` and every reference on every shift at every horizon of
  `multiples` x T_train, and on every strength of `sweeps` {shift: strengths}:
  {"results", "comparisons", "skipped", "curves"} (curves: `nie_curves` per unswept
  shift, for plots). Up to STREAMED_ABOVE x T_train the teachers are rolled out first
  and figures kept per step; beyond it they stream beside the imitators
  (`co_rollout`), figures kept per block of T_train / 4 steps, in constant memory."""
  t = exp.setting.t
  n = exp.config.eval.teachers
  label = kinds.label(exp.config)
  names = {"imitator": label}
  results, comps, skipped, curves = [], [], [], {}
  imitators, metas = with_untrained(exp, meta)
  keys = objective.evaluation_keys(n)
  compiled = {}  # one jit per imitator object: `untrained` shares the trained kind's
  stream = max(multiples) > STREAMED_ABOVE

  def run(metas, x, y, a):
    out = {}
    for name, im in imitators.items():
      if im not in compiled:
        compiled[im] = jax.jit(lambda m, x, y, a, im=im: objective.unroll(
            im, m, keys, x, y, a, chunk=_divisor(t, x.shape[1])))
      out[name] = compiled[im](metas[name], x, y, a)
    return out

  def evaluated(setting, data, horizon):
    if stream:
      chunk = _divisor(t, horizon) or horizon
      unit = _divisor(max(chunk // 4, 1), chunk) or chunk
      sums = co_rollout.co_rollout(setting, data, imitators, metas,
                                   held_out_key(exp.config), n, horizon, chunk, unit, keys)
      return streamed(names, sums, unit)
    ep = held_out(exp.config, setting, data, n, horizon)
    outputs = run(metas, ep.x, ep.y, ep.behaviour)
    outputs.update({k: (a, None, None) for k, a in references.behaviours(
        setting.family, ep.hparams, ep.init_keys, ep.x, ep.y).items()})
    keep = usable_teachers(ep)
    ep, outputs = select_teachers(ep, outputs, keep)
    return materialized(setting.task, names, ep, outputs, int(n - keep.sum()))

  entries = [(s, None) for s in shift_names] + [
      (s, v) for s, strengths in (sweeps or {}).items() for v in strengths]
  for shift, strength in entries:
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
    ev = evaluated(setting, data, horizon)
    if ev.excluded == n:
      reason = f"all {n} held-out teachers blew up (behaviour non-finite or beyond {BLOWN_UP:g})"
      skipped.append({"shift": shift, "strength": strength, "reason": reason})
      logging.info("shift %s: skipped (%s)", where, reason)
      continue
    horizons = [m * t for m in sorted(multiples) if m * t <= horizon] or [horizon]
    rows = rows_of(ev, shift, t, horizons, setting.family, strength)
    results += rows
    comps += comparisons(label, ev.err, ev.chance, shift, t, horizons, strength, ev.unit)
    if strength is None:
      curves[shift] = nie_curves(ev.err, ev.chance, t, unit=ev.unit)
    best = min((r for r in rows if r["horizon"] == horizons[-1] and r["imitator"] not in
                (ORACLE,) + REFERENCES), key=lambda r: r["nie"])
    logging.info("shift %s: NIE at %d steps, best %s %.3f (%d of %d teachers excluded)",
                 where, horizons[-1], best["imitator"], best["nie"], ev.excluded, n)
  return {"results": results, "comparisons": comps, "skipped": skipped, "curves": curves}


def forgetting(exp, meta, probes: int = 32) -> dict:
  """Tasks A and B together, then A alone: the teacher's and each imitator's loss on
  held-out B examples over time, and the gap between the two curves."""
  cfg = copy.deepcopy(exp.config)
  if cfg.stream.kind not in ("linear_regression", "mlp_regression",
                             "linear_classification", "mlp_classification"):
    raise shifts.NotApplicable(f"the A+B-then-A schedule needs a synthetic stream, not "
                               f"{cfg.stream.kind!r}")
  t = exp.setting.t
  cfg.stream.schedule = "ab_then_a"
  cfg.stream.task_switch_every = 0
  cfg.stream.horizon = 4 * t
  setting, data = episodes.setting_from_config(cfg)
  every = max(t // 8, 1)
  n = exp.config.eval.teachers
  key = jax.random.fold_in(jax.random.key(exp.config.eval.seed), 3)

  @jax.jit
  def teachers(key):
    k_teach, k_stream = jax.random.split(key)
    stream_keys = jax.random.split(k_stream, n)
    stream = jax.vmap(lambda k: streams.make_stream(setting.spec, k, data))(stream_keys)
    px, py = jax.vmap(lambda k: streams.forgetting_probes(setting.spec, k, probes, data))(
        stream_keys)
    hp, init_keys = episodes.teachers(setting, k_teach, n)
    traj = jax.vmap(lambda hp, k, s, p: rollout.rollout(
        setting.family, hp, k, s, probes=p, probe_every=every))(hp, init_keys, stream, px)
    return stream, traj, px, py

  stream, traj, px, py = teachers(key)
  keys = objective.evaluation_keys(n)
  task = setting.task

  def loss_on_b(outputs):  # [P, K, n, out] -> [P, K]
    y = jnp.broadcast_to(py[:, None], outputs.shape[:3] + py.shape[2:])
    return np.asarray(metrics.task_loss(task, outputs, y))

  teacher_curve = loss_on_b(traj.probe_outputs)
  result = {"steps": list(range(0, 4 * t, every)), "teacher": teacher_curve.mean(0).tolist(),
            "imitators": {}, "rows": []}
  names = {"imitator": kinds.label(exp.config)}
  for name, im in exp.imitators.items():
    run = jax.jit(lambda m, x, y, a, p: objective.unroll(im, m, keys, x, y, a, every, probes=p)[2])
    curve = loss_on_b(run(meta[name], stream.x, stream.y, traj.behaviour, px))
    gap, ci = metrics.forgetting_gap(teacher_curve, curve)
    label = names.get(name, name)
    result["imitators"][label] = curve.mean(0).tolist()
    result["rows"].append({"imitator": label, "shift": "forgetting", "strength": None,
                           "horizon": 4 * t,
                           "forgetting_gap": gap, "forgetting_gap_ci": list(ci),
                           "n_teachers": n})
    logging.info("forgetting: %s gap %.4f", label, gap)
  return result


# --------------------------------------------------------------------------- files


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
  """For every imitator and swept shift: the smallest swept strength whose NIE at
  16 x T_train exceeds metrics.IDENTIFIED_NIE (metrics.breaking_strength)."""
  horizon = HORIZON_MULTIPLES[-1] * t_train
  swept = collections.defaultdict(dict)
  for r in results:
    if r.get("strength") is not None and r["horizon"] == horizon and r["imitator"] != ORACLE:
      swept[(r["imitator"], r["shift"])][r["strength"]] = r["nie"]
  return [{"imitator": name, "shift": shift,
           "breaking_strength": metrics.breaking_strength(list(nies), list(nies.values())),
           "swept": sorted(nies), "horizon": horizon}
          for (name, shift), nies in swept.items()]


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
  with checkpoint.uninterrupted():  # SIGTERM/SIGINT: after both files are whole
    with open(path, "w") as f:
      json.dump(report, f, indent=2, allow_nan=False)
    with open(os.path.join(workdir, "eval", "report.md"), "w") as f:
      f.write(report_lib.markdown(report))
  return report


def final_report(exp, workdir: str) -> dict:
  """End of training: the best checkpoint at the training horizon, shift none, with the
  references and the paired comparisons."""
  meta = restore_meta(exp, workdir)
  t = exp.setting.t
  n = exp.config.eval.teachers
  ep = held_out(exp.config, exp.setting, exp.data, n)
  imitators, metas = with_untrained(exp, meta)
  errs, chance = errors_fn(imitators, exp.setting, ep, exp.config.eval.chunk)(metas)
  refs = references.behaviours(exp.setting.family, ep.hparams, ep.init_keys, ep.x, ep.y)
  errs.update({k: metrics.step_error(exp.setting.task, ep.behaviour, a)
               for k, a in refs.items()})
  keep = usable_teachers(ep)
  label = kinds.label(exp.config)
  errs = {label if k == "imitator" else k: np.asarray(e)[keep] for k, e in errs.items()}
  chance = np.asarray(chance)[keep]
  excluded = int(n - keep.sum())
  rows = [row(name, "none", t, t, e, chance, excluded=excluded,
              **_identification(e, chance, t)) for name, e in errs.items()]
  zeros = np.zeros_like(chance)
  rows.append(row(ORACLE, "none", t, t, zeros, chance, excluded=excluded,
                  **_identification(zeros, chance, t)))
  return write_report(workdir, t, rows,
                      comparisons=comparisons(label, errs, chance, "none", t, [t]))


def evaluate(exp, workdir: str, shift_names, stream_npz: str | None = None,
             with_forgetting: bool = True, sweeps=None,
             multiples=HORIZON_MULTIPLES) -> dict:
  """The battery (and the strength sweeps {shift: strengths}) at `multiples` x T_train
  on the best checkpoint of `workdir`: report.json rows, report.md and plots under
  workdir/eval."""
  meta = restore_meta(exp, workdir)
  battery = run_battery(exp, meta, shift_names, stream_npz, sweeps, multiples)
  rows, skipped = battery["results"], battery["skipped"]
  forget = None
  if with_forgetting:
    try:
      forget = forgetting(exp, meta)
      rows = rows + forget["rows"]
    except shifts.NotApplicable as e:
      skipped = skipped + [{"shift": "forgetting", "strength": None, "reason": str(e)}]
  t = exp.setting.t
  report = write_report(workdir, t, rows, skipped, battery["comparisons"])
  if not parallel.is_primary():
    return report
  try:
    _plots(exp, workdir, battery, report, forget)
  except checkpoint.Interrupted as e:
    e.phase = "plots"  # the rows are in report.json already
    raise
  return report


def _plots(exp, workdir, battery, report, forget):
  t = exp.setting.t
  eval_dir = os.path.join(workdir, "eval")
  if battery["curves"]:
    report_lib.plot_nie(battery["curves"], t, os.path.join(eval_dir, "nie.png"),
                        metrics.IDENTIFIED_NIE)
  for shift in sorted({r["shift"] for r in report["results"] if r.get("strength") is not None}):
    report_lib.plot_sweep(report, shift, DEFAULT_SWEEPS[shift].log_x,
                          os.path.join(eval_dir, f"sweep_{shift}.png"), metrics.IDENTIFIED_NIE)
  if forget is not None:
    report_lib.plot_forgetting(forget, t, os.path.join(eval_dir, "forgetting.png"))
    with open(os.path.join(eval_dir, "forgetting.json"), "w") as f:
      json.dump({k: v for k, v in forget.items() if k != "rows"}, f)
