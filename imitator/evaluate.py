"""Evaluation beside held-out teachers: the battery of horizons and shifts, the
forgetting experiment, report.json / report.md / plots.

Held-out teachers come from `config.eval.seed` (folded with 2; validation uses 1), never
from the training key stream. Every imitator of a checkpoint (the trained kind and the
baselines) runs on the same teachers and streams; `oracle` is the teacher itself.
The report schema is documented in README ("Report schema").
"""

from __future__ import annotations

import copy
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from imitator import checkpoint, episodes, kinds, metrics, objective, parallel
from learners import family as family_lib
from learners import rollout, shifts, streams

ORACLE = "oracle"
HORIZON_MULTIPLES = (1, 2, 4, 8, 16)
DIVERGENCE_EPS = (0.1, 0.25)
BATTERY = ("none",) + tuple(shifts.SHIFTS)


# --------------------------------------------------------------------------- unrolls


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


def imitate(im, meta, keys, xs, ys, as_, chunk: int, probes=None):
  """Runs an imitator over [P, T, ...] streams `chunk` steps at a time (memory for one
  chunk). Returns a_hat [P, T, B, out], the imitator's estimate of the hyperparams at
  each chunk end ({field: [P, T // chunk]}, system_id only, else None), and its
  predictions on per-teacher `probes` [P, n, ...] before each chunk ([P, T // chunk, n,
  out], or None)."""
  horizon = xs.shape[1]

  def extras(state, probe_x):
    est = im.estimate(meta, state) if hasattr(im, "estimate") else None
    probe = None if probe_x is None else im.predict(meta, state, probe_x)
    return est, probe

  def one(key, x, y, a, probe_x):
    def body(state, w):
      _, probe = extras(state, probe_x)
      state, a_hat = im.unroll(meta, state, *w)
      return state, (a_hat, extras(state, None)[0], probe)

    # The first chunk starts from `init`, which lets models skip empty memory.
    state = im.init(meta, key)
    _, probe0 = extras(state, probe_x)
    state, a0 = im.unroll(meta, state, x[:chunk], y[:chunk], a[:chunk], fresh=True)
    est0, _ = extras(state, None)
    chunks = lambda v: v[chunk:].reshape((horizon // chunk - 1, chunk) + v.shape[1:])
    _, (a_rest, est_rest, probe_rest) = jax.lax.scan(body, state,
                                                     jax.tree.map(chunks, (x, y, a)))
    cat = lambda first, more: None if first is None else jax.tree.map(
        lambda f, m: jnp.concatenate([f[None], m]), first, more)
    a_hat = jnp.concatenate([a0, a_rest.reshape((-1,) + a0.shape[1:])])
    return a_hat, cat(est0, est_rest), cat(probe0, probe_rest)

  return jax.vmap(one)(keys, xs, ys, as_, probes)


# --------------------------------------------------------------------------- rows


def row(name: str, shift: str, horizon: int, t_train: int, err, chance, **extra) -> dict:
  """One report row: NIE over the last t_train steps before `horizon`, CI over teachers."""
  nie, ci = metrics.nie_with_ci(err, chance, metrics.window(horizon, t_train))
  return {"imitator": name, "shift": shift, "horizon": horizon, "nie": nie,
          "nie_ci": list(ci), "n_teachers": int(np.asarray(err).shape[0]), **extra}


def _divergence(err, chance, t_train):
  out = {}
  for eps in DIVERGENCE_EPS:
    step, multiple = metrics.horizon_to_divergence(err, chance, eps, t_train, t_train)
    out[str(eps)] = {"step": step, "t_train_multiple": multiple}
  return out


def shift_rows(task, names, shift, t_train, horizons, ep, outputs, family) -> list:
  """Rows of one shift: every imitator (and the oracle) at every horizon."""
  chance = np.asarray(metrics.step_error(task, ep.behaviour, ep.chance))
  teacher_loss = np.asarray(ep.loss)
  rows = []
  for name, (a_hat, est, _) in outputs.items():
    err = np.asarray(metrics.step_error(task, ep.behaviour, a_hat))
    own_loss = np.asarray(metrics.task_loss(task, a_hat, ep.y))
    agree = (np.asarray(metrics.argmax_agreement(ep.behaviour, a_hat))
             if task == "classification" else None)
    divergence = _divergence(err, chance, t_train)
    for h in horizons:
      steps = metrics.window(h, t_train)
      gap, gap_ci = metrics.task_gap(teacher_loss, own_loss, steps)
      extra = {"horizon_to_divergence": divergence, "task_gap": gap,
               "task_gap_ci": list(gap_ci)}
      if agree is not None:
        extra["argmax_agreement"] = float(agree[:, steps].mean())
      if est is not None:
        i = h // t_train - 1
        true = {f: np.asarray(ep.hparams[f]) for f in family_lib.CONTINUOUS
                if f == "learning_rate" or family.prior(f).kind != "fixed"}
        extra["hparam_recovery"] = metrics.hparam_recovery(
            true, {f: np.asarray(est[f])[:, i] for f in true}, family.log_scale_fields())
      rows.append(row(names.get(name, name), shift, h, t_train, err, chance, **extra))
  zeros = np.zeros_like(chance)
  for h in horizons:
    rows.append(row(ORACLE, shift, h, t_train, zeros, chance,
                    horizon_to_divergence=_divergence(zeros, chance, t_train),
                    task_gap=0.0, task_gap_ci=[0.0, 0.0]))
  return rows


# --------------------------------------------------------------------------- battery


def restore_meta(exp, workdir: str, best: bool = True, step: int | None = None):
  """The meta-params of a checkpoint (best by validation NIE by default)."""
  ckpt = checkpoint.Checkpoints(workdir)
  state, _ = ckpt.restore(exp.abstract_state(), step=step, best=best)
  ckpt.close()
  if state is None:
    raise FileNotFoundError(f"no {'best ' if best else ''}checkpoint in {workdir}")
  return state.meta


def held_out(config, setting, data, n: int, horizon: int | None = None):
  """n held-out teachers with chance teachers, from the evaluation seed."""
  if horizon:
    setting = setting.with_horizon(horizon)
  key = jax.random.fold_in(jax.random.key(config.eval.seed), 2)
  return jax.jit(lambda k: episodes.sample(setting, data, k, n, chance=True))(key)


def shifted_setting(exp, shift: str, stream_npz: str | None = None):
  """(Setting, data) of a shift, or raises shifts.NotApplicable with the reason."""
  if shift == "npz":
    cfg = copy.deepcopy(exp.config)
    cfg.stream.kind = "npz"
    cfg.stream.npz_path = stream_npz
    from learners import npz
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


def run_battery(exp, meta, shift_names, stream_npz=None, log=print) -> dict:
  """Every imitator of `meta` on every shift and horizon: {"results", "skipped",
  "curves"} (curves: windowed NIE per shift and imitator, for plots)."""
  t = exp.setting.t
  n = exp.config.eval.teachers
  names = {"imitator": kinds.label(exp.config)}
  results, skipped, curves = [], [], {}
  keys = jax.random.split(jax.random.key(0), n)
  run = jax.jit(lambda meta, x, y, a: {
      name: imitate(im, meta[name], keys, x, y, a, chunk=_divisor(t, x.shape[1]) or
                    x.shape[1])
      for name, im in exp.imitators.items()})
  for shift in shift_names:
    try:
      setting, data = shifted_setting(exp, shift, stream_npz)
    except shifts.NotApplicable as e:
      skipped.append({"shift": shift, "reason": str(e)})
      log(f"shift {shift}: skipped ({e})")
      continue
    horizon = t * HORIZON_MULTIPLES[-1]
    if shift == "npz":
      horizon = setting.t - setting.t % t if setting.t >= t else setting.t
    ep = held_out(exp.config, setting, data, n, horizon)
    outputs = run(meta, ep.x, ep.y, ep.behaviour)
    horizons = [m * t for m in HORIZON_MULTIPLES if m * t <= horizon] or [horizon]
    rows = shift_rows(setting.task, names, shift, t, horizons, ep, outputs, setting.family)
    results += rows
    chance = metrics.step_error(setting.task, ep.behaviour, ep.chance)
    curves[shift] = {
        names.get(k, k): metrics.windowed_nie(
            metrics.step_error(setting.task, ep.behaviour, o[0]), chance, max(t // 8, 1))
        for k, o in outputs.items()}
    best = min((r for r in rows if r["horizon"] == horizons[-1] and r["imitator"] != ORACLE),
               key=lambda r: r["nie"])
    log(f"shift {shift}: NIE at {horizons[-1]} steps, best {best['imitator']} "
        f"{best['nie']:.3f}")
  return {"results": results, "skipped": skipped, "curves": curves}


def forgetting(exp, meta, probes: int = 32, log=print) -> dict:
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
    traj = jax.vmap(lambda h, k, s, p: rollout.rollout(
        setting.family, h, k, s, probes=p, probe_every=every))(hp, init_keys, stream, px)
    return stream, traj, px, py

  stream, traj, px, py = teachers(key)
  keys = jax.random.split(jax.random.key(0), n)
  task = setting.task

  def loss_on_b(outputs):  # [P, K, n, out] -> [P, K]
    y = jnp.broadcast_to(py[:, None], outputs.shape[:3] + py.shape[2:])
    return np.asarray(metrics.task_loss(task, outputs, y))

  teacher_curve = loss_on_b(traj.probe_outputs)
  result = {"steps": list(range(0, 4 * t, every)), "teacher": teacher_curve.mean(0).tolist(),
            "imitators": {}, "rows": []}
  names = {"imitator": kinds.label(exp.config)}
  for name, im in exp.imitators.items():
    run = jax.jit(lambda m, x, y, a, p: imitate(im, m, keys, x, y, a, every, probes=p)[2])
    curve = loss_on_b(run(meta[name], stream.x, stream.y, traj.behaviour, px))
    gap, ci = metrics.forgetting_gap(teacher_curve, curve)
    label = names.get(name, name)
    result["imitators"][label] = curve.mean(0).tolist()
    result["rows"].append({"imitator": label, "shift": "forgetting", "horizon": 4 * t,
                           "forgetting_gap": gap, "forgetting_gap_ci": list(ci),
                           "n_teachers": n})
    log(f"forgetting: {label} gap {gap:.4f}")
  return result


# --------------------------------------------------------------------------- files


def _merge_rows(old: list, new: list) -> list:
  key = lambda r: (r["imitator"], r["shift"], r["horizon"])
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


def write_report(workdir: str, t_train: int, rows: list, skipped: list | None = None):
  """Merges rows into workdir/eval/report.json (same imitator, shift and horizon are
  replaced) and rewrites report.md."""
  path = os.path.join(workdir, "eval", "report.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  report = {"t_train": t_train, "results": []}
  if os.path.exists(path):
    with open(path) as f:
      report = json.load(f)
  report["t_train"] = t_train
  report["results"] = _merge_rows(report["results"], [_finite(r) for r in rows])
  if skipped is not None:
    report["skipped"] = skipped
  if not parallel.is_primary():
    return report
  with open(path, "w") as f:
    json.dump(report, f, indent=2, allow_nan=False)
  from imitator import report as report_lib
  with open(os.path.join(workdir, "eval", "report.md"), "w") as f:
    f.write(report_lib.markdown(report))
  return report


def final_report(exp, workdir: str) -> dict:
  """End of training: the best checkpoint at the training horizon, shift none."""
  meta = restore_meta(exp, workdir)
  t = exp.setting.t
  ep = held_out(exp.config, exp.setting, exp.data, exp.config.eval.teachers)
  errs, chance = errors_fn(exp.imitators, exp.setting, ep, exp.config.eval.window)(meta)
  names = {"imitator": kinds.label(exp.config)}
  rows = [row(names.get(k, k), "none", t, t, e, chance) for k, e in errs.items()]
  rows.append(row(ORACLE, "none", t, t, np.zeros_like(np.asarray(chance)), chance))
  return write_report(workdir, t, rows)


def evaluate(exp, workdir: str, shift_names, stream_npz: str | None = None,
             with_forgetting: bool = True, log=print) -> dict:
  """The battery on the best checkpoint of `workdir`: report.json rows, report.md and
  plots under workdir/eval."""
  from imitator import report as report_lib
  meta = restore_meta(exp, workdir)
  battery = run_battery(exp, meta, shift_names, stream_npz, log)
  rows, skipped = battery["results"], battery["skipped"]
  forget = None
  if with_forgetting:
    try:
      forget = forgetting(exp, meta, log=log)
      rows = rows + forget["rows"]
    except shifts.NotApplicable as e:
      skipped = skipped + [{"shift": "forgetting", "reason": str(e)}]
  report = write_report(workdir, exp.setting.t, rows, skipped)
  eval_dir = os.path.join(workdir, "eval")
  report_lib.plot_nie(battery["curves"], exp.setting.t, os.path.join(eval_dir, "nie.png"))
  if forget is not None:
    report_lib.plot_forgetting(forget, exp.setting.t, os.path.join(eval_dir,
                                                                   "forgetting.png"))
    with open(os.path.join(eval_dir, "forgetting.json"), "w") as f:
      json.dump({k: v for k, v in forget.items() if k != "rows"}, f)
  return report
