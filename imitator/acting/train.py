"""Meta-trains the recurrent imitator on acting teachers, then evaluates it in closed loop:
`train_and_evaluate(config, workdir)` for configs with an `acting` block
(`launch/configs/bandits.py`).

Each outer step draws `train.teachers` fresh members of the acting family, each with its
own bandit (tables from its key); a fraction `train.alone_fraction` of them is shown for
a uniformly drawn number of trials in [0, T_train) and then left to the imitator
(closed loop) up to `train.alone_horizon` trials, the rest are shown throughout
T_train trials. The loss is the mean over trials of the
NLL of the teacher's sampled choice on seen trials (what an observer sees) and of
KL(shadow teacher || imitator) on unseen ones: the expected NLL of the choice the hidden
teacher would have made on the imitator's own history, minus its entropy, known because
meta-training teachers are synthetic. Checkpoints (orbax) every `checkpoint_every`
steps; a restart on the workdir resumes; SIGTERM/SIGINT stop after a checkpoint.

Evaluation on `eval.teachers` held-out members (their own key branch), cut at
T_obs = T_train, windows of T_train trials ending at each horizon multiple:
teacher-forced NLL per choice and normalized likelihood beside the true model (the
Bayes limit) and the per-teacher maximum-likelihood fit of the value learner on the
observed trials (`mle`), KL(teacher || agent); alone: KL(shadow || agent) and the
behaviour (reward rate, switch rate, win-stay, lose-shift) beside the teacher's own.
Agents: the trained imitator, the same imitator untrained, and the fitted value model.

With train.finetune set (`launch.finetune`) it starts from the source run's meta-params
and adds weight x the extra term of `acting.finetune` to the objective.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from imitator import metrics
from imitator.acting import agents as agents_lib
from imitator.acting import closed_loop, finetune, mle
from imitator.runtime import checkpoint, signals
from imitator.runtime import workdir as workdir_lib
from learners import acting, acting_networks, environments

AGENTS = ("imitator", "untrained", "mle")


def check(config) -> None:
  """ValueError naming the bad field of an acting config."""
  a, t, e = config.acting, config.train, config.eval
  for name, value, low in (("acting.t_train", a.t_train, 2), ("train.steps", t.steps, 0),
                           ("train.teachers", t.teachers, 1), ("eval.teachers", e.teachers, 2),
                           ("train.log_every", t.log_every, 1),
                           ("train.checkpoint_every", t.checkpoint_every, 1),
                           ("eval.mle_steps", e.mle_steps, 1),
                           ("eval.mle_restarts", e.mle_restarts, 1),
                           ("imitator.hidden", config.imitator.hidden, 1)):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise ValueError(f"config.{name}={value!r}: must be an integer >= {low}.")
  if (isinstance(t.alone_horizon, bool) or not isinstance(t.alone_horizon, int)
      or t.alone_horizon < a.t_train):
    raise ValueError(f"config.train.alone_horizon={t.alone_horizon!r}: trials of an alone "
                     f"episode, an integer >= acting.t_train={a.t_train}.")
  if not 0.0 <= t.alone_fraction <= 1.0:
    raise ValueError(f"config.train.alone_fraction={t.alone_fraction!r}: must be in [0, 1].")
  ft = t.finetune
  if ft.extra not in finetune.EXTRAS or not ft.weight >= 0 or (ft.extra != "none"
                                                               and not ft.source):
    raise ValueError(f"config.train.finetune={ft.to_dict()!r}: extra one of "
                     f"{', '.join(finetune.EXTRAS)}, weight >= 0, and a source workdir "
                     "with an extra (launch.finetune sets them).")
  if not t.learning_rate > 0:
    raise ValueError(f"config.train.learning_rate={t.learning_rate!r}: must be > 0.")
  horizons = list(e.horizons)
  if not horizons or any(isinstance(h, bool) or not isinstance(h, int) or h < 1
                         for h in horizons):
    raise ValueError(f"config.eval.horizons={horizons!r}: multiples of T_train, integers "
                     ">= 1.")
  family(config), bandit(config, 1)  # their own checks name the bad value


def family(config):
  """The teachers' family: the acting family's rules, or on a contextual bandit the
  `acting.networks` preset's members as Q-learning policies."""
  if config.acting.bandit.kind == "contextual":
    return acting_networks.NetworkActingFamily(arms=config.acting.arms,
                                               features=config.acting.bandit.features,
                                               preset=config.acting.networks)
  return acting.ActingFamily(arms=config.acting.arms, rules=tuple(config.acting.rules))


