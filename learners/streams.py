"""Data streams: what a continual learner sees, one step at a time.

A `Stream` holds `x[T, B, ...]`, `y[T, B, ...]` and `task_id[T]` (DESIGN §2). Regression
targets are float `y[T, B, k]`; classification labels are int `y[T, B]`.

A `StreamSpec` is the static, validated description of a stream (sizes are static so it
can be a jit argument); `make_stream(spec, key, data)` builds one on device and is
jittable. Synthetic kinds are generated from the key; `dataset` kinds index a labelled
dataset (`learners.protocols`) loaded once onto the device; `npz` streams are a user's
arrays (`learners.npz`), consumed in order.

Synthetic streams can take their inputs from a real dataset (`real_inputs`, see
`real_projection`) and can follow the forgetting schedule `ab_then_a` (tasks A, B
alternating for the first half of the horizon, then A alone; `forgetting_probes` gives
held-out examples of B).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from learners import networks

SYNTHETIC_KINDS = (
    "linear_regression",
    "mlp_regression",
    "linear_classification",
    "mlp_classification",
)
KINDS = SYNTHETIC_KINDS + ("dataset", "npz")
SCHEDULES = ("switch", "ab_then_a")


class Stream(NamedTuple):
  """x: [T, B, ...] float32; y: [T, B, k] float32 or [T, B] int32; task_id: [T] int32."""

  x: jax.Array
  y: jax.Array
  task_id: jax.Array

  @property
  def horizon(self) -> int:
    return self.x.shape[0]

  @property
  def batch(self) -> int:
    return self.x.shape[1]


class Cursor(NamedTuple):
  """Where a stream stands between two runs of steps: its key, and for synthetic kinds
  the labellers in force (they switch and drift)."""

  key: jax.Array
  labellers: Any = ()


@dataclasses.dataclass(frozen=True)
class StreamSpec:
  """Static description of a stream; see `launch/configs/default.py` for field docs."""

  kind: str = "linear_regression"
  horizon: int = 128
  batch: int = 1
  dim: int = 8
  n_classes: int = 4
  out_dim: int = 1
  labeller_width: int = 32
  task_switch_every: int = 0
  drift: float = 0.0
  noise: float = 0.1
  label_noise: float = 0.0
  input_scale: float = 1.0
  skew: float = 0.0
  # dataset kinds (learners.protocols)
  dataset: str = "digits"
  protocol: str = "permuted"
  split: str = "train"
  data_dir: str | None = None
  classes_per_task: int = 2
  rotation_degrees: float = 30.0
  # npz kind (learners.npz)
  npz_path: str | None = None
  # synthetic kinds: inputs from this dataset's train split ("": Gaussian); see
  # `real_projection`. Read from data_dir like the dataset kind.
  real_inputs: str = ""
  # synthetic kinds: "switch" (a new labeller every task_switch_every steps) or
  # "ab_then_a" (see `synthetic_stream`).
  schedule: str = "switch"

  def __post_init__(self):
    _check_choice("stream.kind", self.kind, KINDS)
    for name in ("horizon", "batch"):
      _check_int(f"stream.{name}", getattr(self, name), low=1)
    if self.kind in SYNTHETIC_KINDS:
      _check_int("stream.dim", self.dim, low=1)
      _check_int("stream.labeller_width", self.labeller_width, low=1)
      if self.task == "classification":
        _check_int("stream.n_classes", self.n_classes, low=2)
      else:
        _check_int("stream.out_dim", self.out_dim, low=1)
    _check_int("stream.task_switch_every", self.task_switch_every, low=0)
    _check_range("stream.drift", self.drift, 0.0, 1.0)
    _check_range("stream.noise", self.noise, 0.0, float("inf"))
    _check_range("stream.label_noise", self.label_noise, 0.0, 1.0)
    _check_range("stream.input_scale", self.input_scale, 0.0, float("inf"), open_low=True)
    _check_range("stream.skew", self.skew, 0.0, float("inf"))
    if self.kind == "npz" and not self.npz_path:
      raise ValueError("stream.kind='npz' needs stream.npz_path (or --stream_npz=FILE).")
    if not isinstance(self.real_inputs, str):
      raise ValueError(f"stream.real_inputs={self.real_inputs!r} must be a dataset name "
                       f"(e.g. 'digits', 'mnist1d') or '' for Gaussian inputs.")
    if self.real_inputs and self.kind not in SYNTHETIC_KINDS:
      raise ValueError(
          f"stream.real_inputs={self.real_inputs!r} only applies to synthetic kinds "
          f"{list(SYNTHETIC_KINDS)}, not kind={self.kind!r}; a dataset stream names its "
          f"data with stream.dataset.")
    _check_choice("stream.schedule", self.schedule, SCHEDULES)
    if self.schedule == "ab_then_a":
      if self.kind not in SYNTHETIC_KINDS:
        raise ValueError(f"stream.schedule='ab_then_a' needs a synthetic kind "
                         f"{list(SYNTHETIC_KINDS)}, not kind={self.kind!r}.")
      if self.task_switch_every:
        raise ValueError(f"stream.task_switch_every={self.task_switch_every} conflicts "
                         f"with stream.schedule='ab_then_a', which fixes the task of "
                         f"every step; set task_switch_every=0.")
      if self.horizon < 4:
        raise ValueError(f"stream.horizon={self.horizon} is too short for schedule "
                         f"'ab_then_a': its first half needs a B step, so horizon >= 4.")

  @classmethod
  def from_config(cls, config: Any) -> "StreamSpec":
    """Builds a spec from an ml_collections ConfigDict (or dict); unknown keys are errors."""
    values = dict(config.items()) if hasattr(config, "items") else dict(config)
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - allowed)
    if unknown:
      raise ValueError(
          f"unknown stream config field(s) {unknown}; allowed: {sorted(allowed)}")
    return cls(**values)

  def replace(self, **changes) -> "StreamSpec":
    return dataclasses.replace(self, **changes)

  @property
  def task(self) -> str:
    """'regression' or 'classification' for synthetic kinds (dataset/npz: from data)."""
    return "classification" if self.kind.endswith("classification") else "regression"


def _check_choice(name, value, allowed):
  if value not in allowed:
    raise ValueError(f"{name}={value!r} is not allowed; choose one of {list(allowed)}.")


def _check_int(name, value, low):
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise ValueError(f"{name}={value!r} must be an integer >= {low}.")


def _check_range(name, value, low, high, open_low=False):
  ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  ok = ok and (value > low if open_low else value >= low) and value <= high
  if not ok:
    bracket = "(" if open_low else "["
    raise ValueError(f"{name}={value!r} must be a number in {bracket}{low}, {high}].")


# ----------------------------------------------------------------------------- synthetic


def input_std(spec: StreamSpec) -> jax.Array:
  """Per-feature input std [dim]: variances i^-skew rescaled to mean 1, times input_scale."""
  var = jnp.arange(1, spec.dim + 1, dtype=jnp.float32) ** (-spec.skew)
  var = var / var.mean()
  return spec.input_scale * jnp.sqrt(var)


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
  return _synthetic_advance(spec, _synthetic_start(spec, key), data, 0, spec.horizon)[1]


def _synthetic_start(spec: StreamSpec, key: jax.Array) -> Cursor:
  init_key, step_key = jax.random.split(key)
  if spec.schedule == "ab_then_a":
    labellers = tuple(_labeller_init(spec, k) for k in _ab_keys(init_key))
  else:
    labellers = (_labeller_init(spec, init_key),)
  return Cursor(step_key, labellers)


def _synthetic_advance(spec: StreamSpec, cursor: Cursor, data: RealInputs | None,
                       first, length: int) -> tuple[Cursor, Stream]:
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
      leaves, tree = jax.tree.flatten(labellers)
      noise = [jax.random.normal(kk, l.shape) for kk, l in
               zip(jax.random.split(k_drift, len(leaves)), leaves)]
      labellers = tree.unflatten([c * l + spec.drift * n for l, n in zip(leaves, noise)])
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


# ----------------------------------------------------------------------------- dispatch


def make_stream(spec: StreamSpec, key: jax.Array, data: Any = None) -> Stream:
  """Builds the stream `spec` describes; `data` is what `load_data(spec)` returned."""
  return advance(spec, start(spec, key, data), data, 0, spec.horizon)[1]


def start(spec: StreamSpec, key: jax.Array, data: Any = None) -> Cursor:
  """The cursor before step 0 of the stream `make_stream(spec, key, data)`."""
  del data
  if spec.kind in SYNTHETIC_KINDS:
    return _synthetic_start(spec, key)
  return Cursor(key)


def advance(spec: StreamSpec, cursor: Cursor, data: Any, first,
            length: int) -> tuple[Cursor, Stream]:
  """Steps first .. first + length - 1 of the stream (`first` may be traced, `length`
  is static), and the cursor after them: generating a stream in consecutive runs gives
  `make_stream`'s arrays, with memory for one run. Jittable with `spec` static."""
  if spec.kind in SYNTHETIC_KINDS:
    return _synthetic_advance(spec, cursor, data, first, length)
  if spec.kind == "dataset":
    from learners import protocols
    return cursor, protocols.protocol_steps(spec, cursor.key, data, first, length)
  from learners import npz
  return cursor, npz.npz_steps(spec, data, first, length)


