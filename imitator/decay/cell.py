"""One cell of the decay experiment: a population of teachers trained on A and B, then
on A alone, read on held-out B probes; optionally an imitator watching each teacher and
asked the same probes. Returns the cell's report row.

A cell is (width, depth, regularizer, strength, overlap). Its teachers are tanh MLPs
trained by SGD (`learners.learner`), hyperparams drawn from the family's priors (learning
rate, init scale) with the regularizer fields fixed: the cell's regularizer at its
strength, every other one off. Regularizer strengths are arrays in the hyperparams, not
static, so every cell of one shape and regularizer kind shares one compilation (cells
with replay carry its buffer, the others do not).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from imitator import metrics
from imitator.decay import fit as decay_fit
from imitator.decay import tasks as decay_tasks
from imitator.rollout import objective
from imitator.runtime import parallel
from learners import family as family_lib, rollout

REGULARIZERS = ("none",) + family_lib.REGULARIZERS
# The field a regularizer's strength sets; the others keep their family defaults.
STRENGTH_FIELD = {"l2": "l2_strength", "ewc": "ewc_strength", "replay": "replay_ratio",
                  "shrink_perturb": "shrink"}
# Fields off in every cell unless its regularizer sets them.
_OFF = ("weight_decay", "l2_strength", "anchor_rate", "ewc_strength", "ewc_decay",
        "replay_ratio", "shrink", "perturb")
_COMPANIONS = {"l2": ("anchor_rate",), "ewc": ("anchor_rate", "ewc_decay"),
               "shrink_perturb": ("perturb",), "replay": ()}
_REFERENCE = family_lib.Family(name="decay", task="classification", x_shape=(1,),
                               out_dim=2, regularizers=family_lib.REGULARIZERS)


@dataclasses.dataclass(frozen=True)
class Cell:
  width: int
  depth: int
  regularizer: str
  strength: float  # 0 for none
  overlap: decay_tasks.Overlap

  @property
  def id(self) -> str:
    """A file-name-safe id, e.g. 'w32-d1-l2-0.01-rotated30'."""
    over = re.sub(r"[^A-Za-z0-9.]", "", self.overlap.name)
    return f"w{self.width}-d{self.depth}-{self.regularizer}-{self.strength:g}-{over}"


def prior_default(prior: family_lib.Prior) -> float:
  """The centre of a prior: geometric for log-uniform, arithmetic for uniform."""
  if prior.kind == "fixed":
    return prior.low
  if prior.kind == "log_uniform":
    return math.sqrt(prior.low * prior.high)
  return 0.5 * (prior.low + prior.high)


def default_strength(regularizer: str) -> float:
  """The family's default strength of a regularizer (0 for none)."""
  if regularizer == "none":
    return 0.0
  return prior_default(_REFERENCE.prior(STRENGTH_FIELD[regularizer]))


def fixed_fields(regularizer: str, strength: float) -> dict:
  """{field: value} fixed in every teacher of a cell: the regularizer on at `strength`
  with its companion fields at the family defaults (an EMA anchor for L2 and EWC, the
  Fisher decay, the perturbation), everything else off."""
  fixed = {f: 0.0 for f in _OFF}
  if regularizer != "none":
    fixed[STRENGTH_FIELD[regularizer]] = float(strength)
    for f in _COMPANIONS[regularizer]:
      fixed[f] = prior_default(_REFERENCE.prior(f))
  return fixed


def teacher_family(cell: Cell, task: str, x_shape: tuple, out_dim: int) -> family_lib.Family:
  """The static family of a cell's teachers. Replay gets its own (it doubles the
  gradient work); the other regularizers share one, switched by their strengths."""
  regs = ("replay",) if cell.regularizer == "replay" else ("l2", "ewc", "shrink_perturb")
  return family_lib.Family(name="decay", task=task, x_shape=tuple(x_shape),
                           out_dim=out_dim, width=cell.width, depth=cell.depth,
                           networks=("mlp",), activations=("tanh",), optimizers=("sgd",),
                           regularizers=regs)


