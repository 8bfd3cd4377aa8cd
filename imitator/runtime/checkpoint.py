"""Checkpoints with orbax: the last N steps under `checkpoints/`, the best under `best/`.

A checkpoint holds the train state (step, meta-params, optimizer state, root key, guard
counters) as arrays, and a JSON item with the config, the shapes of the state's arrays
and the metrics of that step. Restoring walks back from the newest step: a checkpoint
that cannot be read (partly written, corrupted) is skipped with a warning naming its
step; one whose shapes differ from what the current config builds is an error that
names the differing config fields.

A signal received while restoring (see `signals`) is raised as `signals.Interrupted`,
whatever orbax made of it: it never makes a checkpoint look unreadable.
`saved_steps(workdir)` says what an interrupted run leaves to continue from.
"""

from __future__ import annotations

import os
import time

import jax
import orbax.checkpoint as ocp
import tensorstore
from etils import epath
from absl import logging
from flax import traverse_util

from imitator.runtime import signals


def _manager(directory, keep: int, best: bool):
  """Keeps the `keep` newest steps, or (best) the `keep` with the lowest val_nie; best_fn
  stays in the options for `best_step` and the metrics each save must carry."""
  best_fn = (lambda m: m["val_nie"]) if best else None
  policy = (ocp.checkpoint_managers.BestN(get_metric_fn=best_fn, reverse=True, n=keep,
                                          keep_checkpoints_without_metrics=False)
            if best else ocp.checkpoint_managers.LatestN(n=keep))
  options = ocp.CheckpointManagerOptions(
      create=True, cleanup_tmp_directories=True, best_fn=best_fn, best_mode="min",
      preservation_policy=policy)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=("state", "info"))


def shapes(tree) -> dict[str, list[int]]:
  """{path: shape} of every array in a pytree."""
  return {jax.tree_util.keystr(p): list(getattr(a, "shape", ()))
          for p, a in jax.tree_util.tree_flatten_with_path(tree)[0]}


def config_diff(saved: dict, current: dict) -> list[str]:
  """'field: checkpoint X, config Y' for every field whose value differs."""
  a, b = (traverse_util.flatten_dict(c or {}, sep=".") for c in (saved, current))
  return [f"{k}: checkpoint {a.get(k)!r}, config {b.get(k)!r}"
          for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _check_readable(directory) -> None:
  """Reads every key of a saved state's OCDBT database (manifest, b-tree nodes, data) on
  tensorstore's own futures, all awaited: a damaged checkpoint fails here with one error.
  Left to orbax's restore, the first failing read ends its asyncio loop while reads of
  the other arrays are still in flight, and each of those later prints a
  'RuntimeError: Event loop is closed' traceback when it completes."""
  if not (directory / "manifest.ocdbt").exists():
    return  # not an OCDBT checkpoint: orbax's restore reads it
  base = str(directory) if "://" in str(directory) else f"file://{os.path.abspath(directory)}"
  kv = tensorstore.KvStore.open({"driver": "ocdbt", "base": base.rstrip("/") + "/"}).result()
  reads = [kv.read(key) for key in kv.list().result()]
  errors = []
  for read in reads:  # every read finished before returning or raising
    try:
      read.result()
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)
  if errors:
    raise errors[0]


def saved_steps(workdir: str, best: bool = False) -> list[int]:
  """The steps saved (committed) under workdir/checkpoints (or best/), oldest first;
  read from the directory, so it works after the managers are closed."""
  root = epath.Path(workdir) / ("best" if best else "checkpoints")
  if not root.is_dir():
    return []
  return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and p.is_dir())