def bandit(config, multiple: int, trials: int | None = None) -> environments.Bandit:
  """The configured bandit over `multiple` x T_train trials (or `trials`)."""
  b = config.acting.bandit
  return environments.Bandit(kind=b.kind, arms=config.acting.arms,
                             horizon=trials or multiple * config.acting.t_train,
                             drift=b.drift,
                             reversal_every=b.reversal_every, high=b.high, low=b.low,
                             features=b.features, tasks=b.tasks,
                             switch_every=b.switch_every, gain=b.gain)


def imitator(config) -> agents_lib.RecurrentImitator:
  return agents_lib.RecurrentImitator(arms=config.acting.arms,
                                      hidden=config.imitator.hidden,
                                      features=bandit(config, 1).context_dim)


def keys(config):
  root = jax.random.key(config.seed)
  return {k: jax.random.fold_in(root, i) for i, k in enumerate(("meta", "train", "eval"))}


def optimizer(config):
  return optax.chain(optax.clip_by_global_norm(config.train.clip),
                     optax.adam(config.train.learning_rate))


def _episode(config, key, alone: bool):
  """Teachers, tables and cuts [P] of one outer step's forced or alone episodes: forced
  ones run T_train trials, all seen; alone ones run `train.alone_horizon` trials, seen
  for a uniform number in [0, T_train)."""
  fam, t = family(config), config.acting.t_train
  p = _split_teachers(config)[int(alone)]
  k_hp, k_env, k_cut = jax.random.split(jax.random.fold_in(key, int(alone)), 3)
  hp = fam.sample(k_hp, p)
  length = config.train.alone_horizon if alone else t
  tables = jax.vmap(bandit(config, 1, length).tables)(jax.random.split(k_env, p))
  cut = jax.random.randint(k_cut, (p,), 0, t) if alone else jnp.full((p,), t)
  return hp, tables, cut


def _split_teachers(config) -> tuple[int, int]:
  """(forced, alone) teachers of an outer step."""
  alone = int(round(config.train.teachers * config.train.alone_fraction))
  return config.train.teachers - alone, alone


def loss_fn(config, meta, hp, tables, cut, alone: bool = True, overseer=None):
  """Sum over trials of the meta-objective's terms (module docstring) plus, when
  fine-tuning, train.finetune.weight x its extra term (`acting.finetune`), and their
  sums {nll_seen, kl_alone, extra, seen, alone} (trial counts too); `alone=False`
  (static) when every cut is T; `overseer` the trusted learner's hyperparams (process)."""
  ft = config.train.finetune
  imitation, extra, seen = finetune.extra_terms(ft.extra, family(config), hp,
                                                imitator(config), meta, tables, cut,
                                                overseer, alone)
  total = jnp.sum(imitation) + ft.weight * jnp.sum(extra)
  return total, {"nll_seen": jnp.sum(jnp.where(seen, imitation, 0)),
                 "kl_alone": jnp.sum(jnp.where(seen, 0, imitation)),
                 "extra": jnp.sum(extra), "seen": jnp.sum(seen), "alone": jnp.sum(~seen)}


def overseer(config):
  """The process overseer's trusted member (None unless train.finetune.extra is process),
  chosen on bandits of the alone horizon from the evaluation key's branch 3."""
  if config.train.finetune.extra != "process":
    return None
  return finetune.overseer_member(family(config),
                                  bandit(config, 1, config.train.alone_horizon),
                                  jax.random.fold_in(keys(config)["eval"], 3))


