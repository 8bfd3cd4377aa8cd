"""Evaluation of a run's checkpoint: the final report at the end of training, and the
battery with the forgetting experiment, report.json, report.md and plots under
workdir/eval (`launch.evaluate`)."""

from __future__ import annotations

import json
import os

import numpy as np

from imitator import metrics
from imitator.evaluation import battery, figures, forgetting, render, report_json
from imitator.kinds import ensemble, registry
from imitator.metrics import HORIZON_MULTIPLES
from imitator.rollout import references
from imitator.rollout.references import ORACLE
from imitator.runtime import checkpoint, parallel, signals
from imitator.runtime import workdir as workdir_lib
from learners import shifts


def restore_meta(exp, workdir: str, best: bool = True, step: int | None = None):
  """The meta-params of a checkpoint (best by validation NIE by default)."""
  ckpt = checkpoint.Checkpoints(workdir)
  state, _ = ckpt.restore(exp.abstract_state(), step=step, best=best)
  ckpt.close()
  if state is None:
    raise FileNotFoundError(f"no {'best ' if best else ''}checkpoint in {workdir}")
  return state.meta


def ensemble_imitators(exp, meta, workdirs) -> dict:
  """{"ensemble/K": (EnsembleImitator, stacked meta-params)} for K = 2, 4, ... <= 1 +
  len(workdirs), of the configured imitator of `meta` and of each workdir's best
  checkpoint, in order; for classification also "vote/K", their majority vote."""
  members = [meta["imitator"]] + [restore_meta(exp, w)["imitator"] for w in workdirs]
  out, k = {}, 2
  im = exp.imitators["imitator"]
  while k <= len(members):
    out[f"ensemble/{k}"] = ensemble.EnsembleImitator.of(im, members[:k])
    if im.task == "classification":
      out[f"vote/{k}"] = ensemble.EnsembleImitator.of(im, members[:k], vote=True)
    k *= 2
  return out


def check_ensemble(config, workdirs) -> list:
  """--ensemble workdirs: runs of the workdir's config but its seed (and the cadence
  fields a restart may change), each with a checkpoint; ValueError naming the first
  that is not."""
  mine = json.loads(config.to_json_best_effort())
  for w in workdirs:
    saved = workdir_lib.read_saved_config(w)
    if saved is None or not any(os.path.isdir(os.path.join(w, d))
                                for d in ("best", "checkpoints")):
      raise ValueError(f"--ensemble: {w} is not a trained run (no config.json or no "
                       "checkpoint).")
    changes = [c for c in workdir_lib.config_changes(saved, mine)
               if not c.startswith("seed:")]
    if changes:
      raise ValueError(f"--ensemble: {w} is a run of another config ({changes[0]}); "
                       "allowed: runs of the same config with another --config.seed.")
  return workdirs


def final_report(exp, workdir: str) -> dict:
  """End of training: the best checkpoint at the training horizon, shift none, with the
  references and the paired comparisons."""
  meta = restore_meta(exp, workdir)
  t = exp.setting.t
  n = exp.config.eval.teachers
  ep = battery.held_out(exp.config, exp.setting, exp.data, n)
  imitators, metas = battery.with_untrained(exp, meta)
  errs, chance = battery.errors_fn(imitators, exp.setting, ep, exp.config.eval.chunk)(metas)
  refs = references.behaviours(exp.setting.family, ep.hparams, ep.init_keys, ep.x, ep.y)
  errs.update({k: metrics.step_error(exp.setting.task, ep.behaviour, a)
               for k, a in refs.items()})
  keep = figures.usable_teachers(ep)
  label = registry.label(exp.config)
  errs = {label if k == "imitator" else k: np.asarray(e)[keep] for k, e in errs.items()}
  chance = np.asarray(chance)[keep]
  excluded = int(n - keep.sum())
  rows = [figures.row(name, "none", t, t, e, chance, excluded=excluded,
                      **figures.identification_fields(e, chance, t))
          for name, e in errs.items()]
  zeros = np.zeros_like(chance)
  rows.append(figures.row(ORACLE, "none", t, t, zeros, chance, excluded=excluded,
                          **figures.identification_fields(zeros, chance, t)))
  return report_json.write_report(
      workdir, t, rows, comparisons=figures.comparisons(label, errs, chance, "none", t, [t]))


def evaluate(exp, workdir: str, shift_names, stream_npz: str | None = None,
             with_forgetting: bool = True, sweeps=None,
             multiples=HORIZON_MULTIPLES, observes=(), ensembles=()) -> dict:
  """The battery (and the strength sweeps {shift: strengths}) at `multiples` x T_train
  on the best checkpoint of `workdir`, teacher-forced and alone after each of
  `observes` (steps): report.json rows, report.md and plots under workdir/eval.
  `ensembles` (workdirs of the same config but its seed) adds rows `ensemble/K` for K =
  2, 4, 8, ... up to 1 + len(ensembles): the best checkpoints of workdir and the first
  K - 1 of them, pooled (`kinds.ensemble`)."""
  meta = restore_meta(exp, workdir)
  ran = battery.run_battery(exp, meta, shift_names, stream_npz, sweeps, multiples,
                            observes, extra=ensemble_imitators(exp, meta, ensembles))
  rows, skipped = ran["results"], ran["skipped"]
  forget = None
  if with_forgetting:
    try:
      forget = forgetting.forgetting(exp, meta)
      rows = rows + forget["rows"]
    except shifts.NotApplicable as e:
      skipped = skipped + [{"shift": "forgetting", "strength": None, "reason": str(e)}]
  t = exp.setting.t
  report = report_json.write_report(workdir, t, rows, skipped, ran["comparisons"])
  if not parallel.is_primary():
    return report
  try:
    _plots(exp, workdir, ran, report, forget)
  except signals.Interrupted as e:
    e.phase = "plots"  # the rows are in report.json already
    raise
  return report


def _plots(exp, workdir, ran, report, forget):
  t = exp.setting.t
  eval_dir = os.path.join(workdir, "eval")
  if ran["curves"]:
    render.plot_nie(ran["curves"], t, os.path.join(eval_dir, "nie.png"),
                    metrics.IDENTIFIED_NIE, ran["cuts"])
  for shift in sorted({r["shift"] for r in report["results"] if r.get("strength") is not None}):
    render.plot_sweep(report, shift, battery.DEFAULT_SWEEPS[shift].log_x,
                      os.path.join(eval_dir, f"sweep_{shift}.png"), metrics.IDENTIFIED_NIE)
  if any(r["imitator"].startswith("ensemble/") for r in report["results"]):
    render.plot_ensemble(report, registry.label(exp.config),
                         os.path.join(eval_dir, "ensemble.png"))
  if forget is not None:
    render.plot_forgetting(forget, t, os.path.join(eval_dir, "forgetting.png"))
    with open(os.path.join(eval_dir, "forgetting.json"), "w") as f:
      json.dump({k: v for k, v in forget.items() if k != "rows"}, f)
