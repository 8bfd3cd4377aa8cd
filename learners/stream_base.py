"""What every stream source shares: `Stream`, `Cursor`, the validated `StreamSpec`, and
the input scaling every kind applies (`input_std`). `learners.streams` dispatches on
`spec.kind` to the sources (`learners.synthetic`, `learners.protocols`,
`learners.npz`), each exposing start / advance / load_data / signature.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

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


def input_std(spec: StreamSpec) -> jax.Array:
  """Per-feature input std [dim]: variances i^-skew rescaled to mean 1, times input_scale."""
  var = jnp.arange(1, spec.dim + 1, dtype=jnp.float32) ** (-spec.skew)
  var = var / var.mean()
  return spec.input_scale * jnp.sqrt(var)
