"""Data streams: what a continual learner sees, one step at a time.

A `Stream` holds `x[T, B, ...]`, `y[T, B, ...]` and `task_id[T]` (DESIGN §2). Regression
targets are float `y[T, B, k]`; classification labels are int `y[T, B]`.

A `StreamSpec` is the static, validated description of a stream (sizes are static so it
can be a jit argument); `make_stream(spec, key, data)` builds one on device and is
jittable. Each kind comes from a source module with the same interface, `start`,
`advance`, `load_data` and `signature`: synthetic kinds (`learners.synthetic`) are
generated from the key; `dataset` kinds index a labelled dataset (`learners.protocols`)
loaded once onto the device; `npz` streams are a user's arrays (`learners.npz`),
consumed in order. Every source is resumable: `advance` generates any run of steps from
a `Cursor`, and consecutive runs give `make_stream`'s arrays.
"""

from __future__ import annotations

from typing import Any

import jax

from learners import npz, protocols, synthetic
# The shared types and the synthetic helpers, as one public API.
from learners.stream_base import KINDS, SYNTHETIC_KINDS, Cursor, Stream, StreamSpec, input_std
from learners.synthetic import forgetting_probes, project_inputs, synthetic_stream

SOURCES = {**{kind: synthetic for kind in SYNTHETIC_KINDS}, "dataset": protocols,
           "npz": npz}


def make_stream(spec: StreamSpec, key: jax.Array, data: Any = None) -> Stream:
  """Builds the stream `spec` describes; `data` is what `load_data(spec)` returned."""
  return advance(spec, start(spec, key, data), data, 0, spec.horizon)[1]


def start(spec: StreamSpec, key: jax.Array, data: Any = None) -> Cursor:
  """The cursor before step 0 of the stream `make_stream(spec, key, data)`."""
  return SOURCES[spec.kind].start(spec, key, data)


def advance(spec: StreamSpec, cursor: Cursor, data: Any, first,
            length: int) -> tuple[Cursor, Stream]:
  """Steps first .. first + length - 1 of the stream (`first` may be traced, `length`
  is static), and the cursor after them: generating a stream in consecutive runs gives
  `make_stream`'s arrays, with memory for one run. Jittable with `spec` static."""
  return SOURCES[spec.kind].advance(spec, cursor, data, first, length)


def load_data(spec: StreamSpec) -> Any:
  """The on-device data `make_stream` needs for `spec`: for synthetic kinds None, or
  `RealInputs` with `real_inputs`; a `LabelledData` for `dataset` kinds, an `NpzData`
  for `npz`. Load it once, on the host."""
  return SOURCES[spec.kind].load_data(spec)


def signature(spec: StreamSpec, data: Any = None) -> tuple[str, tuple[int, ...], int]:
  """(task, x_shape, out_dim) of the streams `spec` makes from `data` (`load_data`);
  out_dim is the number of classes for classification, the target width otherwise."""
  return SOURCES[spec.kind].signature(spec, data)
