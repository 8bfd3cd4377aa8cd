"""The forgetting experiment: tasks A and B together, then A alone; the teacher's and
each imitator's loss on held-out B examples over time."""

from __future__ import annotations

import copy

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from imitator import metrics
from imitator.kinds import registry
from imitator.rollout import episodes, objective
from learners import rollout, shifts, streams


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
  names = {"imitator": registry.label(exp.config)}
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
