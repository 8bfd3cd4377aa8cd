"""Synthetic streams: labellers drawn from the key, switching or drifting, on Gaussian
inputs or on a real dataset's inputs through a fixed projection (`real_inputs`), and
the forgetting schedule `ab_then_a` (tasks A, B alternating for the first half of the
horizon, then A alone; `forgetting_probes` gives held-out examples of B).

A source of `learners.streams`: start / advance / load_data / signature.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from learners import networks
from learners.stream_base import Cursor, Stream, StreamSpec, _check_int, input_std


def _labeller_init(spec: StreamSpec, key: jax.Array):
  out = spec.n_classes if spec.task == "classification" else spec.out_dim
  width = spec.labeller_width if spec.kind.startswith("mlp") else 0
  return networks.init_mlp(key, spec.dim, out, width=width, depth=1 if width else 0)


def _labeller_apply(spec: StreamSpec, params, x):
  """Labeller outputs [B, out]: NTK-scaled, so targets have unit scale for any dim."""
  act = networks.ACTIVATIONS.index("tanh")
  return networks.apply_mlp(params, x, act)


def _targets(spec: StreamSpec, out: jax.Array) -> jax.Array:
  """Noise-free targets of labeller outputs [B, out]: int32 classes [B] or the outputs."""
  if spec.task == "classification":
    return jnp.argmax(out, axis=-1).astype(jnp.int32)
  return out


def _sample_inputs(spec: StreamSpec, data: RealInputs | None, key: jax.Array,
                   n: int) -> jax.Array:
  """n inputs [n, dim] from the stream's distribution: Gaussian or real rows, scaled by
  input_std."""
  if spec.real_inputs:
    rows = data.x[jax.random.randint(key, (n,), 0, data.x.shape[0])]
  else:
    rows = jax.random.normal(key, (n, spec.dim))
  return rows * input_std(spec)


def _ab_keys(init_key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Keys of labellers A and B under `ab_then_a`: A's is the switch schedule's first."""
  return init_key, jax.random.fold_in(init_key, 1)


def synthetic_stream(spec: StreamSpec, key: jax.Array,
                     data: RealInputs | None = None) -> Stream:
  """One synthetic stream from a key; jittable with `spec` static.

  Inputs are x ~ N(0, diag(input_std^2)), or with `spec.real_inputs` rows of `data.x`
  (`load_data`) drawn uniformly with replacement, times input_std.

  Schedule `switch`: every `task_switch_every` steps (0: never) the labeller is redrawn
  and `task_id` increments. Schedule `ab_then_a`: labellers A (task 0) and B (task 1)
  are drawn once from the key (`forgetting_probes` documents how); steps
  t < horizon // 2 alternate A, B, A, B, ... and every later step uses A.

  Between switches each labeller's weights follow the AR(1) drift
  w <- sqrt(1 - drift^2) w + drift * eps, which keeps their N(0, 1) marginals; under
  `ab_then_a` both labellers drift at every step, whichever one labels it.

  Step t draws from fold_in(step_key, t) (split(step_key, horizon)[t] under JAX's
  default partitionable threefry), so any run of steps can be generated alone
  (`advance`).
  """
  return advance(spec, start(spec, key), data, 0, spec.horizon)[1]


def start(spec: StreamSpec, key: jax.Array, data: RealInputs | None = None) -> Cursor:
  """The cursor before step 0: the step key and the first labellers."""
  del data
  init_key, step_key = jax.random.split(key)
  if spec.schedule == "ab_then_a":
    labellers = tuple(_labeller_init(spec, k) for k in _ab_keys(init_key))
  else:
    labellers = (_labeller_init(spec, init_key),)
  return Cursor(step_key, labellers)


