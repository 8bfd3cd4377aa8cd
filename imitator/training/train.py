"""The outer imitation loop: `train_and_evaluate(config, workdir)`.

Runs `outer_step` from the restored (or initial) train state of an
`experiment.Experiment` to `config.train.steps`: logs means of the step metrics every
`log_every` steps and the validation NIE every `eval_every` (metrics.jsonl), checkpoints,
rolls back after a streak of non-finite steps, and stops cleanly on SIGTERM/SIGINT. The
best validation NIE is kept as the `best/` checkpoint, which is evaluated on held-out
teachers at the end (`eval/report.json`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from imitator import metrics
from imitator.evaluation import evaluate
from imitator.kinds import registry
from imitator.runtime import checkpoint, parallel, signals
from imitator.runtime import workdir as workdir_lib
from imitator.training import experiment, outer_step


def train_and_evaluate(config, workdir: str, stop_at_step: int | None = None,
                       command: str | None = None,
                       allow_config_change: bool = False) -> dict:
  """Meta-trains the configured imitator and baselines; returns the final report.

  `stop_at_step` stops early as a preemption would (checkpoint, no evaluation; status
  'preempted', its message saying how to go on); the same call without it resumes to
  `config.train.steps`. A signal (`signals.received()`) in the loop does the same. Status 'diverged' means the
  non-finite guard gave up (the message says what to change); 'complete' means the run
  had already finished and been evaluated: nothing is written, its report is returned.
  `command`, the command line that started the run, is kept in workdir/command.txt (the
  first one: a resumed run keeps it).

  The workdir is locked while this runs (another process on it is a ValueError naming
  its pid). A restart resumes from the newest readable checkpoint; its config may differ
  from the run's config.json only in workdir.RESUMABLE fields unless
  `allow_config_change`. A run whose checkpoints are gone is refused, not restarted."""
  exp = experiment.Experiment(config)  # validates everything before the workdir is touched
  tcfg = config.train
  with _locked(workdir, command), _restore(exp, workdir, allow_config_change) as run:
    if _is_complete(exp, run):
      return _complete(exp, workdir, run)
    ts = _start(exp, workdir, command, run)
    log = _MetricsLog(exp, workdir, int(ts.step), run.records)
    steps, status, message = outer_step.Curriculum(exp), "finished", ""
    signals.check()  # a signal whose exception foreign code swallowed
    with signals.polled():  # from here a signal stops the loop after a checkpoint
      step = int(ts.step)
      while step < tcfg.steps:
        horizon, free = steps.episode(step)
        ts, step = steps.step_fn(horizon, free)(ts), step + 1
        # A signal reaches one process: all of them stop after the same step, agreed
        # when the loop syncs with the host anyway.
        asked = parallel.agreed_flag(signals.received() is not None, step,
                                     tcfg.nonfinite_patience)
        last, stopping = step == tcfg.steps, asked or step == stop_at_step
        if _nonfinite_streak(ts, step, tcfg):
          if int(ts.rollbacks) >= tcfg.max_rollbacks:
            status, message = "diverged", _give_up(exp, run.ckpt, ts, step)
            break
          ts = _rollback(exp, run.ckpt, ts, step)
          step = int(ts.step)
          log.rewind(step)
          continue
        record, val_nie = None, None
        if step % tcfg.log_every == 0 or last:
          ts, record, val_nie = log.write(ts, step, horizon, last)
        if val_nie is not None or step % tcfg.checkpoint_every == 0 or last or stopping:
          run.ckpt.save(step, ts, record, val_nie)
        if stopping:
          status, message = _stopped(step, workdir, "resume")
          break
      run.ckpt.wait()  # a signal while the last checkpoint is written stops after it
      run.ckpt.close()
      if status == "finished" and parallel.any_process(signals.received() is not None):
        status, message = _stopped(step, workdir, "evaluate")
    log.close()
    if status != "finished":
      return {"status": status, "step": step, "message": message}
    return _evaluate(exp, workdir, step, log.started)


def _locked(workdir, command):
  """Creates the workdir; the lock the primary process holds on it while the run lasts
  (none on a remote filesystem, '://')."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ValueError(f"cannot create workdir {workdir!r} ({e.strerror}); give a --workdir "
                     "this user can write to.") from None
  return (workdir_lib.lock(workdir, command or "imitator.training.train.train_and_evaluate")
          if parallel.is_primary() and "://" not in workdir else contextlib.nullcontext())


def _config_dict(config) -> dict:
  return json.loads(config.to_json_best_effort())