def cell_streams(spec: decay_tasks.DecaySpec, overlap: decay_tasks.Overlap, n: int, key,
                 data=None):
  """n teachers' streams (x [n, T, B, D], ...) and B probes px [n, m, D], py [n, m(, out)].
  Every synthetic overlap shares one compiled pair builder and stream generator."""
  keys = jax.random.split(key, 3 * n).reshape(3, n)
  if not overlap.synthetic:
    return _split_streams(spec, data, keys[1], keys[2])
  pairs = _synthetic_pairs(spec, keys[0], jnp.float32(overlap.angle))[overlap.kind]
  return _synthetic_streams(spec, pairs, keys[1], keys[2])


@functools.partial(jax.jit, static_argnums=0)
def _synthetic_pairs(spec, keys, angle):
  return jax.vmap(lambda k: decay_tasks.synthetic_pairs(spec, k, angle))(keys)


@functools.partial(jax.jit, static_argnums=0)
def _synthetic_streams(spec, pairs, stream_keys, probe_keys):
  return jax.vmap(lambda p, ks, kp: (decay_tasks.synthetic_stream(spec, p, ks),
                                     decay_tasks.synthetic_probes(spec, p, kp)))(
      pairs, stream_keys, probe_keys)


@functools.partial(jax.jit, static_argnums=0)
def _split_streams(spec, data, stream_keys, probe_keys):
  return jax.vmap(lambda ks, kp: (decay_tasks.split_stream(spec, data, ks),
                                  decay_tasks.split_probes(spec, data, kp)))(
      stream_keys, probe_keys)


@functools.partial(jax.jit, static_argnums=(0, 1))
def teacher_rollouts(family, every: int, hparams, init_keys, stream, px):
  """Trajectories of n teachers with probe outputs [n, T // every, m, out]."""
  return jax.vmap(lambda hp, k, s, p: rollout.rollout(family, hp, k, s, probes=p,
                                                     probe_every=every))(
      hparams, init_keys, stream, px)


# The imitator (static, hashed by identity) and the chunk are static: one compilation
# serves every covered cell.
_imitate = jax.jit(objective.unroll, static_argnums=(0, 6))


def probe_curves(task: str, outputs, py):
  """B's loss [P, K] and accuracy [P, K] (classification; else None) from probe outputs
  [P, K, m, out] and labels py [P, m(, out)]."""
  y = jnp.broadcast_to(py[:, None], outputs.shape[:3] + py.shape[2:])
  loss = np.asarray(metrics.task_loss(task, outputs, y), np.float64)
  if task != "classification":
    return loss, None
  return loss, np.asarray((jnp.argmax(outputs, -1) == y).mean(-1), np.float64)


def not_covered(im_family, im_batch: int, family, hparams, batch: int) -> str | None:
  """Why an imitator trained on `im_family` (streams of `im_batch`) does not cover a
  cell's teachers, or None when it does."""
  theirs = (family.task, family.x_shape, family.out_dim, batch)
  ours = (im_family.task, im_family.x_shape, im_family.out_dim, im_batch)
  if theirs != ours:
    return (f"the imitator was trained on {ours[0]} with inputs {ours[1]}, {ours[2]} "
            f"outputs, batch {ours[3]}; the cell is {theirs[0]} with inputs {theirs[1]}, "
            f"{theirs[2]} outputs, batch {theirs[3]}")
  if "mlp" not in im_family.networks or (im_family.width, im_family.depth) != (
      family.width, family.depth):
    return (f"the imitator's family has MLPs of width {im_family.width}, depth "
            f"{im_family.depth}, not width {family.width}, depth {family.depth}")
  try:
    im_family.validate(hparams)
  except ValueError as e:
    return f"its family does not hold these teachers: {e}"
  return None


def _place(tree):
  """The teacher axis sharded over every device (cells spread over devices)."""
  mesh = parallel.data_mesh()
  if jax.tree.leaves(tree)[0].shape[0] % mesh.size:
    return tree
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec("data")))