def advance(spec: StreamSpec, cursor: Cursor, data: RealInputs | None, first,
            length: int) -> tuple[Cursor, Stream]:
  """Steps first .. first + length - 1 and the cursor after them (`streams.advance`)."""
  _check_data(spec, data)
  steps = first + jnp.arange(length)
  keys = jax.vmap(lambda t: jax.random.fold_in(cursor.key, t))(steps)
  every = spec.task_switch_every
  ab = spec.schedule == "ab_then_a"
  if ab:
    task_id = jnp.where(steps < spec.horizon // 2, steps % 2, 0)
  else:
    task_id = steps // every if every else jnp.zeros_like(steps)

  def step(labellers, inputs):
    t, task, k = inputs
    k_switch, k_drift, k_x, k_noise, k_flip, k_rand = jax.random.split(k, 6)
    if every:
      fresh = _labeller_init(spec, k_switch)
      switch = (t % every == 0) & (t > 0)
      labellers = (jax.tree.map(lambda a, b: jnp.where(switch, b, a), labellers[0],
                                fresh),)
    if spec.drift:
      c = jnp.sqrt(1.0 - spec.drift**2)
      # N(0, 1) per leaf from split(k_drift, n_leaves) in leaf order (optax's helper).
      noise = optax.tree.random_like(k_drift, labellers)
      labellers = jax.tree.map(lambda l, n: c * l + spec.drift * n, labellers, noise)
    labeller = labellers[0]
    if ab:
      labeller = jax.tree.map(lambda a, b: jnp.where(task == 1, b, a), *labellers)
    x = _sample_inputs(spec, data, k_x, spec.batch)
    out = _labeller_apply(spec, labeller, x)
    y = _targets(spec, out)
    if spec.task == "classification":
      flip = jax.random.uniform(k_flip, (spec.batch,)) < spec.label_noise
      y = jnp.where(flip, jax.random.randint(k_rand, (spec.batch,), 0, spec.n_classes), y)
    else:
      y = y + spec.noise * jax.random.normal(k_noise, out.shape)
    return labellers, (x, y)

  labellers, (x, y) = jax.lax.scan(step, cursor.labellers, (steps, task_id, keys))
  return cursor._replace(labellers=labellers), Stream(x=x, y=y,
                                                      task_id=task_id.astype(jnp.int32))


def forgetting_probes(spec: StreamSpec, key: jax.Array, n: int,
                      data: RealInputs | None = None) -> tuple[jax.Array, jax.Array]:
  """n held-out examples of task B of the `ab_then_a` stream `make_stream(spec, key,
  data)`: x [n, dim] from the stream's input distribution, y [n, out_dim] float32 or
  [n] int32 from that stream's labeller B as drawn (before any drift), without target
  or label noise. Jittable with `spec` and `n` static.

  Key derivation: the stream splits `key` into (init_key, step_key) and the steps use
  only step_key; A is drawn from init_key, B from fold_in(init_key, 1), and the probe
  inputs from fold_in(init_key, 2).
  """
  if spec.schedule != "ab_then_a":
    raise ValueError(f"forgetting_probes needs stream.schedule='ab_then_a', not "
                     f"{spec.schedule!r}.")
  _check_int("forgetting_probes n", n, low=1)
  _check_data(spec, data)
  init_key, _ = jax.random.split(key)
  _, b_key = _ab_keys(init_key)
  x = _sample_inputs(spec, data, jax.random.fold_in(init_key, 2), n)
  return x, _targets(spec, _labeller_apply(spec, _labeller_init(spec, b_key), x))


# -------------------------------------------------------------------------- real inputs


class RealInputs(NamedTuple):
  """x [N, dim] float32: a dataset split flattened, projected by `real_projection` and
  standardized per feature (mean 0, std 1)."""

  x: jax.Array


def real_projection(in_dim: int, dim: int) -> np.ndarray:
  """The fixed map [in_dim, dim] (float64) from flattened dataset features to stream
  features; the same for every teacher and every run.

  Q is the QR factor of a standard normal [max(in_dim, dim), min(in_dim, dim)] matrix
  drawn from `jax.random.key(0)`, with column signs making diag(R) > 0 (so Q is unique
  and Haar-distributed). For dim <= in_dim the map is Q (orthonormal columns: inputs
  of identity covariance give outputs of identity covariance); otherwise it is
  sqrt(dim / in_dim) Q^T (orthonormal rows, rescaled so outputs have unit variance on
  average over features, though only in_dim of them are linearly independent).
  """
  shape = (max(in_dim, dim), min(in_dim, dim))
  g = np.asarray(jax.random.normal(jax.random.key(0), shape), np.float64)
  q, r = np.linalg.qr(g)
  q = q * np.sign(np.diag(r))
  return q if dim <= in_dim else np.sqrt(dim / in_dim) * q.T


def project_inputs(data: Any, dim: int) -> RealInputs:
  """`data.x` [N, ...] (a `LabelledData`) flattened, mapped by `real_projection` and
  standardized with its own per-feature mean and std, on the host, as `RealInputs`."""
  x = np.asarray(data.x, np.float64).reshape(data.x.shape[0], -1)
  z = x @ real_projection(x.shape[1], dim)
  # Per feature, because the projected features of real data differ in scale.
  z = (z - z.mean(0)) / np.maximum(z.std(0), 1e-8)
  return RealInputs(x=jnp.asarray(z, jnp.float32))


def _check_data(spec: StreamSpec, data: Any) -> None:
  """Errors for synthetic `data` that does not fit `spec`; only static facts."""
  if not spec.real_inputs:
    return
  if not isinstance(data, RealInputs):
    raise ValueError(f"stream.real_inputs={spec.real_inputs!r} needs the projected "
                     f"inputs: pass data=streams.load_data(spec), not "
                     f"{type(data).__name__}.")
  if data.x.shape[1:] != (spec.dim,):
    raise ValueError(f"real inputs of shape {tuple(data.x.shape)} do not fit "
                     f"stream.dim={spec.dim}; load them with this spec.")


def load_data(spec: StreamSpec) -> RealInputs | None:
  """None, or with `real_inputs` the dataset's train split (from spec.data_dir) as
  `RealInputs`. Load it once, on the host."""
  if not spec.real_inputs:
    return None
  from learners import datasets  # TFDS takes a second to import: only when used
  try:
    train = datasets.load_labelled(spec.real_inputs, spec.data_dir, "train")
  except ValueError as e:
    raise ValueError(f"stream.real_inputs={spec.real_inputs!r}: {e}") from e
  return project_inputs(train, spec.dim)


def signature(spec: StreamSpec, data: Any = None) -> tuple[str, tuple[int, ...], int]:
  """(task, x_shape, out_dim): the spec's task, (dim,) and its classes or targets."""
  del data
  out = spec.n_classes if spec.task == "classification" else spec.out_dim
  return spec.task, (spec.dim,), out
