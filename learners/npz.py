"""A user's stream file: arrays in an .npz, consumed in order.

Flat format (what `save_stream` writes):

- `x [N, ...]` numeric inputs (at least one feature axis; [N, 1] for scalar inputs);
- `y [N]` int class labels (classification), `y [N]` float scalar targets (regression,
  read as [N, 1]) or `y [N, k]` float targets (regression with k outputs);
- `task_id [N]` int, optional (zeros);
- `n_classes` int scalar, optional (classification; default max label + 1).

A teacher dump (`learners.teacher_dump`: it has a `behaviour` key, with `x [T, B, ...]`,
`y [T, B]` or `[T, B, k]` and `task_id [T]`) is read as the flat stream it was recorded
on (`teacher_dump.flat_stream`), so `--stream_npz=teacher.npz` replays a dumped
teacher's stream.

Step t of a stream takes examples t*B .. t*B + B - 1; its task_id is its first example's.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from learners import teacher_dump
from learners.stream_base import Cursor, Stream, StreamSpec


# Beyond this scale the teachers' squared errors and updates overflow float32 within a
# few steps (and evaluation counts behaviour past 1e6 as a learner that blew up).
MAX_ABS = 1e6


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NpzData:
  """x [N, ...] float32; y [N] int32 or [N, k] float32; task_id [N] int32."""

  x: jax.Array
  y: jax.Array
  task_id: jax.Array
  task: str = jax.tree.static()
  n_classes: int = jax.tree.static()  # 0 for regression
  path: str = jax.tree.static(default="")


def open_archive(path: str, what: str, how: str) -> np.lib.npyio.NpzFile:
  """The npz archive at `path` (no pickles); ValueError naming `what` it should be
  (e.g. "stream file") when it is missing or not an archive, and `how` to write one."""
  if not os.path.isfile(path):
    raise ValueError(f"{what} {path!r} does not exist.")
  try:
    archive = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError, zipfile.BadZipFile):
    archive = None
  if not isinstance(archive, np.lib.npyio.NpzFile):
    raise ValueError(f"{what} {path!r} is not an .npz archive (write one with {how}).")
  return archive


def load(path: str) -> NpzData:
  """Reads and validates a stream file (flat or teacher dump) onto the device."""
  fail = lambda key, msg: ValueError(f"stream file {path!r}: key {key!r} {msg}")
  archive = open_archive(path, "stream file", "np.savez, with keys x and y")
  with archive:
    dump = teacher_dump.is_dump(archive.files)
    arrays = {}
    for key in ("x", "y", "task_id", "n_classes"):
      if key not in archive.files:
        continue
      try:
        arrays[key] = archive[key]
      except ValueError:  # object arrays need pickle, which a data file must not use
        raise fail(key, "holds Python objects; a numeric array is expected.") from None
  for key in ("x", "y"):
    if key not in arrays:
      raise fail(key, f"is missing; found keys {sorted(archive.files)}.")
  for key, a in arrays.items():
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
      raise fail(key, f"has dtype {a.dtype}; a real int or float array is expected.")
  if dump:
    x, y, task_id = teacher_dump.flat_stream(arrays, fail)
  else:
    x, y = arrays["x"], arrays["y"]
    if x.ndim < 2:
      raise fail("x", f"has shape {x.shape}; [N, ...] with at least one feature axis "
                      f"is expected ([N, 1] for scalar inputs).")
    task_id = arrays.get("task_id", np.zeros(len(x), np.int32))
  n = x.shape[0]
  if n == 0:
    raise fail("x", "holds no examples.")
  classification = np.issubdtype(y.dtype, np.integer)
  if (classification and y.ndim != 1) or y.ndim not in (1, 2):
    raise fail("y", f"has shape {y.shape} ({y.dtype}); expected int labels [N] or float "
                    f"targets [N] or [N, k].")
  if task_id.ndim != 1 or not np.issubdtype(task_id.dtype, np.integer):
    raise fail("task_id", f"has shape {task_id.shape} ({task_id.dtype}); int [N] is "
                          f"expected.")
  for key, a in (("y", y), ("task_id", task_id)):
    if a.shape[0] != n:
      raise fail(key, f"has {a.shape[0]} entries but x has {n} examples.")
  for key, a in (("x", x), ("y", y)):
    if not np.isfinite(a).all():
      raise fail(key, "holds NaN or inf values.")
    if a.size and np.abs(a).max() > MAX_ABS:
      raise fail(key, f"holds values up to {float(np.abs(a).max()):.3g}; allowed: "
                      f"|value| <= {MAX_ABS:g} (standardize the data).")
  if (task_id < 0).any():
    raise fail("task_id", "holds negative values.")

  if classification:
    if (y < 0).any():
      raise fail("y", "holds negative class labels.")
    n_classes = int(y.max()) + 1
    if "n_classes" in arrays:
      given = arrays["n_classes"]
      if (given.shape != () or not np.issubdtype(given.dtype, np.integer)
          or given < n_classes):
        raise fail("n_classes", f"is {given.tolist()!r}; an int scalar above every "
                                f"label (>= {n_classes}) is expected.")
      n_classes = int(given)
    if n_classes < 2:
      raise fail("y", "holds a single class; add an int scalar n_classes >= 2 to the "
                      "file.")
    y = jnp.asarray(y, jnp.int32)
  else:
    n_classes = 0
    y = jnp.asarray(y.reshape(n, -1), jnp.float32)
  return NpzData(x=jnp.asarray(x, jnp.float32), y=y,
                 task_id=jnp.asarray(task_id, jnp.int32),
                 task="classification" if classification else "regression",
                 n_classes=n_classes, path=path)


def signature(spec: StreamSpec, data: NpzData):
  """(task, x_shape, out_dim): out_dim is n_classes or the target width k."""
  del spec
  out = data.n_classes if data.task == "classification" else data.y.shape[1]
  return data.task, tuple(data.x.shape[1:]), out


def check_fits(data: NpzData, task: str, x_shape: tuple, out_dim: int,
               examples: int) -> None:
  """ValueError naming the file when its stream cannot stand in for a run's: another
  task (label type), input shape or output width, or fewer than `examples` examples."""
  where = f"stream file {data.path!r}"
  if data.task != task:
    kind = "int class labels" if task == "classification" else "float targets"
    raise ValueError(f"{where} holds {data.task} data (y {data.y.dtype}); the run needs "
                     f"{task}: y as {kind}.")
  if tuple(data.x.shape[1:]) != tuple(x_shape):
    raise ValueError(f"{where}: x has examples of shape {tuple(data.x.shape[1:])}; the "
                     f"run's inputs have shape {tuple(x_shape)} (x [N, "
                     f"{', '.join(map(str, x_shape))}]).")
  _, _, out = signature(None, data)
  if out != out_dim:
    what = "classes" if task == "classification" else "target columns"
    raise ValueError(f"{where} has {out} {what}; the run's imitators predict {out_dim}.")
  if data.x.shape[0] < examples:
    raise ValueError(f"{where} holds N={data.x.shape[0]} examples; allowed: at least "
                     f"{examples} (the training horizon times stream.batch).")


def check(spec: StreamSpec, data: NpzData) -> None:
  """The file must hold horizon * batch examples; shapes are static, so fine under jit."""
  n = data.x.shape[0]
  if n < spec.horizon * spec.batch:
    raise ValueError(
        f"stream file {data.path or spec.npz_path!r} holds N={n} examples, fewer than "
        f"horizon * batch = {spec.horizon} * {spec.batch} = {spec.horizon * spec.batch}; "
        f"lower stream.horizon or stream.batch.")


def npz_stream(spec: StreamSpec, key: jax.Array, data: NpzData) -> Stream:
  """The file's first horizon * batch examples as a [T, B, ...] stream (key unused)."""
  del key
  check(spec, data)
  return npz_steps(spec, data, 0, spec.horizon)


