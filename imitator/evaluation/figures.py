"""Report rows from per-step (or per-block) errors: a row's NIE with CIs at each horizon,
divergence and identification, task gap, paired comparisons with the baselines and
references, and the NIE curves of the plots. Teachers whose behaviour (or chance
teacher's) blew up are excluded from a shift's figures and counted."""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from imitator import metrics
from imitator.rollout import co_rollout, episodes
from imitator.rollout.references import BASELINES, KNOWN_HPARAMS, ORACLE, UNTRAINED
from learners import family as family_lib
from learners import rules


VERSUS = BASELINES + (UNTRAINED, KNOWN_HPARAMS)  # what the trained imitator is paired with


DIVERGENCE_EPS = (0.1, 0.25)

FAMILY_CHANCE = "family"  # per-kind NIE of family teachers: against the family's chance


# Behaviour beyond this (or non-finite) is a learner that blew up: such teachers leave a
# shift's figures, such imitator predictions get a note.
BLOWN_UP = 1e6


PLOT_POINTS = 100  # log-spaced steps of the NIE curves in nie.png


def row(name: str, shift: str, horizon: int, t_train: int, err, chance, strength=None,
        excluded: int = 0, unit: int = 1, observe: int | None = None,
        per_teacher: bool = False, **extra) -> dict:
  """One report row: NIE over the last t_train steps before `horizon`, CI over the
  teachers of err, chance [P, T / unit] (per step, or means over blocks of `unit`
  steps); `excluded` teachers were left out (they blew up). `observe`: the imitators saw
  the teacher's first `observe` steps only and then ran alone (None: teacher-forced).
  `per_teacher`: also each teacher's mean error and chance error over those steps, so
  that runs evaluated on the same teachers can be compared paired (launch.results)."""
  steps = metrics.figure_steps(horizon // unit, t_train // unit)
  nie, ci = metrics.nie_with_ci(err, chance, steps)
  median, median_ci = metrics.median_nie_with_ci(err, chance, steps)
  if per_teacher:
    with np.errstate(invalid="ignore", over="ignore"):
      extra["per_teacher"] = {
          "err": np.asarray(err, np.float64)[:, steps].mean(1).tolist(),
          "chance": np.asarray(chance, np.float64)[:, steps].mean(1).tolist()}
  return {"imitator": name, "shift": shift, "strength": strength, "horizon": horizon,
          "observe": observe, "nie": nie, "nie_ci": list(ci), "nie_median": median,
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


def identification_fields(err, chance, t_train, unit: int = 1) -> dict:
  """The identification fields of every row of one imitator and shift (err, chance over
  the whole evaluated stream, per step or per block of `unit` steps)."""
  w = t_train // unit
  step, multiple = metrics.identification_step(err, chance, w, w)
  median, median_multiple, fraction = metrics.identification_step_median(err, chance, w, w)
  return {"identification_step": {"step": _steps(step, unit), "t_train_multiple": multiple},
          "identification_step_median": {"step": _steps(median, unit),
                                         "t_train_multiple": median_multiple},
          "identified_fraction": fraction}


def blown_up(a, axes):
  """Where behaviour [P, ...] is non-finite or beyond BLOWN_UP anywhere over `axes`."""
  a = np.asarray(a)
  return ~np.all(np.isfinite(a) & (np.abs(a) <= BLOWN_UP), axis=axes)


def usable_teachers(ep: episodes.Episodes):
  """[P] bool: teachers whose behaviour and chance teacher's stay finite and below
  BLOWN_UP over the whole stream (SGD can diverge under strong shifts)."""
  axes = tuple(range(1, np.ndim(ep.behaviour)))
  return ~(blown_up(ep.behaviour, axes) | blown_up(ep.chance, axes))


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
    blown[label] = int(blown_up(a_hat, axes).sum())
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


def free_running_horizon(err, chance, observe: int, t_train: int, unit: int = 1) -> dict:
  """`metrics.free_running_horizon` after a cut at step `observe`, in steps (err, chance
  per step or per block of `unit` steps; the cut on a block boundary)."""
  fr = metrics.free_running_horizon(err, chance, observe // unit, t_train // unit,
                                    t_train // unit)
  return dict(fr, steps=_steps(fr["steps"], unit), within_steps=fr["within_steps"] * unit)


def rows_of(ev: Evaluated, shift, t_train, horizons, family, strength=None,
            observe: int | None = None, teachers_id: str | None = None) -> list:
  """Rows of one shift: every imitator and reference (and the oracle) at every horizon;
  alone (`observe` set) only at horizons after the cut, with the free-running horizon.
  With `teachers_id` (what fixed the held-out teachers and streams, `battery.teachers_id`)
  the rows also keep their per-teacher figures, for paired comparisons across runs."""
  u = ev.unit
  common = dict(strength=strength, excluded=ev.excluded, unit=u, observe=observe)
  if teachers_id is not None:
    common.update(per_teacher=True, teachers_id=teachers_id)
  if observe is not None:
    horizons = [h for h in horizons if h > observe]
  rows = []
  for label, err in ev.err.items():
    per_shift = {"horizon_to_divergence": _divergence(err, ev.chance, t_train, u),
                 **identification_fields(err, ev.chance, t_train, u)}
    if observe is not None:
      per_shift["free_running_horizon"] = free_running_horizon(err, ev.chance, observe,
                                                               t_train, u)
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
    rows.append(row(ORACLE, shift, h, t_train, zeros, ev.chance,
                    **dict(common, per_teacher=False),
                    horizon_to_divergence=_divergence(zeros, ev.chance, t_train, u),
                    **identification_fields(zeros, ev.chance, t_train, u),
                    task_gap=0.0, task_gap_ci=[0.0, 0.0]))
  return rows


def nie_by_kind(err, chances: dict, primary: str, steps: slice, sel, untrained=None) -> dict:
  """The `nie_by_kind` entry of a row for one learner kind (teachers `sel`): n_teachers, the NIE against
  each chance reference and its CI (`<reference>_ci`), and for the trained imitator
  `versus_untrained`, its paired comparison with `untrained` on those teachers."""
  entry = {"n_teachers": int(sel.sum())}
  for n, c in chances.items():
    nie, ci = metrics.nie_with_ci(err[sel], c[sel], steps)
    entry[n], entry[f"{n}_ci"] = nie, list(ci)
  if untrained is not None:
    entry["versus_untrained"] = metrics.paired_comparison(
        err[sel], untrained[sel], chances[primary][sel], steps)
  return entry


def add_nie_by_rule(rows: list, ev: Evaluated, family, t_train: int, trained: str) -> None:
  """In a family with non-gradient members, gives each row `nie_by_kind` {rule: entry}:
  its imitator's NIE on the held-out teachers of each rule (against the family's chance
  teacher, `FAMILY_CHANCE`), and for `trained` the paired comparison with untrained on
  them. Needs the teachers' hparams (per-step figures, up to STREAMED_ABOVE x T_train)."""
  if not family.beyond_gradient or "rule" not in ev.hparams:
    return
  codes = np.asarray(ev.hparams["rule"])
  errs = dict(ev.err, **{ORACLE: np.zeros_like(ev.chance)})
  for r in rows:
    err = errs[r["imitator"]]
    steps = metrics.figure_steps(r["horizon"] // ev.unit, t_train // ev.unit)
    untrained = ev.err.get(UNTRAINED) if r["imitator"] == trained else None
    r["chance"] = FAMILY_CHANCE  # what `nie_by_kind` is relative to, as in recorded rows
    r["nie_by_kind"] = {
        rule: nie_by_kind(err, {FAMILY_CHANCE: ev.chance}, FAMILY_CHANCE, steps,
                          codes == rules.RULES.index(rule), untrained)
        for rule in family.rules if np.any(codes == rules.RULES.index(rule))}


def comparisons(label: str, errs: dict, chance, shift, t_train, horizons,
                strength=None, unit: int = 1, observe: int | None = None,
                against=VERSUS) -> list:
  """The imitator `label` paired with each of `against` (the baselines by default)
  present in errs {name: err [P, T / unit]}, at every horizon (after the cut, alone)
  (metrics.paired_comparison)."""
  if observe is not None:
    horizons = [h for h in horizons if h > observe]
  return [{"shift": shift, "strength": strength, "horizon": h, "observe": observe,
           "imitator": label, "versus": versus, **metrics.paired_comparison(
               errs[label], errs[versus], chance,
               metrics.figure_steps(h // unit, t_train // unit))}
          for versus in against if versus in errs for h in horizons]


def nie_curves(errs: dict, chance, t_train: int, points: int = PLOT_POINTS,
               unit: int = 1) -> dict:
  """{name: {"steps", "nie", "lo", "hi"}}: the NIE over the trailing t_train steps at
  ~`points` log-spaced steps, with its 95% band over teachers (err, chance per step, or
  per block of `unit` steps: then at block ends)."""
  blocks = np.unique(np.geomspace(1, chance.shape[1], points).round().astype(int))
  return {name: dict(zip(("nie", "lo", "hi"),
                         metrics.windowed_nie_band(err, chance, t_train // unit, blocks)),
                     steps=blocks * unit) for name, err in errs.items()}
