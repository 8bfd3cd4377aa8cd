"""Fine-tuning after imitation: the extra term of `train.finetune` and its overseer.

A fine-tuning run starts from a trained run's best meta-params (`train.finetune.source`)
and trains the imitator (the baselines stay as they were) on

    D(a_t, a_hat_t) + weight * D(b_t, a_hat_t)

per step, the imitator still observing the teacher's a_t on seen steps, where b is

- `outcome`: the label itself (y for regression, one-hot y for classification), so that
  the extra term is the task loss on the labels (for regression 2 x the teachers' 0.5 *
  squared error; for classification the cross-entropy): reward for consequences;
- `process`: the behaviour of the overseer's trusted learner on the same stream, a member
  of the teachers' family that predicts before it sees y_t (`overseer_member`): the
  overseer scores each step by whether a learner it trusts would have answered so, never
  by the label of that step or its consequences.

Both are D of DESIGN §6, so `weight` trades fidelity for the extra term on one scale.
"""

from __future__ import annotations

import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from imitator.runtime import workdir as workdir_lib
from learners import learner, rollout, streams

EXTRAS = ("none", "outcome", "process")
LEARNING_RATE = 1e-2  # launch.finetune's default peak meta step size
# The overseer picks its trusted learner among this many family members, by mean task
# loss over this many streams of the training horizon (validation's key, not training's).
OVERSEER_CANDIDATES = 64
OVERSEER_STREAMS = 16


def trained_names(config, imitators) -> tuple:
  """The imitators a step trains: all of them, or only the imitator when fine-tuning."""
  return ("imitator",) if config.train.finetune.source else tuple(imitators)


def overseer_member(setting, data, key) -> dict:
  """{field: scalar} hyperparams of the family member with the lowest mean task loss over
  OVERSEER_STREAMS streams among OVERSEER_CANDIDATES drawn from the family's prior (the
  setting's fixed teacher fields kept): the learner the overseer trusts."""
  n, m = OVERSEER_CANDIDATES, OVERSEER_STREAMS
  k_hp, k_init, k_stream = jax.random.split(key, 3)
  hp = setting.family.sample(k_hp, n, fixed=dict(setting.teacher))

  @jax.jit
  def losses(hp):
    rep = jax.tree.map(lambda v: jnp.repeat(v, m, axis=0), hp)
    keys = jnp.tile(jax.random.split(k_stream, m), (n,))  # every candidate, same streams
    stream = jax.vmap(lambda k: streams.make_stream(setting.spec, k, data))(keys)
    traj = rollout.population_rollout(setting.family, rep, jax.random.split(k_init, n * m),
                                      stream)
    return traj.loss.reshape(n, m, -1).mean(axis=(1, 2))

  loss = np.asarray(losses(hp), np.float64)
  best = int(np.argmin(np.where(np.isfinite(loss), loss, np.inf)))
  member = {f: v[best] for f, v in hp.items()}
  logging.info("the overseer trusts %s (task loss %.4g; the candidates' median %.4g)",
               setting.family.describe(member), loss[best], np.nanmedian(loss))
  return member


def out_dir(workdir: str, extra: str, weight: float) -> str:
  """Where `launch.finetune` writes a fine-tuning run of workdir by default."""
  return os.path.join(workdir, "finetune", f"{extra}_{weight:g}")


def run_config(workdir: str, defaults, extra: str, weight: float, steps: int,
               learning_rate: float):
  """The config of a fine-tuning run of `workdir` (`launch.finetune`): the run's config
  (fields added since filled from `defaults`) with train.finetune set, `steps` outer
  steps at peak `learning_rate`, free-running episodes from the first step, validation
  only at the end (the best checkpoint is the last)."""
  if weight < 0 or steps < 1 or learning_rate <= 0:
    raise ValueError(f"--lambda={weight}, --steps={steps}, --learning_rate={learning_rate}:"
                     " allowed are lambda >= 0, steps >= 1, learning_rate > 0.")
  config = workdir_lib.load_config(workdir, defaults)
  if "acting" in config:
    raise ValueError(f"{workdir} is an acting run (launch/configs/bandits.py); fine-tuning "
                     "is built for the supervised imitators only.")
  tcfg = config.train
  tcfg.finetune.source = os.path.abspath(workdir)
  tcfg.finetune.extra, tcfg.finetune.weight = extra, float(weight)
  tcfg.steps, tcfg.learning_rate = steps, learning_rate
  tcfg.warmup_steps = min(tcfg.warmup_steps, steps // 10)
  tcfg.curriculum = ""
  tcfg.log_every = tcfg.checkpoint_every = min(50, steps)
  tcfg.eval_every = steps
  tcfg.free_running.start_fraction = 0.0
  return config


def _onehot_or_label(setting, y):
  if setting.task == "classification":
    return jax.nn.one_hot(y, setting.family.out_dim)
  return y


def extra_behaviour(kind: str, setting, ep, overseer, key):
  """b [P, T, B, out] of the extra term on episodes `ep` (None for 'none'); `overseer`
  {field: scalar} (process), `key` draws the overseer learner's initial weights."""
  if kind == "none":
    return None
  if kind == "outcome":
    return _onehot_or_label(setting, ep.y).astype(ep.behaviour.dtype)
  n = ep.x.shape[0]
  hp = jax.tree.map(lambda v: jnp.broadcast_to(v, (n,)), overseer)

  def follow(hp, k, xs, ys):
    step = lambda s, xy: learner.step(setting.family, hp, s, *xy)
    return jax.lax.scan(step, learner.init(setting.family, hp, k), (xs, ys))[1][0]

  return jax.vmap(follow)(hp, jax.random.split(key, n), ep.x, ep.y)