def make_step(config):
  opt = optimizer(config)
  train_key = keys(config)["train"]
  trusted = overseer(config)

  @jax.jit
  def step(meta, opt_state, i):
    key = jax.random.fold_in(train_key, i)
    episodes = [(_episode(config, key, alone), alone) for alone, n in
                zip((False, True), _split_teachers(config)) if n]

    def objective(m):
      sums = [loss_fn(config, m, *e, alone=alone, overseer=trusted) for e, alone in episodes]
      total = sum(s[0] for s in sums)
      parts = jax.tree.map(lambda *x: sum(x), *[s[1] for s in sums])
      return total / (parts["seen"] + parts["alone"]), parts

    (loss, parts), grads = jax.value_and_grad(objective, has_aux=True)(meta)
    updates, opt_state = opt.update(grads, opt_state, meta)
    return optax.apply_updates(meta, updates), opt_state, {
        "loss": loss, "nll_seen": parts["nll_seen"] / jnp.maximum(parts["seen"], 1),
        "kl_alone": parts["kl_alone"] / jnp.maximum(parts["alone"], 1),
        "extra": parts["extra"] / (parts["seen"] + parts["alone"])}
  return step


def train_and_evaluate(config, workdir: str, stop_at_step: int | None = None,
                       command: str | None = None) -> dict:
  """Meta-trains to `config.train.steps` (resuming from the workdir's newest
  checkpoint), then evaluates and writes eval/report.json; returns the report. With
  `stop_at_step` (or a signal) it stops after checkpointing, status 'preempted'; on a
  finished run it returns the saved report with status 'complete'."""
  check(config)
  os.makedirs(workdir, exist_ok=True)
  with workdir_lib.lock(workdir):
    config_path = os.path.join(workdir, "config.json")
    saved = workdir_lib.read_json(config_path, "remove it or use a fresh --workdir") if (
        os.path.exists(config_path)) else None
    if saved is not None and _without_resumable(saved) != _without_resumable(
        json.loads(config.to_json())):
      raise ValueError(f"workdir {workdir} holds a run of another config (config.json); "
                       "use a fresh --workdir.")
    workdir_lib.write_atomically(config_path, config.to_json(indent=2))
    if command and not os.path.exists(os.path.join(workdir, "command.txt")):
      workdir_lib.write_atomically(os.path.join(workdir, "command.txt"), command + "\n")
    meta = imitator(config).init_meta(keys(config)["meta"])
    if config.train.finetune.source:
      meta = _source_meta(config)
    opt_state = optimizer(config).init(meta)
    ckpt = checkpoint.Checkpoints(workdir)
    try:
      state, info = ckpt.restore({"meta": meta, "opt_state": opt_state})
      start = 0
      if state is not None:
        meta, opt_state, start = state["meta"], state["opt_state"], int(info["step"])
        logging.info("resumed %s at step %d", workdir, start)
      report_path = os.path.join(workdir, "eval", "report.json")
      if start >= config.train.steps and os.path.exists(report_path):
        # A finished run: its report as it is, nothing written.
        report = workdir_lib.read_json(report_path, "move it aside and run again")
        return dict(report, status="complete")
      status = _train(config, workdir, ckpt, meta, opt_state, start, stop_at_step)
      if status["status"] == "preempted":
        return status
      meta = status.pop("meta")
    finally:
      ckpt.close()
    report = evaluate(config, meta)
    report.update(status=status["status"], steps=int(config.train.steps))
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    workdir_lib.write_atomically(os.path.join(workdir, "eval", "report.json"),
                                 json.dumps(report, indent=1))
    return report


def _source_meta(config):
  """The meta-params of train.finetune.source, a run of the same imitator."""
  source = config.train.finetune.source
  src_config, meta, _ = load(source)
  if src_config.imitator.to_dict() != config.imitator.to_dict() or (
      src_config.acting.to_dict() != config.acting.to_dict()):
    raise ValueError(f"train.finetune.source={source!r}: a run of another imitator or "
                     "acting family; fine-tune from the run this config came from.")
  return meta


def _without_resumable(cfg: dict) -> dict:
  cfg = json.loads(json.dumps(cfg))
  cfg.get("train", {}).setdefault("finetune", {"source": "", "extra": "none", "weight": 0.0})
  for k in ("steps", "log_every", "checkpoint_every"):
    cfg.get("train", {}).pop(k, None)
  return cfg


