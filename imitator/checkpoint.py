"""Checkpoints with orbax: the last N steps under `checkpoints/`, the best under `best/`.

A checkpoint holds the train state (step, meta-params, optimizer state, root key,
guard counters) as arrays and a JSON item with the config and the metrics of that step.
Restoring needs an abstract train state of the same structure (built from the config).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def _manager(directory, keep: int, best: bool):
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, cleanup_tmp_directories=True,
      best_fn=(lambda m: m["val_nie"]) if best else None,
      best_mode="min", keep_checkpoints_without_metrics=not best)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=("state", "info"))


class Checkpoints:
  """The two managers of a workdir."""

  def __init__(self, workdir: str, keep: int = 3):
    self.latest = _manager(os.path.join(workdir, "checkpoints"), keep, best=False)
    self.best = _manager(os.path.join(workdir, "best"), 1, best=True)

  def save(self, step: int, state, info: dict, val_nie: float | None = None, force=False):
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              info=ocp.args.JsonSave(info))
    self.latest.save(step, args=args, force=force)
    if val_nie is not None:
      self.best.save(step, args=args, metrics={"val_nie": float(val_nie)}, force=True)

  def restore(self, abstract_state, step: int | None = None, best: bool = False):
    """(state, info) of `step` (default: latest, or the best with best=True)."""
    mngr = self.best if best else self.latest
    step = (mngr.best_step() if best else mngr.latest_step()) if step is None else step
    if step is None:
      return None, None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    out = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), info=ocp.args.JsonRestore()))
    return out.state, out.info

  def steps(self, best: bool = False):
    return list((self.best if best else self.latest).all_steps())

  def wait(self):
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self):
    self.latest.close()
    self.best.close()


def read_info(workdir: str, step: int | None = None, best: bool = False) -> tuple[int, Any]:
  """(step, JSON info) of a checkpoint without restoring arrays."""
  ckpt = Checkpoints(workdir)
  mngr = ckpt.best if best else ckpt.latest
  step = (mngr.best_step() if best else mngr.latest_step()) if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}")
  info = mngr.restore(step, args=ocp.args.Composite(info=ocp.args.JsonRestore())).info
  return step, info
