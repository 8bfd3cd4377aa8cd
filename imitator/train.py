"""The outer imitation loop: `train_and_evaluate(config, workdir)`.

Every outer step samples fresh teachers and streams inside one jitted function, rolls
the teachers out, unrolls the imitator and the baselines beside them (predict, then
observe), and updates all their meta-params with optax on the imitation loss. A step
whose loss or meta-gradient is not finite leaves the meta-params unchanged and is
counted. Metrics stay on device until a log step. Validation teachers come from a fixed
seed (`config.eval.seed`) disjoint from the training key stream; the best validation NIE
is kept as the `best/` checkpoint, which is evaluated on held-out teachers at the end
(`eval/report.json`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from imitator import checkpoint, config_schema, episodes, evaluate, kinds, metrics
from imitator import objective
from imitator import parallel
from imitator import workdir as workdir_lib


class TrainState(NamedTuple):
  step: jax.Array
  meta: Any  # {'imitator' | 'frozen' | 'context_only': meta-params}
  opt_state: Any
  key: jax.Array  # root key data (uint32)
  lr_scale: jax.Array  # multiplies every update; lowered after non-finite streaks
  bad_streak: jax.Array  # consecutive steps where some imitator's update was skipped
  bad_total: jax.Array
  bad: Any  # {imitator: steps whose update was skipped}
  rollbacks: jax.Array  # times the run went back to a checkpoint after a streak
  sums: Any  # metrics summed since the last log step
  count: jax.Array


def optimizer(train_cfg) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train_cfg.learning_rate,
      warmup_steps=min(train_cfg.warmup_steps, max(train_cfg.steps - 1, 1)),
      decay_steps=max(train_cfg.steps, 2), end_value=train_cfg.learning_rate * 0.1)
  return optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip),
                     optax.adam(schedule))


def curriculum(train_cfg, horizon: int) -> list[tuple[int, int]]:
  """[(horizon, until_step)] from 'H1@S1,H2@S2' (then the full horizon to the end)."""
  stages = []
  for part in filter(None, (p.strip() for p in train_cfg.curriculum.split(","))):
    try:
      h, s = (int(v) for v in part.split("@"))
    except ValueError:
      raise ValueError(f"train.curriculum part {part!r} must be HORIZON@UNTIL_STEP, "
                       "e.g. '32@200,64@400'.") from None
    if not 0 < h <= horizon:
      raise ValueError(f"train.curriculum horizon {h} must be in 1..{horizon}.")
    stages.append((h, s))
  return stages + [(horizon, train_cfg.steps)]


class Experiment:
  """Everything static a run needs, built from the config."""

  def __init__(self, config):
    config_schema.validate(config)
    self.config = config
    self.setting, self.data = episodes.setting_from_config(config)
    self.imitators = kinds.build(config, self.setting)
    self.tx = optimizer(config.train)
    self.mesh = parallel.data_mesh()
    n = config.train.teachers
    if n % self.mesh.size:
      raise ValueError(f"train.teachers={n} must be a multiple of the {self.mesh.size} "
                       "devices the teachers are sharded over.")

  def init_state(self) -> TrainState:
    key = jax.random.key(self.config.seed)
    meta = {name: im.init_meta(jax.random.fold_in(jax.random.fold_in(key, 1), i))
            for i, (name, im) in enumerate(self.imitators.items())}
    zeros = {k: jnp.zeros((), jnp.float32) for k in self.metric_names()}
    return TrainState(
        step=jnp.zeros((), jnp.int32), meta=meta,
        opt_state={name: self.tx.init(m) for name, m in meta.items()},
        key=jax.random.key_data(key), lr_scale=jnp.ones((), jnp.float32),
        bad_streak=jnp.zeros((), jnp.int32), bad_total=jnp.zeros((), jnp.int32),
        bad={name: jnp.zeros((), jnp.int32) for name in self.imitators},
        rollbacks=jnp.zeros((), jnp.int32),
        sums=zeros, count=jnp.zeros((), jnp.int32))

  def abstract_state(self):
    """Shapes, dtypes and (replicated) shardings of the train state: what restoring a
    checkpoint needs, without holding arrays a donated step could delete."""
    replicated = NamedSharding(self.mesh, PartitionSpec())
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                        jax.eval_shape(self.init_state))

  def metric_names(self):
    return [f"{m}/{n}" for m in ("loss", "grad_norm") for n in self.imitators]

  def train_step_fn(self, horizon: int):
    """The jitted outer step at a curriculum horizon."""
    setting = self.setting.with_horizon(horizon)
    window = min(self.config.train.truncation or horizon, horizon)
    n = self.config.train.teachers
    sharding = NamedSharding(self.mesh, PartitionSpec("data"))

    def step(ts: TrainState):
      # A rollback replays its steps on other teachers: they may be what broke.
      key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(ts.key),
                                                  ts.step), ts.rollbacks)
      k_ep, k_im = jax.random.split(key)
      im_keys = jax.lax.with_sharding_constraint(jax.random.split(k_im, n), sharding)
      if window < horizon:  # truncated: the teachers' data is made window by window too
        place = lambda a: jax.lax.with_sharding_constraint(a, sharding)
        out = objective.streamed_loss_and_grads(self.imitators, ts.meta, setting,
                                                self.data, k_ep, im_keys, n, window, place)
      else:
        ep = episodes.sample(setting, self.data, k_ep, n, sharding=sharding)
        out = {name: objective.loss_and_grads(im, ts.meta[name], im_keys, ep.x, ep.y,
                                              ep.behaviour, window)
               for name, im in self.imitators.items()}
      losses = {name: loss for name, (loss, _) in out.items()}
      grads = {name: g for name, (_, g) in out.items()}
      # Each imitator has its own optimizer and guard: a non-finite loss or gradient
      # leaves that imitator's meta-params and optimizer state as they were.
      meta, opt_state, values, oks, bad = {}, {}, {}, [], {}
      for name in self.imitators:
        norm = optax.tree.norm(grads[name])
        ok = jnp.isfinite(losses[name]) & jnp.isfinite(norm)
        g = jax.tree.map(lambda g: jnp.where(ok, g, 0.0), grads[name])
        updates, new_opt = self.tx.update(g, ts.opt_state[name], ts.meta[name])
        new_meta = optax.apply_updates(
            ts.meta[name], jax.tree.map(lambda u: ts.lr_scale * u, updates))
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        meta[name] = keep(new_meta, ts.meta[name])
        opt_state[name] = keep(new_opt, ts.opt_state[name])
        values[f"loss/{name}"] = jnp.where(ok, losses[name], 0.0)
        values[f"grad_norm/{name}"] = jnp.where(ok, norm, 0.0)
        oks.append(ok)
        bad[name] = ts.bad[name] + (~ok).astype(jnp.int32)
      ok = jnp.all(jnp.stack(oks))
      return ts._replace(
          step=ts.step + 1, meta=meta, opt_state=opt_state,
          bad_streak=jnp.where(ok, 0, ts.bad_streak + 1),
          bad_total=ts.bad_total + (~ok).astype(jnp.int32), bad=bad,
          sums={k: ts.sums[k] + values[k] for k in ts.sums},
          count=ts.count + 1)

    replicated = NamedSharding(self.mesh, PartitionSpec())
    return jax.jit(step, out_shardings=replicated, donate_argnums=0)

  def place(self, ts: TrainState) -> TrainState:
    """The train state replicated over the mesh, as the step returns it (so the step is
    traced once, not again on its second call)."""
    return jax.device_put(ts, NamedSharding(self.mesh, PartitionSpec()))

  def validation_fn(self):
    """Jitted: meta -> ({name: err [P, T]}, chance [P, T]) on the fixed validation set."""
    cfg = self.config.eval
    key = jax.random.fold_in(jax.random.key(cfg.seed), 1)
    val = jax.jit(lambda k: episodes.sample(self.setting, self.data, k, cfg.val_teachers,
                                            chance=True))(key)
    return evaluate.errors_fn(self.imitators, self.setting, val, cfg.window)


def _log_record(ts, step, horizon, tcfg, last, validate):
  """The metrics.jsonl record of a log step (means since the previous one), and the
  validation NIE of the imitator when this is an evaluation step."""
  sums, count = jax.device_get((ts.sums, ts.count))
  record = {"step": step, "horizon": horizon}
  record.update({k: float(v) / max(int(count), 1) for k, v in sums.items()})
  record["nonfinite_steps"] = int(ts.bad_total)
  record.update({f"nonfinite_steps/{k}": int(v) for k, v in ts.bad.items()})
  if step % tcfg.eval_every and not last:
    return record, None
  nie = _nie_by_name(*validate(ts.meta))
  record.update({f"val_nie/{k}": v for k, v in nie.items()})
  return record, nie["imitator"]


def _nie_by_name(errs, chance) -> dict:
  chance = np.asarray(chance)
  return {name: metrics.nie(np.asarray(e), chance) for name, e in errs.items()}


class _Preemption:
  """Turns SIGTERM/SIGINT into a flag the loop polls (no work inside the handler)."""

  def __init__(self):
    self.requested = False
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def __exit__(self, *exc):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)


def _config_dict(config) -> dict:
  return json.loads(config.to_json_best_effort())


def _nonfinite_message(exp, ts, step) -> str:
  tcfg = exp.config.train
  bad = [n for n in exp.imitators if int(ts.bad[n])]
  return (f"stopped at step {step}: the imitation loss or meta-gradient of {bad} was not "
          f"finite for {tcfg.nonfinite_patience} steps in a row, even after "
          f"{int(ts.rollbacks)} rollback(s) to the last checkpoint with the meta step size "
          f"lowered to {float(ts.lr_scale):g} x train.learning_rate. What to change: a "
          f"lower --config.train.learning_rate (now {tcfg.learning_rate:g}), a tighter "
          f"--config.train.grad_clip (now {tcfg.grad_clip:g}), a truncation window "
          f"(--config.train.truncation, now {tcfg.truncation}), or teachers that stay "
          "finite on this stream (the family's learning-rate prior, --config.family.lr_scale).")


def train_and_evaluate(config, workdir: str, stop_at_step: int | None = None,
                       command: str | None = None,
                       allow_config_change: bool = False) -> dict:
  """Meta-trains the configured imitator and baselines; returns the final report.

  `stop_at_step` stops early as a preemption would (checkpoint, no evaluation); the
  same call without it resumes to `config.train.steps`. Status 'diverged' means the
  non-finite guard gave up (the message says what to change); 'complete' means the run
  had already finished and been evaluated: nothing is written, its report is returned.
  `command`, the command line that started the run, is kept in workdir/command.txt (the
  first one: a resumed run keeps it).

  The workdir is locked while this runs (another process on it is a ValueError naming
  its pid). A restart resumes from the newest readable checkpoint; its config may differ
  from the run's config.json only in workdir.RESUMABLE fields unless
  `allow_config_change`. A run whose checkpoints are gone is refused, not restarted."""
  exp = Experiment(config)  # validates everything before the workdir is touched
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ValueError(f"cannot create workdir {workdir!r} ({e.strerror}); give a --workdir "
                     "this user can write to.") from None
  held = (workdir_lib.lock(workdir, command or "imitator.train.train_and_evaluate")
          if parallel.is_primary() and "://" not in workdir else contextlib.nullcontext())
  with held:
    return _train_and_evaluate(exp, workdir, stop_at_step, command, allow_config_change)


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
    saved, why = info.get("config"), "recover"
  else:
    why = "update"
    if saved is None and restored is not None:
      logging.warning("%s is missing; rewriting it from checkpoint step %d", path,
                      int(info["step"]))
      saved, why = info.get("config"), "recover"
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


def _train_and_evaluate(exp, workdir, stop_at_step, command, allow_config_change):
  config = exp.config
  tcfg = config.train
  primary = parallel.is_primary()
  metrics_path = workdir_lib.metrics_path(workdir)
  had_checkpoints = os.path.isdir(os.path.join(workdir, "checkpoints"))
  records = workdir_lib.read_metrics(metrics_path) if primary else []
  report = workdir_lib.read_report(workdir)
  ckpt = checkpoint.Checkpoints(workdir, keep=tcfg.keep_checkpoints)
  try:
    abstract = exp.abstract_state()
    restored, info = ckpt.restore(abstract, config=_config_dict(config))
    if restored is None:
      best_steps = ckpt.steps(best=True)
      if (records and not had_checkpoints) or best_steps:
        raise ValueError(_no_checkpoint_message(workdir, records, best_steps))
    config_text, why = _checked_config(exp, workdir, restored, info, allow_config_change)
  except BaseException:
    ckpt.close()
    raise
  best_nie = float("inf")
  ts = exp.init_state()
  if restored is not None:
    ts = restored
    best_nie = info.get("best_val_nie") or best_nie
    t = exp.setting.t
    done = int(ts.step) >= tcfg.steps and any(
        r["imitator"] == kinds.label(config) for r in workdir_lib.training_rows(report, t))
    if done:
      ckpt.close()
      if primary and why == "recover":
        _write_config(workdir, config_text, why, int(ts.step))
      logging.info("the run in %s is complete (step %d); its report is %s", workdir,
                   int(ts.step), workdir_lib.report_path(workdir))
      return {"status": "complete", "step": int(ts.step), "report": report, "t_train": t}
    logging.info("resumed from step %d in %s", int(ts.step), workdir)
  try:
    return _train(exp, workdir, stop_at_step, command, ckpt, abstract, ts, best_nie,
                  records, config_text, why)
  finally:
    ckpt.close()  # also on an interrupt before or after the loop: no save left running


def _train(exp, workdir, stop_at_step, command, ckpt, abstract, ts, best_nie, records,
           config_text, why):
  config = exp.config
  tcfg = config.train
  primary = parallel.is_primary()
  metrics_path = workdir_lib.metrics_path(workdir)
  if primary:
    if why is not None:
      _write_config(workdir, config_text, why, int(ts.step))
    command_path = os.path.join(workdir, "command.txt")
    if command and not os.path.exists(command_path):
      with open(command_path, "w") as f:
        f.write(command + "\n")
  ts = exp.place(ts)
  if primary:
    workdir_lib.rewrite_metrics(metrics_path, int(ts.step), records)

  writer = None
  if tcfg.tensorboard and primary:
    import tensorboardX  # pylint: disable=import-outside-toplevel
    writer = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))
  validate = exp.validation_fn()
  stages = curriculum(tcfg, exp.setting.t)
  step_fns = {}
  started, t_last, s_last = time.time(), time.time(), int(ts.step)
  status, message = "finished", ""

  def save(step, ts, record=None, val_nie=None):
    info = {"step": step, "metrics": record, "config": _config_dict(config),
            "best_val_nie": best_nie if math.isfinite(best_nie) else None}
    ckpt.save(step, ts, info, val_nie=val_nie)

  with _Preemption() as preempt:
    step = int(ts.step)
    while step < tcfg.steps:
      horizon = next(h for h, until in stages if step < until)
      if horizon not in step_fns:
        step_fns[horizon] = exp.train_step_fn(horizon)
      ts = step_fns[horizon](ts)
      step += 1
      last = step == tcfg.steps
      stopping = preempt.requested or step == stop_at_step
      # Polled every `patience` steps: a streak of that length cannot go unseen, and the
      # hot loop syncs with the host only that often.
      if step % tcfg.nonfinite_patience == 0 and int(ts.bad_streak) >= tcfg.nonfinite_patience:
        if int(ts.rollbacks) >= tcfg.max_rollbacks:
          status, message = "diverged", _nonfinite_message(exp, ts, step)
          logging.error(message)
          save(step, ts)  # skipped steps never touch meta-params: all of it is finite
          break
        ckpt.wait()
        back, _ = ckpt.restore(abstract, config=_config_dict(config))
        back = exp.init_state() if back is None else back
        ts = exp.place(back._replace(
            lr_scale=ts.lr_scale * tcfg.rollback_lr_factor, rollbacks=ts.rollbacks + 1,
            bad_streak=jnp.zeros_like(ts.bad_streak), bad=ts.bad, bad_total=ts.bad_total))
        logging.warning("%d non-finite steps in a row at step %d: back to step %d with the "
                        "meta step size x%g", tcfg.nonfinite_patience, step, int(ts.step),
                        float(ts.lr_scale))
        step = int(ts.step)
        if primary:
          workdir_lib.rewrite_metrics(metrics_path, step)
        continue
      record, val_nie = None, None
      if step % tcfg.log_every == 0 or last:
        record, val_nie = _log_record(ts, step, horizon, tcfg, last, validate)
        if val_nie is not None:
          best_nie = min(best_nie, val_nie)
        if primary:
          with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if writer is not None:
          for k, v in record.items():
            if k != "step":
              writer.add_scalar(k, v, step)
          writer.flush()
        now = time.time()
        rate = (step - s_last) / max(now - t_last, 1e-9)
        t_last, s_last = now, step
        logging.info(
            "step %d/%d | %s | %.2f steps/s | %s left", step, tcfg.steps,
            " ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "step"), rate,
            _duration((tcfg.steps - step) / max(rate, 1e-9)))
        ts = exp.place(ts._replace(sums=jax.tree.map(jnp.zeros_like, ts.sums),
                                   count=jnp.zeros_like(ts.count)))
      if val_nie is not None or step % tcfg.checkpoint_every == 0 or last or stopping:
        save(step, ts, record, val_nie)
      if stopping:
        status = "preempted"
        logging.warning("stopped: checkpoint written at step %d in %s; run the same "
                        "command again to resume", step, workdir)
        break
    ckpt.wait()  # a signal while the last checkpoint is written stops after it
    ckpt.close()
    if preempt.requested and status == "finished":
      status = "preempted"
      logging.warning("stopped: checkpoint written at step %d in %s; run the same "
                      "command again to evaluate", step, workdir)
  if writer is not None:
    writer.close()
  if status != "finished":
    return {"status": status, "step": step, "message": message}
  logging.info("training took %s; evaluating the best checkpoint", _duration(
      time.time() - started))
  try:
    report = evaluate.final_report(exp, workdir)
  except checkpoint.Interrupted as e:
    e.phase = "evaluation"
    raise
  return {"status": status, "step": step, "report": report, "t_train": exp.setting.t}


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 60}m{seconds % 60:02d}s"