def _train(config, workdir, ckpt, meta, opt_state, start, stop_at_step) -> dict:
  tcfg = config.train
  step_fn = make_step(config)
  path = os.path.join(workdir, "metrics.jsonl")
  records = [r for r in (workdir_lib.read_metrics(path) if os.path.exists(path) else [])
             if r.get("step", 0) <= start]
  workdir_lib.write_atomically(path, "".join(json.dumps(r) + "\n" for r in records))
  sums, n, t0 = None, 0, time.time()
  with signals.polled(), open(path, "a", encoding="utf-8") as log:
    for i in range(start, tcfg.steps):
      meta, opt_state, parts = step_fn(meta, opt_state, i)
      sums = parts if sums is None else jax.tree.map(jnp.add, sums, parts)
      n, step = n + 1, i + 1
      stopping = signals.received() is not None or step == stop_at_step
      if step % tcfg.log_every == 0 or step == tcfg.steps:
        record = {"step": step, **{k: float(v) / n for k, v in sums.items()},
                  "seconds": round(time.time() - t0, 2)}
        if not all(np.isfinite(v) for v in record.values()):
          raise FloatingPointError(f"non-finite meta-loss at step {step}: {record}; "
                                   "lower config.train.learning_rate.")
        log.write(json.dumps(record) + "\n")
        log.flush()
        logging.info("step %d: %s", step, record)
        sums, n = None, 0
      if step % tcfg.checkpoint_every == 0 or step == tcfg.steps or stopping:
        ckpt.save(step, {"meta": meta, "opt_state": opt_state},
                  {"step": step, "config": json.loads(config.to_json())})
      if stopping and step < tcfg.steps:
        ckpt.wait()
        return {"status": "preempted", "step": step,
                "message": f"stopped at step {step}: run the same command to resume."}
  ckpt.wait()
  return {"status": "finished", "meta": meta}


def load_config(workdir: str):
  """The config of the acting run in `workdir`, fields added since it was trained set
  to the values it ran with; ValueError when the workdir is not one."""
  path = os.path.join(workdir, "config.json")
  saved = workdir_lib.read_json(path, "use the workdir of a bandits run") if (
      os.path.exists(path)) else None
  if not saved or "acting" not in saved:
    raise ValueError(f"--workdir={workdir}: not a run of launch/configs/bandits.py (no "
                     "acting config.json); train one with python -m launch.train "
                     "--config=launch/configs/bandits.py.")
  # Fields added since the run was trained take the value the run ran with.
  bandit_fields = {f.name: f.default for f in dataclasses.fields(environments.Bandit)}
  for k, v in bandit_fields.items():
    saved["acting"]["bandit"].setdefault(k, v)
  saved["acting"].setdefault("networks", "small_mixed")
  saved["train"].setdefault("alone_horizon", saved["acting"]["t_train"])
  saved["train"].setdefault("finetune", {"source": "", "extra": "none", "weight": 0.0})
  return ml_collections.ConfigDict(saved)


def load(workdir: str):
  """(config, trained meta-params, untrained meta-params) of a finished or checkpointed
  acting run; ValueError when the workdir is not one."""
  config = load_config(workdir)
  untrained = imitator(config).init_meta(keys(config)["meta"])
  ckpt = checkpoint.Checkpoints(workdir)
  try:
    state, _ = ckpt.restore({"meta": untrained,
                             "opt_state": optimizer(config).init(untrained)})
  finally:
    ckpt.close()
  if state is None:
    raise ValueError(f"--workdir={workdir}: no checkpoint; train into it first.")
  return config, state["meta"], untrained


# ------------------------------------------------------------------------- evaluation

def _mean_ci(values, seed=0):
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  if v.size == 0:
    return None, None
  return float(v.mean()), list(metrics.bootstrap_ci(v, seed=seed))


def _paired(a, b, seed=0):
  """mean(a - b) over teachers with its paired bootstrap CI."""
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  return _mean_ci(d, seed)