def _fit(spec, loss, acc, fit_cfg) -> dict:
  """The decay figures of loss curves [P, K] (teachers whose curve is not finite left
  out and counted)."""
  keep = np.all(np.isfinite(loss), axis=1)
  loss = loss[keep]
  i1 = spec.phase1 // spec.probe_every
  tau = np.arange(loss.shape[1] - i1) * spec.probe_every
  out = {"n_excluded": int((~keep).sum())}
  if loss.shape[0] < 2:
    return {**out, "flag": "blew_up"}
  out.update(decay_fit.decay_fit(tau, loss[:, :1] - loss[:, i1:], fit_cfg["min_gain"],
                                 fit_cfg["max_retained"], untrained=loss[:, 0],
                                 n_boot=fit_cfg["n_boot"]))
  out["loss_curve"] = loss.mean(0).tolist()
  if acc is not None:
    acc = acc[keep]
    out["accuracy_curve"] = acc.mean(0).tolist()
    out["accuracy_end_phase1"], out["accuracy_end"] = float(acc[:, i1].mean()), float(
        acc[:, -1].mean())
  return out


def run_cell(cell: Cell, spec: decay_tasks.DecaySpec, n: int, seed: int, fit_cfg: dict,
             learning_rate: float | None = None, data=None, imitator=None) -> dict:
  """The report row of one cell (see launch/decay.py for the fields).

  `learning_rate` fixes the teachers' SGD step (None: drawn from the family's prior);
  `data` is the overlap's SplitData (split only); `imitator` is None or
  (exp, meta, label): an `imitator.training.experiment.Experiment`, its meta-params and the report
  label of its trained kind, which then watches every covered teacher through both
  phases and is asked the same probes."""
  family = teacher_family(cell, spec.task, (spec.dim,), spec.out)
  root = jax.random.key(seed)
  # Common random numbers: every cell of an overlap sees the same tasks and streams, and
  # every cell the same hyperparam and init draws, so cells differ only in what varies.
  stream, (px, py) = cell_streams(spec, cell.overlap, n, jax.random.fold_in(root, 1), data)
  fixed = fixed_fields(cell.regularizer, cell.strength)
  if learning_rate is not None:
    fixed["learning_rate"] = float(learning_rate)
  hparams = family.sample(jax.random.fold_in(root, 2), n, fixed=fixed)
  init_keys = jax.random.split(jax.random.fold_in(root, 3), n)
  stream, px, hparams, init_keys = _place((stream, px, hparams, init_keys))
  traj = teacher_rollouts(family, spec.probe_every, hparams, init_keys, stream, px)
  loss, acc = probe_curves(family.task, traj.probe_outputs, py)
  row = {"cell": cell.id, "width": cell.width, "depth": cell.depth,
         "regularizer": cell.regularizer, "strength": cell.strength,
         "overlap": cell.overlap.name, "n_teachers": n,
         "steps": list(range(0, spec.horizon, spec.probe_every)),
         **_fit(spec, loss, acc, fit_cfg)}
  if imitator is None:
    return row
  exp, meta, label = imitator
  reason = not_covered(exp.setting.family, exp.setting.spec.batch, family, hparams,
                       spec.batch)
  if reason:
    return {**row, "imitator": label, "imitator_covered": False, "imitator_reason": reason}
  keys = objective.evaluation_keys(n)
  im_out = _imitate(exp.imitators["imitator"], meta["imitator"], keys, stream.x, stream.y,
                    traj.behaviour, spec.probe_every, px)[2]
  im_loss, im_acc = probe_curves(family.task, im_out, py)
  im = _fit(spec, im_loss, im_acc, fit_cfg)
  gap, gap_ci = metrics.forgetting_gap(loss, im_loss) if np.all(np.isfinite(im_loss)) else (
      math.inf, (math.inf, math.inf))
  return {**row, "imitator": label, "imitator_covered": True,
          "imitator_half_life": im.get("half_life"),
          "imitator_half_life_ci": im.get("half_life_ci"),
          "imitator_half_life_crossing": im.get("half_life_crossing"),
          "imitator_half_life_crossing_ci": im.get("half_life_crossing_ci"),
          "imitator_retained": im.get("retained"), "imitator_fit": im.get("fit"),
          "imitator_flag": im.get("flag"), "imitator_loss_curve": im.get("loss_curve"),
          "forgetting_gap": gap, "forgetting_gap_ci": list(gap_ci)}
