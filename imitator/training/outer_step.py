"""One outer step of meta-training, jitted, and the train state it carries.

A step samples fresh teachers and streams, rolls the teachers out, unrolls the imitator
and the baselines beside them (predict, then observe), and updates each one's
meta-params with optax on its imitation loss. With `train.free_running` a fraction of
the teachers is shown for a drawn number of steps only, and the imitators are scored
alone after it (`episode_cuts`). A step whose loss or meta-gradient is not
finite leaves that one's meta-params unchanged and is counted. Metrics are summed on
device until a log step reads them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from imitator.rollout import episodes, objective
from imitator.training import finetune


class TrainState(NamedTuple):
  """What the outer loop carries from step to step (and checkpoints): scalars, or dicts
  of scalars, besides the meta-params and optimizer states."""
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


def metric_names(imitators) -> list[str]:
  """The keys of `TrainState.sums`: 'loss/NAME' and 'grad_norm/NAME' of every imitator."""
  return [f"{m}/{n}" for m in ("loss", "grad_norm") for n in imitators]


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


def episode_cuts(fr, key, n: int, horizon: int):
  """[n] steps each teacher is seen for: a `fr.fraction` of them a K uniform in
  [fr.observe_min, fr.observe_max], the others the whole `horizon`; None when
  fr.fraction is 0 (teacher-forced)."""
  if not fr.fraction:
    return None
  k_free, k_cut = jax.random.split(key)
  free = jax.random.uniform(k_free, (n,)) < fr.fraction
  cut = jax.random.randint(k_cut, (n,), fr.observe_min, fr.observe_max + 1)
  return jnp.where(free, cut, horizon)


class Curriculum:
  """The episode of each outer step (its horizon, and whether free-running episodes
  are drawn) and its jitted step, traced once per kind of episode."""

  def __init__(self, exp):
    self._exp = exp
    self._stages = curriculum(exp.config.train, exp.setting.t)
    self._fns = {}

  def episode(self, step: int) -> tuple[int, bool]:
    """(steps of an episode, free-running episodes drawn) at outer step `step`: from the
    fraction train.free_running.start_fraction of train.steps on, free-running episodes
    of its horizon (0: the curriculum's); before, the curriculum's teacher-forced ones."""
    tcfg = self._exp.config.train
    fr = tcfg.free_running
    horizon = next(h for h, until in self._stages if step < until)
    if fr.fraction and step >= fr.start_fraction * tcfg.steps:
      return fr.horizon or horizon, True
    return horizon, False

  def step_fn(self, horizon: int, free: bool = False):
    if (horizon, free) not in self._fns:
      self._fns[(horizon, free)] = step_fn(self._exp, horizon, free)
    return self._fns[(horizon, free)]


def step_fn(exp, horizon: int, free: bool = False):
  """The jitted outer step of `exp` (an `experiment.Experiment`) on episodes of `horizon`
  steps, free-running ones drawn when `free`: TrainState -> TrainState, replicated over
  the mesh; the argument is donated."""
  setting = exp.setting.with_horizon(horizon)
  truncation = min(exp.config.train.truncation or horizon, horizon)
  n = exp.config.train.teachers
  sharding = NamedSharding(exp.mesh, PartitionSpec("data"))
  ft = exp.config.train.finetune
  trained = finetune.trained_names(exp.config, exp.imitators)

  def step(ts: TrainState):
    # A rollback replays its steps on other teachers: they may be what broke.
    key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(ts.key),
                                                ts.step), ts.rollbacks)
    k_ep, k_im = jax.random.split(key)
    im_keys = jax.lax.with_sharding_constraint(jax.random.split(k_im, n), sharding)
    cuts = (episode_cuts(exp.config.train.free_running, jax.random.fold_in(k_im, 1), n,
                         horizon) if free else None)
    if cuts is not None:
      cuts = jax.lax.with_sharding_constraint(cuts, sharding)
    if truncation < horizon:  # the teachers' data is made window by window too
      place = lambda a: jax.lax.with_sharding_constraint(a, sharding)
      out = objective.streamed_loss_and_grads(
          {name: exp.imitators[name] for name in trained}, ts.meta, setting, exp.data,
          k_ep, im_keys, n, truncation, place, cuts)
    else:
      ep = episodes.sample(setting, exp.data, k_ep, n, sharding=sharding)
      extra = finetune.extra_behaviour(ft.extra, setting, ep, exp.overseer,
                                       jax.random.fold_in(k_ep, 5))
      out = {name: objective.loss_and_grads(
          exp.imitators[name], ts.meta[name], im_keys, ep.x, ep.y, ep.behaviour,
          truncation, cuts, extra if name == "imitator" else None, ft.weight)
             for name in trained}
    # Each imitator has its own optimizer and guard: a non-finite loss or gradient
    # leaves that imitator's meta-params and optimizer state as they were.
    meta, opt_state, values, oks, bad = {}, {}, {}, [], {}
    for name in exp.imitators:
      if name not in out:  # not trained in this run (fine-tuning): kept as it is
        meta[name], opt_state[name], bad[name] = (ts.meta[name], ts.opt_state[name],
                                                  ts.bad[name])
        values[f"loss/{name}"] = values[f"grad_norm/{name}"] = jnp.zeros(())
        continue
      loss, grads = out[name]
      norm = optax.tree.norm(grads)
      ok = jnp.isfinite(loss) & jnp.isfinite(norm)
      g = jax.tree.map(lambda g: jnp.where(ok, g, 0.0), grads)
      updates, new_opt = exp.tx.update(g, ts.opt_state[name], ts.meta[name])
      new_meta = optax.apply_updates(
          ts.meta[name], jax.tree.map(lambda u: ts.lr_scale * u, updates))
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
      meta[name] = keep(new_meta, ts.meta[name])
      opt_state[name] = keep(new_opt, ts.opt_state[name])
      values[f"loss/{name}"] = jnp.where(ok, loss, 0.0)
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

  replicated = NamedSharding(exp.mesh, PartitionSpec())
  return jax.jit(step, out_shardings=replicated, donate_argnums=0)
