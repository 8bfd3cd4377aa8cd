"""Data streams: what a continual learner sees, one step at a time.

A `Stream` holds `x[T, B, ...]`, `y[T, B, ...]` and `task_id[T]` (DESIGN §2). Regression
targets are float `y[T, B, k]`; classification labels are int `y[T, B]`.

A `StreamSpec` is the static, validated description of a stream (sizes are static so it
can be a jit argument); `make_stream(spec, key, data)` builds one on device and is
jittable. Synthetic kinds are generated from the key; `dataset` kinds index a labelled
dataset (`learners.protocols`) loaded once onto the device; `npz` streams are a user's
arrays (`learners.npz`), consumed in order.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from learners import networks

SYNTHETIC_KINDS = (
    "linear_regression",
    "mlp_regression",
    "linear_classification",
    "mlp_classification",
)
KINDS = SYNTHETIC_KINDS + ("dataset", "npz")
TASKS = ("regression", "classification")


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


def synthetic_stream(spec: StreamSpec, key: jax.Array) -> Stream:
  """One synthetic stream from a key; jittable with `spec` static.

  Every `task_switch_every` steps (0: never) the labeller is redrawn and `task_id`
  increments; between switches its weights follow the AR(1) drift
  w <- sqrt(1 - drift^2) w + drift * eps, which keeps their N(0, 1) marginals.
  """
  init_key, step_key = jax.random.split(key)
  std = input_std(spec)
  keys = jax.random.split(step_key, spec.horizon)
  steps = jnp.arange(spec.horizon)
  every = spec.task_switch_every
  task_id = steps // every if every else jnp.zeros_like(steps)

  def step(labeller, inputs):
    t, k = inputs
    k_switch, k_drift, k_x, k_noise, k_flip, k_rand = jax.random.split(k, 6)
    if every:
      fresh = _labeller_init(spec, k_switch)
      switch = (t % every == 0) & (t > 0)
      labeller = jax.tree.map(lambda a, b: jnp.where(switch, b, a), labeller, fresh)
    if spec.drift:
      c = jnp.sqrt(1.0 - spec.drift**2)
      leaves, tree = jax.tree.flatten(labeller)
      noise = [jax.random.normal(kk, l.shape) for kk, l in
               zip(jax.random.split(k_drift, len(leaves)), leaves)]
      labeller = tree.unflatten([c * l + spec.drift * n for l, n in zip(leaves, noise)])
    x = jax.random.normal(k_x, (spec.batch, spec.dim)) * std
    out = _labeller_apply(spec, labeller, x)
    if spec.task == "classification":
      y = jnp.argmax(out, axis=-1)
      flip = jax.random.uniform(k_flip, (spec.batch,)) < spec.label_noise
      y = jnp.where(flip, jax.random.randint(k_rand, (spec.batch,), 0, spec.n_classes), y)
      y = y.astype(jnp.int32)
    else:
      y = out + spec.noise * jax.random.normal(k_noise, out.shape)
    return labeller, (x, y)

  labeller = _labeller_init(spec, init_key)
  _, (x, y) = jax.lax.scan(step, labeller, (steps, keys))
  return Stream(x=x, y=y, task_id=task_id.astype(jnp.int32))


def make_stream(spec: StreamSpec, key: jax.Array, data: Any = None) -> Stream:
  """Builds the stream `spec` describes; `data` is the on-device dataset for
  `dataset` kinds (`learners.protocols.load`) or the arrays of an `npz` stream."""
  if spec.kind in SYNTHETIC_KINDS:
    return synthetic_stream(spec, key)
  if spec.kind == "dataset":
    from learners import protocols
    return protocols.protocol_stream(spec, key, data)
  from learners import npz
  return npz.npz_stream(spec, key, data)


def load_data(spec: StreamSpec) -> Any:
  """The on-device data `make_stream` needs for `spec`: None for synthetic kinds, a
  `LabelledData` for `dataset` kinds, an `NpzData` for `npz`. Load it once, on the host."""
  if spec.kind in SYNTHETIC_KINDS:
    return None
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