class _Checkpoints:
  """The run's checkpoint.Checkpoints; each save's info carries what a restart needs
  (the config, the step's record, the best validation NIE so far)."""

  def __init__(self, exp, workdir):
    self.best_nie = float("inf")
    self._config = _config_dict(exp.config)
    self._abstract = exp.abstract_state()
    self.saved = checkpoint.Checkpoints(workdir, keep=exp.config.train.keep_checkpoints)

  def restore(self):
    """(state, info) of the newest readable checkpoint; (None, None) when there is none."""
    return self.saved.restore(self._abstract, config=self._config)

  def save(self, step, ts, record=None, val_nie=None):
    if val_nie is not None:
      self.best_nie = min(self.best_nie, val_nie)
    info = {"step": step, "metrics": record, "config": self._config,
            "best_val_nie": self.best_nie if math.isfinite(self.best_nie) else None}
    self.saved.save(step, ts, info, val_nie=val_nie)

  def wait(self):
    self.saved.wait()

  def close(self):
    self.saved.close()


class _Run(NamedTuple):
  """Where a run starts: its checkpoints and state, and what the workdir holds."""
  ckpt: _Checkpoints
  ts: outer_step.TrainState  # the restored state, or the initial one
  restored: bool
  records: list  # metrics.jsonl's (the primary process reads it; others: [])
  report: dict | None  # eval/report.json
  config_text: str  # config.json's new text
  why: str | None  # why to write it: see _checked_config


@contextlib.contextmanager
def _restore(exp, workdir, allow_change):
  """The run from its newest readable checkpoint (or from step 0 when it has none), its
  checkpoints closed on leaving. A workdir that holds a run but no checkpoint is refused,
  and so is a config that differs from the run's in more than RESUMABLE fields."""
  had_checkpoints = os.path.isdir(os.path.join(workdir, "checkpoints"))
  records = (workdir_lib.read_metrics(workdir_lib.metrics_path(workdir))
             if parallel.is_primary() else [])
  report = workdir_lib.read_report(workdir)
  ckpt = _Checkpoints(exp, workdir)
  try:
    restored, info = ckpt.restore()
    if restored is None:
      best_steps = ckpt.saved.steps(best=True)
      if (records and not had_checkpoints) or best_steps:
        raise ValueError(_no_checkpoint_message(workdir, records, best_steps))
    config_text, why = _checked_config(exp, workdir, restored, info, allow_change)
    if restored is None:
      ts = _initial_state(exp)
    else:
      ts = restored
      ckpt.best_nie = info.get("best_val_nie") or ckpt.best_nie
    yield _Run(ckpt, ts, restored is not None, records, report, config_text, why)
  finally:
    ckpt.close()  # also on an interrupt before or after the loop: no save left running


def _initial_state(exp) -> outer_step.TrainState:
  """The state a new run starts from: the initial one, or with the best meta-params of
  train.finetune.source (fresh optimizer states) when fine-tuning."""
  ts = exp.init_state()
  source = exp.config.train.finetune.source
  if not source:
    return ts
  try:
    meta = evaluate.restore_meta(exp, source)
  except (FileNotFoundError, ValueError) as e:
    raise ValueError(f"train.finetune.source={source!r}: {e}; give the workdir of a "
                     "trained run of this config.") from None
  return ts._replace(meta=meta, opt_state={n: exp.tx.init(m) for n, m in meta.items()})


def _no_checkpoint_message(workdir, records, best_steps) -> str:
  found = (f"{workdir_lib.metrics_path(workdir)} holds a run up to step "
           f"{max(r['step'] for r in records)}" if records else
           f"{os.path.join(workdir, 'best')} holds step(s) {best_steps}")
  return (f"{found} but {os.path.join(workdir, 'checkpoints')} has no checkpoint to resume "
          "from (deleted?); restore checkpoints/ from a backup, or train into a fresh "
          "--workdir (starting this one again from step 0 needs its files moved away).")


