"""Inspects a checkpoint of a run.

    python -m launch.inspect_checkpoint --workdir=DIR [--step=N | --best]
    python -m launch.inspect_checkpoint --workdir=DIR --compare [--compare_steps=20]
    python -m launch.inspect_checkpoint --workdir=DIR --export=meta.npz

Prints the config, the step, the metrics logged at it, each imitator's parameter tree
with shapes and counts, and for `system_id` the meta-learned starting estimate of the
hyperparams. `--compare` runs the checkpoint's imitators beside a fresh held-out teacher
on one stream and prints their outputs step by step (and, for system_id, the inferred
hyperparams against the teacher's). `--export` writes the meta-params as flat named
arrays ('imitator/init/dense_0/w', ...).
"""

import json

import numpy as np
from absl import flags

from imitator.evaluation import battery
from imitator.kinds import registry
from imitator.rollout import objective
from imitator.runtime import checkpoint
from imitator.runtime import workdir as workdir_lib
from imitator.training import experiment
from launch import cli
from launch.configs import default
from learners import teacher_dump

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_BEST = flags.DEFINE_boolean("best", False, "The best checkpoint by validation NIE.")
_COMPARE = flags.DEFINE_boolean("compare", False, "Run beside a fresh teacher.")
_COMPARE_STEPS = flags.DEFINE_integer("compare_steps", 20, "Steps printed by --compare.")
_EXPORT = flags.DEFINE_string("export", None, "Write the meta-params to this .npz.")


def describe_tree(meta) -> str:
  lines = []
  for name, sub in meta.items():
    arrays = teacher_dump.flatten(sub)
    total = sum(a.size for a in arrays.values())
    lines.append(f"{name}: {total:,} parameters")
    lines += [f"  {path:48s} {str(a.shape):>14s} {a.size:>8,}" for path, a in arrays.items()]
  return "\n".join(lines)


def compare(exp, meta, steps: int) -> str:
  """A fresh held-out teacher and every imitator on one stream, step by step."""
  ep = battery.held_out(exp.config, exp.setting, exp.data, 1)
  keys = objective.evaluation_keys(1)
  chunk = exp.setting.t
  outputs = {n: objective.unroll(im, meta[n], keys, ep.x, ep.y, ep.behaviour, chunk)
             for n, im in exp.imitators.items()}
  names = {"imitator": registry.label(exp.config)}
  cols = ["teacher"] + [names.get(n, n) for n in outputs]
  show = lambda v: (f"{float(v[0]):+.4f}" if v.shape[-1] == 1 else
                    "[" + " ".join(f"{p:.2f}" for p in np.asarray(v)[:4]) + "]")
  lines = [f"teacher: {exp.setting.family.describe(exp.setting.family.member(ep.hparams, 0))}",
           "outputs on the first example of each step (probabilities for "
           "classification, first 4 classes):",
           f"{'step':>5s}  " + "  ".join(f"{c:>24s}" for c in cols)]
  for t in range(min(steps, ep.x.shape[1])):
    row = [show(ep.behaviour[0, t, 0])] + [show(o[0][0, t, 0]) for o in outputs.values()]
    lines.append(f"{t:>5d}  " + "  ".join(f"{c:>24s}" for c in row))
  for n, (_, est, _) in outputs.items():
    if est is not None:
      lines.append(f"{names.get(n, n)} inferred hyperparams at step {exp.setting.t} vs "
                   "the teacher's:")
      for f in exp.setting.family.continuous:
        lines.append(f"  {f:14s} inferred {float(est[f][0, 0]):.4g}   true "
                     f"{float(ep.hparams[f][0]):.4g}")
  return "\n".join(lines)


def main(argv):
  del argv
  wd = _WORKDIR.value
  config = workdir_lib.load_config(wd, defaults=default.get_config())
  exp = experiment.Experiment(config)
  ckpt = checkpoint.Checkpoints(wd)
  steps = ckpt.steps(best=_BEST.value)
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {wd}")
  if _STEP.value is not None and _STEP.value not in steps:
    raise ValueError(f"--step={_STEP.value}: no such checkpoint; steps in {wd}: {steps}")
  state, info = ckpt.restore(exp.abstract_state(), step=_STEP.value, best=_BEST.value)
  ckpt.close()
  step = int(state.step)
  print("config:\n" + config.to_json_best_effort(indent=2, sort_keys=True))
  print(f"\ncheckpoint step: {step} (available: {steps}{', best' if _BEST.value else ''})")
  record = (info or {}).get("metrics") or workdir_lib.metrics_at(wd, step)
  print("metrics at this step:", json.dumps(record, indent=2) if record else "none logged")
  print("\nmeta-parameters:\n" + describe_tree(state.meta))
  main_im = exp.imitators["imitator"]
  if hasattr(main_im, "initial_estimates"):
    families = {g.name: g.family for g in main_im.groups}  # a group's own fields
    print("\nsystem_id starting estimate of the hyperparams, per particle:")
    for k, (group, hp) in enumerate(main_im.initial_estimates(state.meta["imitator"])):
      print(f"  particle {k} ({group}): " + families[group].describe(hp))
  if _COMPARE.value:
    print("\n" + compare(exp, state.meta, _COMPARE_STEPS.value))
  if _EXPORT.value:
    arrays = teacher_dump.flatten(dict(state.meta))
    with open(_EXPORT.value, "wb") as f:
      np.savez(f, **arrays)
    print(f"\nwrote {len(arrays)} arrays to {_EXPORT.value}")


if __name__ == "__main__":
  cli.run(main)
