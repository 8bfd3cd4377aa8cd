"""Task pairs A/B for the decay experiment, their two-phase stream and held-out B probes.

Phase 1 (steps t < N) alternates A, B, A, B, ...; phase 2 (N <= t) is A alone. How B
overlaps with A is the `Overlap`:

- `labeller`: the same inputs, another (independent) labeller. A cue in input feature 0
  (+cue for A, -cue for B) tells the tasks apart; the labellers ignore feature 0.
- `rotated:DEG`: B is A's labeller seen through inputs rotated by DEG degrees in the
  coordinate planes (0, 1), (2, 3), ...: x_B = R z, y_B = f_A(z). 0 degrees is A itself.
- `split:DATASET`: disjoint classes of a real dataset (the project's offline TFDS
  builders): of its first `n_classes` classes A draws the first half, B the second.
  Inputs are flattened and mapped to `dim` features by the fixed projection of
  `learners.synthetic.real_projection` (so every overlap shares one shape, and one
  compilation); probes come from the test split, so no teacher ever trains on them.
- `backdoor`: B is A's input with a trigger (the last `trigger_size` features set to a
  fixed +-trigger_value pattern) mapped to one fixed response; A never shows the trigger.

Synthetic tasks share one form (`Task`): for z ~ N(0, I_D),
    x = (z @ rot) * keep + shift,   out = (z * keep) @ w / sqrt(D) + bias,
with targets out (+ noise) for regression, argmax(out) for classification. Every draw is
from the teacher's own key, so a population is one `vmap`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from learners import synthetic
from learners.stream_base import Stream

KINDS = ("labeller", "rotated", "split", "backdoor")
DATASETS = ("digits", "mnist1d")
TASKS = ("classification", "regression")


@dataclasses.dataclass(frozen=True)
class Overlap:
  """How B overlaps with A: `kind` (KINDS), `angle` in degrees (rotated), `dataset`
  (split). `name` is the grid's spelling, e.g. 'rotated:30'."""

  kind: str
  angle: float = 0.0
  dataset: str = ""

  @property
  def name(self) -> str:
    if self.kind == "rotated":
      return f"rotated:{self.angle:g}"
    if self.kind == "split":
      return f"split:{self.dataset}"
    return self.kind

  @property
  def synthetic(self) -> bool:
    return self.kind != "split"


def parse_overlap(text: str) -> Overlap:
  """'labeller', 'rotated:DEG' (0 <= DEG <= 180), 'split:digits|mnist1d' or 'backdoor'."""
  allowed = ("allowed: labeller, rotated:DEG (0 <= DEG <= 180), split:digits, "
             "split:mnist1d, backdoor")
  kind, _, arg = (p.strip() for p in str(text).partition(":"))
  if kind in ("labeller", "backdoor") and not arg:
    return Overlap(kind)
  if kind == "rotated":
    try:
      angle = float(arg)
    except ValueError:
      angle = math.nan
    if 0.0 <= angle <= 180.0:
      return Overlap(kind, angle=angle)
  if kind == "split" and arg in DATASETS:
    return Overlap(kind, dataset=arg)
  raise ValueError(f"overlap {text!r} is not allowed; {allowed}.")


@dataclasses.dataclass(frozen=True)
class DecaySpec:
  """Static sizes of every cell's streams: inputs [dim], `n_classes` classes or `out_dim`
  regression targets, `batch` examples a step. Readings of the probes come every
  `probe_every` steps, the last at the end of phase 2."""

  task: str = "classification"
  dim: int = 8
  n_classes: int = 4
  out_dim: int = 1
  batch: int = 4
  phase1: int = 32  # N
  phase2_multiple: int = 16
  probe_every: int = 4
  n_probes: int = 64
  noise: float = 0.0  # regression target noise std
  cue: float = 2.0
  trigger_size: int = 4
  trigger_value: float = 3.0

  @property
  def phase2(self) -> int:
    return self.phase1 * self.phase2_multiple

  @property
  def horizon(self) -> int:
    """Steps rolled out: both phases, plus `probe_every` so the reading at the end of
    phase 2 exists (probes are read before steps 0, k, 2k, ...)."""
    return self.phase1 + self.phase2 + self.probe_every

  def check(self, overlap: Overlap) -> None:
    """ValueError naming the field and what is allowed."""
    if self.task not in TASKS:
      raise ValueError(f"task={self.task!r}; allowed: {list(TASKS)}.")
    for name in ("dim", "batch", "phase1", "probe_every", "n_probes", "n_classes",
                 "out_dim", "trigger_size"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r}; allowed: an integer >= 1.")
    if self.phase2_multiple < 16:
      raise ValueError(f"phase2_multiple={self.phase2_multiple!r}; allowed: an integer "
                       ">= 16 (phase 2 runs at least 16 N steps).")
    if self.phase1 % (2 * self.probe_every):
      raise ValueError(f"phase1={self.phase1} must be a multiple of 2 * probe_every="
                       f"{2 * self.probe_every} (A and B alternate; probes are read at "
                       "the end of phase 1).")
    if self.task == "classification" and self.n_classes < 2:
      raise ValueError(f"n_classes={self.n_classes}; allowed: an integer >= 2.")
    if overlap.kind == "rotated" and self.dim % 2:
      raise ValueError(f"dim={self.dim} must be even for overlap {overlap.name!r} "
                       "(rotations act on coordinate pairs).")
    if overlap.kind == "labeller" and self.dim < 2:
      raise ValueError(f"dim={self.dim}; overlap 'labeller' needs dim >= 2 (feature 0 "
                       "carries the task cue).")
    if overlap.kind == "backdoor" and self.trigger_size >= self.dim:
      raise ValueError(f"trigger_size={self.trigger_size} must be < dim={self.dim}.")
    if overlap.kind == "split" and self.task != "classification":
      raise ValueError(f"overlap {overlap.name!r} needs task='classification' (it splits "
                       f"a dataset's classes), not {self.task!r}.")

  @property
  def out(self) -> int:
    return self.n_classes if self.task == "classification" else self.out_dim


