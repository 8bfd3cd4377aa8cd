"""The teacher dump: one teacher's rollout in an .npz that anyone can check.

The file holds everything an independent implementation needs to reproduce the teacher
step for step: the stream, the hyperparams with the global code tables their integer
codes index, the initial weights, and every random number the learner draws (replayed
slots, reservoir slots, shrink-and-perturb noise), besides the behaviour and loss to
compare against. README ("Teacher dump") documents every key; `record` writes the arrays,
`save` the file, `load` parses one, and `flat_stream` is how `learners.npz` reads a
dump's stream. Names of nested arrays are paths joined by '/', e.g.
`init_params/mlp/dense_0/w`.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from learners import family as family_lib
from learners import learner, rollout
from learners.stream_base import Stream

FORMAT_VERSION = 3
# Versions this code reads: 3 added the non-gradient rules (keys absent in a family of
# networks alone, whose dumps are otherwise those of version 2).
READABLE_VERSIONS = (2, 3)
# A stream file with this key is a dump (`learners.npz` reads it as its stream).
MARK = "behaviour"
# Key prefixes of the nested parts.
HPARAMS, CODES, INIT_PARAMS, DRAWS = "hparams", "codes", "init_params", "draws"
INIT_RULES = "init_rules"


class TeacherDump(NamedTuple):
  """A parsed dump: stream (numpy x [T, B, ...], y, task_id [T]); behaviour [T, B, out];
  loss [T]; hparams {field: scalar}; init_params {kind: {dense_i: {w, b}}}; init_rules
  {rule: {name: array}}, the initial state of each non-gradient rule (None in a family
  of networks alone); draws, a
  `learner.Draws` with leaves [T, ...] (None where the family draws none); init_key
  (uint32 key data); codes {field: names}, the global tables the coded hparams index;
  description (the parsed JSON)."""

  stream: Stream
  behaviour: np.ndarray
  loss: np.ndarray
  hparams: dict
  init_params: Any
  init_rules: Any
  draws: learner.Draws
  init_key: np.ndarray
  codes: dict
  description: dict


def is_dump(keys) -> bool:
  """Whether an archive with these keys is a teacher dump."""
  return MARK in keys


def flat_stream(arrays: dict, fail):
  """A dump's x [T, B, ...], y [T, B(, k)], task_id [T] as flat arrays [T * B, ...];
  `fail(key, msg)` makes the error for a malformed key."""
  x, y = arrays["x"], arrays["y"]
  if x.ndim < 3:
    raise fail("x", f"has shape {x.shape}; a teacher dump (it has {MARK!r}) holds x "
                    f"[T, B, ...].")
  T, B = x.shape[:2]
  if y.shape[:2] != (T, B) or y.ndim not in (2, 3):
    raise fail("y", f"has shape {y.shape}; a teacher dump with x {x.shape} holds y "
                    f"[{T}, {B}] or [{T}, {B}, k].")
  task_id = arrays.get("task_id", np.zeros(T, np.int32))
  if task_id.shape != (T,):
    raise fail("task_id", f"has shape {task_id.shape}; a teacher dump holds task_id "
                          f"[{T}].")
  return (x.reshape((T * B,) + x.shape[2:]), y.reshape((T * B,) + y.shape[2:]),
          np.repeat(task_id, B))


def flatten(tree, prefix: str = "") -> dict:
  """{'prefix/a/b': np.ndarray} ('a/b' without a prefix) for a nested pytree of arrays
  (None leaves dropped). Meta-param exports name their arrays the same way."""
  head = f"{prefix}/" if prefix else ""
  return {head + jax.tree_util.keystr(path, simple=True, separator="/"): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten(arrays: dict, prefix: str):
  """Nested dicts of the arrays named 'prefix/...' (inverse of `flatten`); None if none."""
  tree = None
  for key, value in arrays.items():
    if key.startswith(prefix + "/"):
      tree = {} if tree is None else tree
      node, parts = tree, key[len(prefix) + 1:].split("/")
      for p in parts[:-1]:
        node = node.setdefault(p, {})
      node[parts[-1]] = value
  return tree


def _typed_key(key):
  """A typed key from a typed or a raw (uint32 PRNGKey) one."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key
  return jax.random.wrap_key_data(key)


# One jitted function: dumps of one family share its compilation.
_rollout = jax.jit(functools.partial(rollout.rollout, return_draws=True), static_argnums=0)