def load_data(spec: StreamSpec) -> Any:
  """The on-device data `make_stream` needs for `spec`: for synthetic kinds None, or
  `RealInputs` with `real_inputs` (the dataset's train split, from spec.data_dir); a
  `LabelledData` for `dataset` kinds, an `NpzData` for `npz`. Load it once, on the
  host."""
  if spec.kind in SYNTHETIC_KINDS:
    if not spec.real_inputs:
      return None
    from learners import datasets
    try:
      train = datasets.load_labelled(spec.real_inputs, spec.data_dir, "train")
    except ValueError as e:
      raise ValueError(f"stream.real_inputs={spec.real_inputs!r}: {e}") from e
    return project_inputs(train, spec.dim)
  if spec.kind == "dataset":
    from learners import protocols
    return protocols.load(spec)
  from learners import npz
  return npz.load(spec.npz_path)


def signature(spec: StreamSpec, data: Any = None) -> tuple[str, tuple[int, ...], int]:
  """(task, x_shape, out_dim) of the streams `spec` makes from `data` (`load_data`);
  out_dim is the number of classes for classification, the target width otherwise."""
  if spec.kind in SYNTHETIC_KINDS:
    out = spec.n_classes if spec.task == "classification" else spec.out_dim
    return spec.task, (spec.dim,), out
  if spec.kind == "dataset":
    from learners import protocols
    return protocols.signature(spec, data)
  from learners import npz
  return npz.signature(spec, data)