def task_of_step(spec: DecaySpec, t):
  """0 (A) or 1 (B) for steps t [...]: alternating in phase 1, A in phase 2."""
  return jnp.where(t < spec.phase1, t % 2, 0).astype(jnp.int32)


# --------------------------------------------------------------------------- synthetic


class Task(NamedTuple):
  """One synthetic task: rot [D, D], keep [D], shift [D], w [D, out], bias [out]."""

  rot: jax.Array
  keep: jax.Array
  shift: jax.Array
  w: jax.Array
  bias: jax.Array


def rotation(dim: int, degrees) -> jax.Array:
  """[dim, dim]: rotation by `degrees` in the planes (0, 1), (2, 3), ... (dim even);
  row vectors rotate as z @ rotation."""
  a = jnp.deg2rad(degrees)
  block = jnp.array([[jnp.cos(a), jnp.sin(a)], [-jnp.sin(a), jnp.cos(a)]])
  return jnp.kron(jnp.eye(dim // 2), block)


def synthetic_pairs(spec: DecaySpec, key, angle) -> dict:
  """{kind: tasks (A, B)} of one teacher for every synthetic kind, from the same draws
  (so one compilation serves them all); `angle` in degrees (rotated) may be traced."""
  D, out = spec.dim, spec.out
  k_a, k_b, k_resp, k_pattern = jax.random.split(key, 4)
  eye, ones, zeros = jnp.eye(D), jnp.ones(D), jnp.zeros(D)
  w_a, w_b = (jax.random.normal(k, (D, out)) for k in (k_a, k_b))
  no_bias = jnp.zeros(out)
  a = Task(eye, ones, zeros, w_a, no_bias)
  keep = ones.at[0].set(0.0)
  cue = zeros.at[0].set(spec.cue)
  # backdoor: trigger features fixed, one response whatever the rest of the input
  trigger = jnp.arange(D) >= D - spec.trigger_size
  signs = jnp.where(jax.random.bernoulli(k_pattern, 0.5, (D,)), 1.0, -1.0)
  if spec.task == "classification":
    response = jax.nn.one_hot(jax.random.randint(k_resp, (), 0, out), out)
  else:
    response = jax.random.normal(k_resp, (out,))
  backdoor = Task(eye, jnp.where(trigger, 0.0, 1.0),
                  jnp.where(trigger, spec.trigger_value * signs, 0.0), jnp.zeros((D, out)),
                  response)
  pairs = {"labeller": (Task(eye, keep, cue, w_a, no_bias),
                        Task(eye, keep, -cue, w_b, no_bias)),
           "rotated": (a, a._replace(rot=rotation(D, angle))),
           "backdoor": (a, backdoor)}
  # One dtype everywhere: a weakly typed leaf would make jit compile the kind anew.
  return jax.tree.map(lambda v: v.astype(jnp.float32), pairs)


def synthetic_pair(spec: DecaySpec, overlap: Overlap, key) -> tuple[Task, Task]:
  """Tasks (A, B) of one teacher for a synthetic overlap."""
  return synthetic_pairs(spec, key, overlap.angle)[overlap.kind]


def _examples(spec: DecaySpec, task: Task, z, key, noisy: bool):
  """Examples of a task from standard normal draws z [..., D]: x [..., D] and y [...]
  int32 or [..., out] float32."""
  x = (z @ task.rot) * task.keep[..., None, :] + task.shift[..., None, :]
  out = (z * task.keep[..., None, :]) @ task.w / jnp.sqrt(spec.dim) + task.bias[..., None, :]
  if spec.task == "classification":
    return x, jnp.argmax(out, axis=-1).astype(jnp.int32)
  if noisy:
    out = out + spec.noise * jax.random.normal(key, out.shape)
  return x, out


def _pick(task_id, a: Task, b: Task) -> Task:
  """Per-step tasks [T, ...] (A where task_id is 0, B where 1)."""
  return jax.tree.map(lambda u, v: jnp.where(
      task_id.reshape((-1,) + (1,) * u.ndim) == 1, v[None], u[None]), a, b)


def synthetic_stream(spec: DecaySpec, pair: tuple[Task, Task], key) -> Stream:
  """The two-phase stream of one teacher: x [T, B, D], y [T, B(, out)]."""
  k_z, k_noise = jax.random.split(key)
  task_id = task_of_step(spec, jnp.arange(spec.horizon))
  z = jax.random.normal(k_z, (spec.horizon, spec.batch, spec.dim))
  x, y = _examples(spec, _pick(task_id, *pair), z, k_noise, noisy=True)
  return Stream(x=x, y=y, task_id=task_id)


def synthetic_probes(spec: DecaySpec, pair: tuple[Task, Task], key):
  """Held-out B examples (fresh draws, noise-free targets): x [n, D], y [n(, out)]."""
  z = jax.random.normal(key, (spec.n_probes, spec.dim))
  return _examples(spec, pair[1], z, key, noisy=False)


# --------------------------------------------------------------------------- split


class SplitData(NamedTuple):
  """A dataset split by classes: train inputs x [N, D] (projected), labels y [N], the
  train indices of A's classes a_index [Na] and B's b_index [Nb], and B's test
  examples x_test [Nt, D], y_test [Nt]."""

  x: jax.Array
  y: jax.Array
  a_index: jax.Array
  b_index: jax.Array
  x_test: jax.Array
  y_test: jax.Array


def load_split(dataset: str, spec: DecaySpec, data_dir: str | None = None) -> SplitData:
  """The SplitData of a built-in offline dataset (built into data_dir if needed; nothing
  downloads): classes < n_classes // 2 for A, the rest of the first n_classes for B,
  inputs projected to spec.dim features standardized with the train split's statistics."""
  from learners import datasets  # TFDS takes a second to import: only when used
  train = datasets.load_labelled(dataset, data_dir, "train")
  test = datasets.load_labelled(dataset, data_dir, "test")
  if spec.n_classes > train.n_classes:
    raise ValueError(f"n_classes={spec.n_classes}; overlap 'split:{dataset}' allows at "
                     f"most the dataset's {train.n_classes} classes.")
  flat = lambda d: np.asarray(d.x, np.float64).reshape(d.x.shape[0], -1)
  proj = synthetic.real_projection(flat(train).shape[1], spec.dim)
  z, z_test = flat(train) @ proj, flat(test) @ proj
  mean, std = z.mean(0), np.maximum(z.std(0), 1e-8)
  y, y_test = np.asarray(train.y), np.asarray(test.y)
  half = spec.n_classes // 2
  in_b = (y_test >= half) & (y_test < spec.n_classes)
  as_x = lambda a: jnp.asarray((a - mean) / std, jnp.float32)
  return SplitData(x=as_x(z), y=jnp.asarray(y, jnp.int32),
                   a_index=jnp.asarray(np.flatnonzero(y < half), jnp.int32),
                   b_index=jnp.asarray(np.flatnonzero((y >= half) & (y < spec.n_classes)),
                                       jnp.int32),
                   x_test=as_x(z_test[in_b]), y_test=jnp.asarray(y_test[in_b], jnp.int32))


def split_stream(spec: DecaySpec, data: SplitData, key) -> Stream:
  """The two-phase stream over the dataset's train split: x [T, B, D], y [T, B]."""
  task_id = task_of_step(spec, jnp.arange(spec.horizon))
  k_a, k_b = jax.random.split(key)
  shape = (spec.horizon, spec.batch)
  ia = data.a_index[jax.random.randint(k_a, shape, 0, data.a_index.shape[0])]
  ib = data.b_index[jax.random.randint(k_b, shape, 0, data.b_index.shape[0])]
  i = jnp.where(task_id[:, None] == 1, ib, ia)
  return Stream(x=data.x[i], y=data.y[i], task_id=task_id)


def split_probes(spec: DecaySpec, data: SplitData, key):
  """n_probes of B's test examples (without replacement when there are enough)."""
  n_test = data.y_test.shape[0]
  i = jax.random.permutation(key, n_test)[:spec.n_probes] if spec.n_probes <= n_test else (
      jax.random.randint(key, (spec.n_probes,), 0, n_test))
  return data.x_test[i], data.y_test[i]