def load_data(spec: StreamSpec) -> NpzData:
  """The file spec.npz_path, on device (`load`)."""
  return load(spec.npz_path)


def start(spec: StreamSpec, key: jax.Array, data=None) -> Cursor:
  """The cursor of a file stream (consumed in order: nothing to carry)."""
  del spec, data
  return Cursor(key)


def advance(spec: StreamSpec, cursor: Cursor, data: NpzData, first,
            length: int) -> tuple[Cursor, Stream]:
  """Steps first .. first + length - 1 (`streams.advance`)."""
  return cursor, npz_steps(spec, data, first, length)


def npz_steps(spec: StreamSpec, data: NpzData, first, length: int) -> Stream:
  """Steps first .. first + length - 1 of `npz_stream` (`first` may be traced; the
  caller keeps first + length <= horizon)."""
  check(spec, data)
  B = spec.batch
  take = lambda a: jax.lax.dynamic_slice_in_dim(a, first * B, length * B).reshape(
      (length, B) + a.shape[1:])
  return Stream(x=take(data.x), y=take(data.y), task_id=take(data.task_id)[:, 0])


def save_stream(path: str, stream: Stream, n_classes: int | None = None) -> None:
  """Writes `stream` in the flat format; `n_classes` is stored for classification."""
  T, B = stream.x.shape[:2]
  flat = lambda a: np.asarray(a).reshape((T * B,) + a.shape[2:])
  extra = {} if n_classes is None else {"n_classes": np.int64(n_classes)}
  with open(path, "wb") as f:  # a file object: np.savez would append .npz to a name
    np.savez(f, x=flat(stream.x), y=flat(stream.y),
             task_id=np.repeat(np.asarray(stream.task_id), B), **extra)