def record(family: family_lib.Family, hparams, init_key, stream: Stream) -> dict:
  """The dump's arrays {key: np.ndarray} for one member (hparams {field: scalar}) rolled
  out from init_key over stream [T, B, ...] by `rollout.rollout`, draws included."""
  traj = _rollout(family, hparams, init_key, stream)
  init = learner.init(family, hparams, init_key)
  out = {"x": stream.x, "y": stream.y, "task_id": stream.task_id,
         "behaviour": traj.behaviour, "loss": traj.loss,
         "init_key": jax.random.key_data(_typed_key(init_key))}
  out = {k: np.asarray(v) for k, v in out.items()}
  out.update(flatten(dict(hparams), HPARAMS))
  # String arrays, readable without pickle: codes/network[hparams/network] is its name.
  out.update({f"{CODES}/{field}": np.asarray(names)
              for field, names in family_lib.CODE_TABLES.items()})
  out.update(flatten(init.params, INIT_PARAMS))
  if family.beyond_gradient:
    out.update(flatten({r: (s._asdict() if hasattr(s, "_asdict") else s)
                        for r, s in init.rules.items()}, INIT_RULES))
  out.update(flatten(traj.draws._asdict(), DRAWS))
  description = {
      "format_version": FORMAT_VERSION, "family": family.name, "task": family.task,
      "x_shape": list(family.x_shape), "out_dim": family.out_dim, "width": family.width,
      "depth": family.depth, "replay_size": family.replay_size,
      "max_inner_steps": family.max_inner_steps, "window": family.window,
      "max_neighbours": family.max_neighbours, "prototypes": family.prototypes,
      # The family's subsets of the code tables: what its members may use. Codes index
      # codes/<field>, never these lists.
      "support": {**{f: list(getattr(family, f + "s")) for f in family_lib.CODE_TABLES},
                  "regularizer": list(family.regularizers)},
      "init_key_impl": str(jax.random.key_impl(_typed_key(init_key))),
      # The draws this family makes (absent keys: none of that kind).
      "draws": sorted({k.split("/")[1] for k in out if k.startswith(DRAWS + "/")}),
      "teacher": family.describe(hparams),
  }
  out["description"] = np.asarray(json.dumps(description))
  return out


def save(path: str, arrays: dict) -> None:
  """Writes `record`'s arrays to path (an .npz, whatever its name)."""
  with open(path, "wb") as f:  # a file object: np.savez would append .npz to a name
    np.savez(f, **arrays)


def load(path: str) -> TeacherDump:
  """Parses a dump written by `save`; ValueError naming the file and key if malformed."""
  if not os.path.isfile(path):
    raise ValueError(f"teacher dump {path!r} does not exist.")
  with np.load(path, allow_pickle=False) as archive:
    arrays = {k: archive[k] for k in archive.files}
  for key in ("x", "y", "task_id", "behaviour", "loss", "init_key", "description"):
    if key not in arrays:
      raise ValueError(f"teacher dump {path!r}: key {key!r} is missing (format "
                       f"{FORMAT_VERSION}); found keys {sorted(arrays)}.")
  description = json.loads(str(arrays["description"]))
  version = description.get("format_version")
  if version not in READABLE_VERSIONS:
    raise ValueError(f"teacher dump {path!r} has format_version {version!r}; this code "
                     f"reads {list(READABLE_VERSIONS)} (write it again with "
                     "launch.trace_teacher).")
  drawn = unflatten(arrays, DRAWS) or {}
  return TeacherDump(
      stream=Stream(arrays["x"], arrays["y"], arrays["task_id"]),
      behaviour=arrays["behaviour"], loss=arrays["loss"],
      hparams=unflatten(arrays, HPARAMS), init_params=unflatten(arrays, INIT_PARAMS),
      init_rules=unflatten(arrays, INIT_RULES),
      draws=learner.Draws(**drawn), init_key=arrays["init_key"],
      codes={f: tuple(str(n) for n in v) for f, v in unflatten(arrays, CODES).items()},
      description=description)


def family(description: dict) -> family_lib.Family:
  """The family of a dump's description (its static structure; priors are not stored)."""
  d, support = description, description["support"]
  return family_lib.Family(
      name=d["family"], task=d["task"], x_shape=tuple(d["x_shape"]), out_dim=d["out_dim"],
      width=d["width"], depth=d["depth"], networks=tuple(support["network"]),
      activations=tuple(support["activation"]), optimizers=tuple(support["optimizer"]),
      regularizers=tuple(support["regularizer"]), replay_size=d["replay_size"],
      max_inner_steps=d["max_inner_steps"], rules=tuple(support.get("rule", ("gradient",))),
      **{k: d[k] for k in ("window", "max_neighbours", "prototypes") if k in d})