class Checkpoints:
  """The two managers of a workdir."""

  def __init__(self, workdir: str, keep: int = 3):
    self.workdir = workdir
    self.latest = _manager(os.path.join(workdir, "checkpoints"), keep, best=False)
    self.best = _manager(os.path.join(workdir, "best"), 1, best=True)
    self._closed = False

  def save(self, step: int, state, info: dict, val_nie: float | None = None):
    info = dict(info, shapes=shapes(state))
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              info=ocp.args.JsonSave(info))
    managers = [(self.latest, None)]
    if val_nie is not None:
      managers.append((self.best, {"val_nie": float(val_nie)}))
    for mngr, metrics in managers:
      # A run that went back (rollback, unreadable newer step) saves a step again.
      if step in mngr.all_steps():
        mngr.wait_until_finished()
        mngr.delete(step)
      mngr.save(step, args=args, metrics=metrics, force=True)

  def restore(self, abstract_state, step: int | None = None, best: bool = False,
              config: dict | None = None):
    """(state, info) of `step`, or of the newest readable checkpoint (the best one with
    best=True; when the best one cannot be read, the newest readable one of
    checkpoints/, with a warning); (None, None) when there is none. `config` (a dict)
    names the fields that differ when the shapes do not match."""
    mngr = self.best if best else self.latest
    if step is not None:
      candidates = [step]
    elif best:
      candidates = [s for s in [mngr.best_step()] if s is not None]
    else:
      candidates = sorted(mngr.all_steps(), reverse=True)
    expected = shapes(abstract_state)
    fallback = best and step is None  # an unreadable best/ falls back to checkpoints/
    for s in candidates:
      try:
        with signals.deferred("restore"):
          info = mngr.restore(s, args=ocp.args.Composite(
              info=ocp.args.JsonRestore())).info
        saved = info["shapes"]
      except Exception as e:  # pylint: disable=broad-except
        self._unreadable(mngr, s, e, explicit=step is not None, quiet=fallback)
        continue
      if saved != expected:
        raise ValueError(self._mismatch(mngr, s, saved, expected, info.get("config"),
                                        config))
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
      try:
        _check_readable(epath.Path(mngr.directory) / str(s) / "state")
        with signals.deferred("restore"):
          state = mngr.restore(s, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract))).state
      except Exception as e:  # pylint: disable=broad-except
        self._unreadable(mngr, s, e, explicit=step is not None, quiet=fallback)
        continue
      signals.check("restore")  # before moving anything aside: the state is whole
      if not best:
        self._set_aside(mngr, [c for c in candidates if c > s])
      return state, info
    if candidates and fallback and self.latest.all_steps():
      state, info = self.restore(abstract_state, config=config)
      if state is not None:
        logging.warning("best checkpoint step %d in %s is unreadable; using the newest "
                        "readable checkpoint instead, step %d of %s", candidates[0],
                        mngr.directory, int(info["step"]), self.latest.directory)
        return state, info
    if candidates:
      raise ValueError(f"no readable checkpoint in {mngr.directory} (tried steps "
                       f"{candidates}); this run cannot resume from it: restore the "
                       "directory from a backup, or train into a fresh --workdir.")
    return None, None

  @staticmethod
  def _set_aside(mngr, steps):
    """Moves unreadable newer steps out of the manager's way (kept for inspection), so
    that training past them can save those steps again."""
    root = str(mngr.directory)
    for step in steps:
      src = os.path.join(root, str(step))
      if os.path.isdir(src):
        dest = os.path.join(os.path.dirname(root), "corrupted",
                            f"{os.path.basename(root)}-step{step}-{int(time.time())}")
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.replace(src, dest)
        logging.warning("moved unreadable checkpoint step %d to %s", step, dest)
    if steps:
      mngr.reload()

  @staticmethod
  def _unreadable(mngr, step, error, explicit, quiet=False):
    signals.check("restore")  # orbax may have turned the signal into this error
    message = (f"checkpoint step {step} in {mngr.directory} is unreadable "
               f"({type(error).__name__}: {str(error)[:200]})")
    if explicit:
      raise ValueError(message)
    if not quiet:
      logging.warning("%s; falling back to the previous checkpoint", message)

  @staticmethod
  def _mismatch(mngr, step, saved, expected, saved_config, config):
    fields = config_diff(saved_config, config) if config is not None else []
    arrays = [f"{k}: checkpoint {saved.get(k)}, config {expected.get(k)}"
              for k in sorted(set(saved) | set(expected)) if saved.get(k) != expected.get(k)]
    lines = [f"checkpoint step {step} in {mngr.directory} does not fit this config: the "
             "arrays it holds have other shapes."]
    if fields:
      lines.append("config fields that differ from the checkpoint's: " + "; ".join(fields))
    lines.append("arrays that differ: " + "; ".join(arrays[:8]) +
                 (f" (and {len(arrays) - 8} more)" if len(arrays) > 8 else ""))
    lines.append("Use the run's own config (its config.json) or a fresh --workdir.")
    return "\n".join(lines)

  def steps(self, best: bool = False):
    return list((self.best if best else self.latest).all_steps())

  def wait(self):
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self):
    """Waits for the saves in flight and closes both managers (again: nothing)."""
    if not self._closed:
      self._closed = True
      self.latest.close()
      self.best.close()