def _checked_config(exp, workdir, restored, info, allow_change) -> tuple[str, str | None]:
  """config.json's new text and why to write it (None: it holds that text already;
  'recover': it is missing or damaged; 'changed': --allow_config_change; 'update': a
  resumable field or a new run), after comparing the config with the run's (config.json,
  or the checkpoint's when config.json is missing or damaged)."""
  config = exp.config
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  path = workdir_lib.config_path(workdir)
  try:
    saved = workdir_lib.read_saved_config(workdir)
  except ValueError as e:
    if restored is None:
      logging.warning("%s; overwriting it (there is no checkpoint)", str(e).split(";")[0])
      return text, "recover"
    logging.warning("%s; rewriting it from checkpoint step %d", str(e).split(";")[0],
                    int(info["step"]))
    saved, why = workdir_lib.upgrade(info.get("config")), "recover"
  else:
    why = "update"
    if saved is None and restored is not None:
      logging.warning("%s is missing; rewriting it from checkpoint step %d", path,
                      int(info["step"]))
      saved, why = workdir_lib.upgrade(info.get("config")), "recover"
  # Without a checkpoint the run starts again from step 0: nothing of it is mixed in.
  changes = (workdir_lib.config_changes(saved, _config_dict(config))
             if restored is not None else [])
  if changes and not allow_change:
    raise ValueError(
        f"this config differs from the run's ({path}) in {'; '.join(changes)}; a restart "
        f"may change only {', '.join(workdir_lib.RESUMABLE)}. Use the run's config (its "
        "config.json / command.txt), a fresh --workdir, or --allow_config_change to "
        "continue this run with the new values.")
  if changes:
    logging.warning("config changed on restart (--allow_config_change): %s",
                    "; ".join(changes))
    return text, "changed"
  if why == "update" and os.path.exists(path):
    with open(path, errors="replace") as f:
      if f.read() == text:
        return text, None
  return text, why


def _write_config(workdir, text, why, step):
  path = workdir_lib.config_path(workdir)
  if why == "changed" and os.path.exists(path):
    kept = os.path.join(workdir, f"config.before-step{step}.json")
    os.replace(path, kept)
    logging.warning("the run's previous config is kept in %s", kept)
  workdir_lib.write_atomically(path, text)


def _is_complete(exp, run) -> bool:
  """Trained to train.steps and evaluated (its report has the training-horizon rows)."""
  return run.restored and int(run.ts.step) >= exp.config.train.steps and any(
      r["imitator"] == registry.label(exp.config)
      for r in workdir_lib.training_rows(run.report, exp.setting.t))


def _complete(exp, workdir, run) -> dict:
  """The result of a complete run; only a damaged config.json is written again."""
  step = int(run.ts.step)
  if parallel.is_primary() and run.why == "recover":
    _write_config(workdir, run.config_text, run.why, step)
  logging.info("the run in %s is complete (step %d); its report is %s", workdir, step,
               workdir_lib.report_path(workdir))
  return {"status": "complete", "step": step, "report": run.report,
          "t_train": exp.setting.t}


def _start(exp, workdir, command, run) -> outer_step.TrainState:
  """Writes config.json and command.txt as needed; the run's state placed on the mesh."""
  if run.restored:
    logging.info("resumed from step %d in %s", int(run.ts.step), workdir)
  if parallel.is_primary():
    if run.why is not None:
      _write_config(workdir, run.config_text, run.why, int(run.ts.step))
    command_path = os.path.join(workdir, "command.txt")
    if command and not os.path.exists(command_path):
      with open(command_path, "w") as f:
        f.write(command + "\n")
  return exp.place(run.ts)


class _MetricsLog:
  """The records of log steps (means of the step metrics since the previous one, and the
  validation NIE on evaluation steps): metrics.jsonl (written by the primary process),
  tensorboard (train.tensorboard) and a progress line."""

  def __init__(self, exp, workdir, step, records):
    self._exp = exp
    self._tcfg = exp.config.train
    self._path = workdir_lib.metrics_path(workdir) if parallel.is_primary() else None
    self.rewind(step, records)
    self._writer = None
    if self._tcfg.tensorboard and self._path is not None:
      import tensorboardX  # pylint: disable=import-outside-toplevel
      self._writer = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))
    self._validate = exp.validation_fn()
    # With free-running episodes the best checkpoint is chosen by the mean of the
    # teacher-forced and the alone validation NIE.
    self._validate_alone = (exp.validation_fn(alone=True)
                            if exp.config.train.free_running.fraction else None)
    self.started = self._t_last = time.time()
    self._s_last = step

  def rewind(self, step, records=None):
    """metrics.jsonl as it was at `step`, where the run (re)starts; `records`: its
    records when already read."""
    if self._path is not None:
      workdir_lib.rewrite_metrics(self._path, step, records)

  def write(self, ts, step, horizon, last):
    """(ts with its metric sums cleared, the record, the imitator's validation NIE or
    None when this is not an evaluation step), after writing the record."""
    record, val_nie = self._record(ts, step, horizon, last)
    if self._path is not None:
      with open(self._path, "a") as f:
        f.write(json.dumps(record) + "\n")
    if self._writer is not None:
      for k, v in record.items():
        if k != "step":
          self._writer.add_scalar(k, v, step)
      self._writer.flush()
    now = time.time()
    rate = (step - self._s_last) / max(now - self._t_last, 1e-9)
    self._t_last, self._s_last = now, step
    logging.info(
        "step %d/%d | %s | %.2f steps/s | %s left", step, self._tcfg.steps,
        " ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "step"), rate,
        _duration((self._tcfg.steps - step) / max(rate, 1e-9)))
    ts = self._exp.place(ts._replace(sums=jax.tree.map(jnp.zeros_like, ts.sums),
                                     count=jnp.zeros_like(ts.count)))
    return ts, record, val_nie

  def _record(self, ts, step, horizon, last):
    sums, count = jax.device_get((ts.sums, ts.count))
    record = {"step": step, "horizon": horizon}
    record.update({k: float(v) / max(int(count), 1) for k, v in sums.items()})
    record["nonfinite_steps"] = int(ts.bad_total)
    record.update({f"nonfinite_steps/{k}": int(v) for k, v in ts.bad.items()})
    if step % self._tcfg.eval_every and not last:
      return record, None
    errs, chance = self._validate(ts.meta)
    chance = np.asarray(chance)
    nie = {name: metrics.nie(np.asarray(e), chance) for name, e in errs.items()}
    record.update({f"val_nie/{k}": v for k, v in nie.items()})
    if self._validate_alone is None:
      return record, nie["imitator"]
    errs, chance = self._validate_alone(ts.meta)
    last = lambda v: np.asarray(v)[:, -self._exp.setting.t:]
    alone = {name: metrics.nie(last(e), last(chance)) for name, e in errs.items()}
    record.update({f"val_nie_alone/{k}": v for k, v in alone.items()})
    record["val_score/imitator"] = (nie["imitator"] + alone["imitator"]) / 2
    return record, record["val_score/imitator"]

  def close(self):
    if self._writer is not None:
      self._writer.close()


