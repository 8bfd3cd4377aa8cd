"""Continual-learning protocols over a labelled dataset, built on device inside jit.

A protocol turns a `LabelledData` (`learners.datasets`) into a `Stream` of T steps of B
examples drawn uniformly with replacement. Tasks switch every `task_switch_every` steps
(0: one task forever), `task_id[t] = t // task_switch_every`, and task k changes the data:

- `permuted`: a fixed random permutation of the flattened input features
  (x'[i] = x[perm_k[i]]); task 0 is the identity.
- `split`: class-incremental; task k draws only classes (k*c + j) mod C, j < c, with
  c = classes_per_task; labels keep their global identity.
- `rotated`: images [H, W, C] rotated by k * rotation_degrees about their centre,
  bilinear; positive angles turn counter-clockwise as displayed (row 0 on top), so 90
  degrees is `np.rot90(image)`. Pixels from outside the image repeat the nearest edge.
- `label_permuted`: a fixed random permutation of the labels (y' = perm_k[y]); task 0
  is the identity.

Task k's randomness comes from `fold_in(key, k)`, step t's from `fold_in(key, t)`. The covariate and label fields of the
spec act as on synthetic streams, after the protocol: flattened features are scaled by
`input_std` (input_scale and skew), and a fraction label_noise of labels is
replaced by uniform random classes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from learners.stream_base import Cursor, Stream, StreamSpec, input_std

if TYPE_CHECKING:
  from learners import datasets

PROTOCOLS = ("permuted", "split", "rotated", "label_permuted")


def load_data(spec: StreamSpec) -> datasets.LabelledData:
  """The dataset `spec` names, on device."""
  from learners import datasets  # TFDS takes a second to import: only when used
  return datasets.load_labelled(spec.dataset, spec.data_dir, spec.split)


def signature(spec: StreamSpec, data: datasets.LabelledData):
  """(task, x_shape, out_dim) of the stream: classification over the dataset's classes."""
  del spec
  return "classification", tuple(data.x.shape[1:]), data.n_classes


def check(spec: StreamSpec, data: datasets.LabelledData) -> None:
  """Errors for specs this data cannot serve; only static facts, so fine under jit."""
  if spec.protocol not in PROTOCOLS:
    raise ValueError(f"stream.protocol={spec.protocol!r} is not allowed; choose one of "
                     f"{list(PROTOCOLS)}.")
  if spec.drift > 0:
    raise ValueError(f"stream.drift={spec.drift} has no meaning for dataset streams "
                     f"(there is no labeller to drift); set it to 0, or use "
                     f"task_switch_every and a protocol to change the task.")
  if spec.protocol == "rotated" and data.x.ndim != 4:
    raise ValueError(f"protocol 'rotated' needs images x [N, H, W, C]; dataset "
                     f"{spec.dataset!r} has x of shape {tuple(data.x.shape)}.")
  if spec.protocol == "split" and not 1 <= spec.classes_per_task <= data.n_classes:
    raise ValueError(f"stream.classes_per_task={spec.classes_per_task} must be in "
                     f"[1, {data.n_classes}] (the classes of {spec.dataset!r}).")


def protocol_stream(spec: StreamSpec, key: jax.Array,
                    data: datasets.LabelledData) -> Stream:
  """A stream of spec.horizon steps of spec.batch examples; jittable with `spec` static."""
  return protocol_steps(spec, key, data, 0, spec.horizon)


def start(spec: StreamSpec, key: jax.Array, data=None) -> Cursor:
  """The cursor of a protocol stream: its key (every step is drawn from it alone)."""
  del spec, data
  return Cursor(key)


def advance(spec: StreamSpec, cursor: Cursor, data: datasets.LabelledData, first,
            length: int) -> tuple[Cursor, Stream]:
  """Steps first .. first + length - 1 (`streams.advance`); the cursor does not change."""
  return cursor, protocol_steps(spec, cursor.key, data, first, length)