def evaluate(config, meta, n_teachers: int | None = None) -> dict:
  """The closed-loop battery on held-out teachers (module docstring): report dict."""
  fam, t = family(config), config.acting.t_train
  p = n_teachers or config.eval.teachers
  multiples = sorted(set(int(h) for h in config.eval.horizons))
  k_hp, k_env, k_mle = jax.random.split(keys(config)["eval"], 3)
  hp = fam.sample(k_hp, p)
  tables = jax.vmap(bandit(config, multiples[-1]).tables)(jax.random.split(k_env, p))
  im = imitator(config)
  start = time.time()
  # The observed part: the teacher's own first T_obs trials, to which mle is fitted.
  seen = acting.population_rollout(fam, hp, jax.tree.map(lambda a: a[:, :t], tables))
  fitted = mle.fit(k_mle, seen.choice, seen.reward, jnp.ones_like(seen.choice, bool),
                   fam.arms, steps=config.eval.mle_steps, restarts=config.eval.mle_restarts)
  untrained = im.init_meta(keys(config)["meta"])
  agents = (im, im, agents_lib.ValueModel(arms=fam.arms))
  run = jax.jit(lambda hp, tables, m, u, f: closed_loop.windowed(
      fam, hp, agents, (m, u, f), tables, t, t))
  sums = jax.tree.map(np.asarray, run(hp, tables, meta, untrained, fitted))
  rule_names = fam.kinds(hp)
  report = {"t_train": t, "cut": t, "n_teachers": p, "agents": list(AGENTS),
            "rules": rule_names, "family": fam.name, "bandit": config.acting.bandit.to_dict(),
            "arms": fam.arms, "seconds": None, "rows": []}
  for m in multiples:
    report["rows"].extend(_rows(sums, m, rule_names))
  report["seconds"] = round(time.time() - start, 1)
  return report


def _rows(sums, m: int, rule_names) -> list[dict]:
  w = m - 1
  rows = []
  true_nll = sums["nll_true"][w]
  teacher_rates = metrics.behaviour_rates(sums["counts"][w])
  for i, name in enumerate(AGENTS):
    nll = sums["nll"][i][w]
    forced = {"track": "teacher_forced", "agent": name, "horizon": m,
              "in_sample": name == "mle" and m == 1}
    mean, ci = _mean_ci(nll)
    forced.update(nll=mean, nll_ci=ci, true_nll=float(true_nll.mean()),
                  normalized_likelihood=float(metrics.normalized_likelihood(mean)),
                  true_normalized_likelihood=float(
                      metrics.normalized_likelihood(true_nll.mean())))
    forced["nll_minus_true"], forced["nll_minus_true_ci"] = _paired(nll, true_nll)
    if name != "mle":
      forced["nll_minus_mle"], forced["nll_minus_mle_ci"] = _paired(nll, sums["nll"][2][w])
    forced["kl"], forced["kl_ci"] = _mean_ci(sums["kl_forced"][i][w])
    rows.append(forced)
    if m == 1:
      continue  # the whole first window is seen: nothing alone yet
    kl = sums["kl_alone"][i][w]
    alone = {"track": "alone", "agent": name, "horizon": m}
    alone["kl"], alone["kl_ci"] = _mean_ci(kl)
    alone["median_kl"] = float(np.median(kl))
    if name != "untrained":
      alone["kl_minus_untrained"], alone["kl_minus_untrained_ci"] = _paired(
          kl, sums["kl_alone"][1][w])
    if name != "mle":
      alone["kl_minus_mle"], alone["kl_minus_mle_ci"] = _paired(kl, sums["kl_alone"][2][w])
    alone["kl_by_rule"] = {r: float(kl[[n == r for n in rule_names]].mean())
                           for r in sorted(set(rule_names))}
    rates = metrics.behaviour_rates(sums["counts_alone"][i][w])
    for k, v in rates.items():
      alone[k], alone[k + "_ci"] = _mean_ci(v)
      alone["teacher_" + k], alone["teacher_" + k + "_ci"] = _mean_ci(teacher_rates[k])
      alone[k + "_minus_teacher"], alone[k + "_minus_teacher_ci"] = _paired(
          v, teacher_rates[k])
    rows.append(alone)
  return rows