def _stopped(step, workdir, then) -> tuple[str, str]:
  """Status 'preempted' and what to do next ('resume' or 'evaluate'), said in the log."""
  message = (f"checkpoint written at step {step} in {workdir}; run the same command "
             f"again to {then}")
  logging.warning("stopped: %s", message)
  return "preempted", message


def _nonfinite_streak(ts, step, tcfg) -> bool:
  # Polled every `patience` steps: a streak of that length cannot go unseen, and the hot
  # loop syncs with the host only that often.
  return (step % tcfg.nonfinite_patience == 0 and
          int(ts.bad_streak) >= tcfg.nonfinite_patience)


def _rollback(exp, ckpt, ts, step) -> outer_step.TrainState:
  """The newest checkpoint (the initial state without one) with the meta step size
  lowered and the non-finite counts kept, after a non-finite streak ending at `step`."""
  tcfg = exp.config.train
  ckpt.wait()
  back, _ = ckpt.restore()
  back = exp.init_state() if back is None else back
  ts = exp.place(back._replace(
      lr_scale=ts.lr_scale * tcfg.rollback_lr_factor, rollbacks=ts.rollbacks + 1,
      bad_streak=jnp.zeros_like(ts.bad_streak), bad=ts.bad, bad_total=ts.bad_total))
  logging.warning("%d non-finite steps in a row at step %d: back to step %d with the "
                  "meta step size x%g", tcfg.nonfinite_patience, step, int(ts.step),
                  float(ts.lr_scale))
  return ts


def _give_up(exp, ckpt, ts, step) -> str:
  """Checkpoints a run whose non-finite streaks outlasted train.max_rollbacks; the
  message saying what to change."""
  tcfg = exp.config.train
  bad = [n for n in exp.imitators if int(ts.bad[n])]
  message = (
      f"stopped at step {step}: the imitation loss or meta-gradient of {bad} was not "
      f"finite for {tcfg.nonfinite_patience} steps in a row, even after "
      f"{int(ts.rollbacks)} rollback(s) to the last checkpoint with the meta step size "
      f"lowered to {float(ts.lr_scale):g} x train.learning_rate. What to change: a "
      f"lower --config.train.learning_rate (now {tcfg.learning_rate:g}), a tighter "
      f"--config.train.grad_clip (now {tcfg.grad_clip:g}), a truncation window "
      f"(--config.train.truncation, now {tcfg.truncation}), or teachers that stay "
      "finite on this stream (the family's learning-rate prior, --config.family.lr_scale).")
  logging.error(message)
  ckpt.save(step, ts)  # skipped steps never touch meta-params: all of it is finite
  return message


def _evaluate(exp, workdir, step, started) -> dict:
  """The finished run's result, with its best checkpoint evaluated (eval/report.json)."""
  logging.info("training took %s; evaluating the best checkpoint",
               _duration(time.time() - started))
  try:
    report = evaluate.final_report(exp, workdir)
  except signals.Interrupted as e:
    e.phase = "evaluation"
    raise
  return {"status": "finished", "step": step, "report": report, "t_train": exp.setting.t}


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 60}m{seconds % 60:02d}s"
