"""Devices: the `data` mesh the teacher batch is sharded over, and multi-host start-up.

Meta-params are replicated; every per-teacher array (keys, streams, trajectories, imitator
states) is sharded along its leading axis over the `data` axis, so XLA runs each
device's teachers locally and all-reduces the meta-gradient.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh

_initialized = False


def initialize_distributed(enabled: bool) -> None:
  """`jax.distributed.initialize()` once, for multi-host runs (TPU pods, multi-GPU hosts);
  the coordinator and process ids come from the environment (see BUILD_NOTES.md)."""
  global _initialized
  if enabled and not _initialized:
    jax.distributed.initialize()
    _initialized = True


def is_primary() -> bool:
  """Whether this process writes the workdir's files (config.json, metrics.jsonl,
  reports); orbax coordinates checkpoint writes across processes itself."""
  return jax.process_index() == 0


def any_process(flag: bool) -> bool:
  """Whether `flag` holds on any process; every process gets the same answer (a
  collective: all processes must call it at the same point)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def agreed_flag(flag: bool, step: int, every: int) -> bool:
  """`flag` as every process agrees on it after `step`: on one process at once; on
  several `any_process`, asked only every `every` steps (it waits for the devices, which
  a training loop should not do every step), so all of them act after the same step."""
  if jax.process_count() == 1:
    return bool(flag)
  return step % every == 0 and any_process(flag)


def data_mesh() -> Mesh:
  """A 1-d mesh named 'data' over every device of every process. Its axis is `Auto`
  (sharding propagated by XLA, as with a plain `Mesh`), not `make_mesh`'s default
  `Explicit`. On CPU the devices keep `jax.devices()`'s order, on GPU their id order;
  on TPU `make_mesh` orders them along the physical ring for the all-reduce."""
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