def protocol_steps(spec: StreamSpec, key: jax.Array, data: datasets.LabelledData,
                   first, length: int) -> Stream:
  """Steps first .. first + length - 1 of `protocol_stream(spec, key, data)` (`first`
  may be traced): step t draws from fold_in(k, t) of each of its keys, so any run of
  steps can be generated alone."""
  check(spec, data)
  k_sample, k_task, k_flip, k_rand = jax.random.split(key, 4)
  T, B, C = length, spec.batch, data.n_classes
  steps = first + jnp.arange(T, dtype=jnp.int32)
  per_step = lambda k, draw: jax.vmap(lambda t: draw(jax.random.fold_in(k, t)))(steps)
  every = spec.task_switch_every
  task_id = steps // every if every else jnp.zeros(T, jnp.int32)
  task_keys = jax.vmap(lambda k: jax.random.fold_in(k_task, k))(task_id)

  if spec.protocol == "split":
    index = _split_index(spec, k_sample, steps, data, task_id)
  else:
    index = per_step(k_sample, lambda k: jax.random.randint(k, (B,), 0, data.x.shape[0]))
  x, y = data.x[index], data.y[index]

  feature_shape = data.x.shape[1:]
  dim = math.prod(feature_shape)
  first_task = (task_id == 0)[:, None]
  if spec.protocol == "permuted":
    perms = jax.vmap(lambda k: jax.random.permutation(k, dim))(task_keys)
    perms = jnp.where(first_task, jnp.arange(dim), perms)
    x = jnp.take_along_axis(x.reshape(T, B, dim), perms[:, None, :], axis=-1)
  elif spec.protocol == "rotated":
    angles = jnp.deg2rad(spec.rotation_degrees) * task_id
    x = jax.vmap(lambda imgs, a: jax.vmap(lambda im: rotate(im, a))(imgs))(x, angles)
  elif spec.protocol == "label_permuted":
    perms = jax.vmap(lambda k: jax.random.permutation(k, C))(task_keys)
    perms = jnp.where(first_task, jnp.arange(C), perms)
    y = jnp.take_along_axis(perms, y, axis=-1)

  x = x.reshape(T, B, dim) * input_std(spec.replace(dim=dim))
  flip = per_step(k_flip, lambda k: jax.random.uniform(k, (B,))) < spec.label_noise
  y = jnp.where(flip, per_step(k_rand, lambda k: jax.random.randint(k, (B,), 0, C)), y)
  return Stream(x=x.reshape((T, B) + feature_shape), y=y.astype(jnp.int32),
                        task_id=task_id)


def _split_index(spec, key, steps, data, task_id):
  """Example indices [T, B], uniform over the examples of each step's allowed classes;
  step t draws from fold_in(key, t)."""
  C, c = data.n_classes, spec.classes_per_task
  order = jnp.argsort(data.y, stable=True)  # examples grouped by class
  counts = jnp.bincount(data.y, length=C)
  starts = jnp.cumsum(counts) - counts
  classes = (task_id[:, None] * c + jnp.arange(c)) % C  # [T, c]
  ends = jnp.cumsum(counts[classes], axis=-1)  # [T, c]: allowed examples laid end to end
  u = jax.vmap(lambda t, end: jax.random.randint(jax.random.fold_in(key, t),
                                                 (spec.batch,), 0, end))(steps, ends[:, -1])
  slot = (u[..., None] >= ends[:, None, :]).sum(-1)  # which allowed class u falls in
  cls = jnp.take_along_axis(classes, slot, axis=-1)
  offset = u - (jnp.take_along_axis(ends, slot, axis=-1) - counts[cls])
  return order[starts[cls] + offset]


def rotate(image: jax.Array, angle: jax.Array) -> jax.Array:
  """image [H, W, C] turned counter-clockwise by `angle` radians about its centre."""
  H, W, _ = image.shape
  ci, cj = (H - 1) / 2, (W - 1) / 2
  di, dj = jnp.meshgrid(jnp.arange(H) - ci, jnp.arange(W) - cj, indexing="ij")
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  # Output pixel (i, j) reads the input where the inverse rotation sends it.
  rows = ci + cos * di + sin * dj
  cols = cj - sin * di + cos * dj
  sample = lambda ch: jax.scipy.ndimage.map_coordinates(ch, [rows, cols], order=1,
                                                        mode="nearest")
  return jax.vmap(sample, in_axes=-1, out_axes=-1)(image)
