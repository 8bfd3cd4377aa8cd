"""Recorded teachers: the behaviour of any online learner on streams, in an .npz.

A recorded teacher is a learner known only by what it answered (DESIGN §2): a model
from another library, a production log, a person. The file (`FORMAT_VERSION` 1) holds P
teachers, each on its own stream of T steps of B examples:

- `x [P, T, B, ...]` float inputs (at least one feature axis);
- `y [P, T, B]` int class labels (classification), or `y [P, T, B, k]` float targets
  (regression; `[P, T, B]` is read as k = 1);
- `a [P, T, B, out]` float behaviour: the learner's output on `x[p, t]` *before* it
  learns from `(x[p, t], y[p, t])` (predict, then learn). Regression: the prediction
  (out = k). Classification: class probabilities (out = n_classes, rows sum to 1), as
  the project's teachers behave (`imitator.metrics` takes KL between probabilities);
- `kind [P]` str: the learner kind of each teacher (e.g. "SGDRegressor"), for tables;
- `chance_a [P, T, B, out]` float, optional: the behaviour of *another* learner of the
  same kind with other random hyperparameters on the same stream: the same-kind chance
  reference of the NIE (1 = no better than that learner);
- `task` str scalar, "regression" or "classification";
- `format_version` int scalar.

No key may hold Python objects (the file is read with allow_pickle=False). `record`
runs Python learners over streams into a `Recorded`; `save` writes it, `load` reads and
validates one, `check_fits` refuses a file a run's imitators cannot take. A learner is
any object with

    predict(x [B, ...]) -> [B, out]   # regression values, or class probabilities
    learn(x [B, ...], y [B] or [B, k]) -> None

`Sklearn` adapts a scikit-learn `partial_fit` estimator; docs/recorded_teachers.md shows
a PyTorch adapter of a few lines.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from learners import npz

FORMAT_VERSION = 1
TASKS = ("regression", "classification")
# The same bound as user stream files (learners.npz): beyond it float32 learners overflow.
MAX_ABS = 1e6
# Classification behaviour rows must sum to 1 within this (float32 rounding of softmax).
PROB_TOL = 1e-3


@dataclasses.dataclass(frozen=True)
class Recorded:
  """x [P, T, B, ...] float32; y [P, T, B] int32 or [P, T, B, k] float32; a [P, T, B,
  out] float32; kind [P] str; chance_a [P, T, B, out] float32 or None."""

  x: np.ndarray
  y: np.ndarray
  a: np.ndarray
  kind: np.ndarray
  task: str
  chance_a: np.ndarray | None = None
  path: str = ""

  @property
  def shape(self) -> tuple:
    """(P, T, B): teachers, steps, examples a step."""
    return tuple(self.x.shape[:3])

  @property
  def out_dim(self) -> int:
    return int(self.a.shape[-1])


def _fail(path, key, msg):
  return ValueError(f"recorded teachers file {path!r}: key {key!r} {msg}")


def validate(rec: Recorded) -> Recorded:
  """The arrays of `rec` as the format's dtypes and shapes; ValueError naming the key."""
  path = rec.path
  fail = lambda key, msg: _fail(path, key, msg)
  if rec.task not in TASKS:
    raise fail("task", f"is {rec.task!r}; allowed: {list(TASKS)}.")
  arrays = {"x": rec.x, "y": rec.y, "a": rec.a}
  if rec.chance_a is not None:
    arrays["chance_a"] = rec.chance_a
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  for key, v in arrays.items():
    if not (np.issubdtype(v.dtype, np.integer) or np.issubdtype(v.dtype, np.floating)):
      raise fail(key, f"has dtype {v.dtype}; a real int or float array is expected.")
  x, y, a = arrays["x"], arrays["y"], arrays["a"]
  if x.ndim < 4:
    raise fail("x", f"has shape {x.shape}; [P, T, B, ...] with at least one feature axis "
                    f"is expected ([P, T, B, 1] for scalar inputs).")
  P, T, B = x.shape[:3]
  if min(P, T, B) == 0:
    raise fail("x", f"has shape {x.shape}; at least one teacher, step and example.")
  classification = rec.task == "classification"
  if classification:
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (P, T, B):
      raise fail("y", f"has shape {y.shape} ({y.dtype}); task classification needs int "
                      f"labels [P, T, B] = {[P, T, B]}.")
    if (y < 0).any():
      raise fail("y", "holds negative class labels.")
  else:
    if y.shape == (P, T, B):
      y = y[..., None]
    if y.ndim != 4 or y.shape[:3] != (P, T, B):
      raise fail("y", f"has shape {y.shape}; task regression needs float targets "
                      f"[P, T, B] or [P, T, B, k] with P, T, B = {P, T, B} as in x.")
  out = y.shape[-1] if not classification else None
  for key in ("a", "chance_a"):
    if key not in arrays:
      continue
    v = arrays[key]
    want = f"[P, T, B, out] = {[P, T, B, out if out else 'n_classes']}"
    if v.ndim != 4 or v.shape[:3] != (P, T, B) or (out and v.shape[3] != out):
      raise fail(key, f"has shape {v.shape}; {want} is expected (behaviour on x's "
                      f"steps{', one column per target' if out else ''}).")
    if classification and v.shape[3] < 2:
      raise fail(key, f"has {v.shape[3]} class column; at least 2 (class probabilities).")
  if "chance_a" in arrays and arrays["chance_a"].shape != a.shape:
    raise fail("chance_a", f"has shape {arrays['chance_a'].shape}; a's shape {a.shape} "
                           f"is expected.")
  if classification and (y >= a.shape[3]).any():
    raise fail("y", f"holds label {int(y.max())}; a has {a.shape[3]} class columns "
                    f"(labels 0 .. {a.shape[3] - 1} allowed).")
  for key in ("x", "y", "a", "chance_a"):
    if key not in arrays:
      continue
    v = arrays[key]
    if not np.isfinite(v).all():
      raise fail(key, "holds NaN or inf values.")
    if v.size and np.abs(v).max() > MAX_ABS:
      raise fail(key, f"holds values up to {float(np.abs(v).max()):.3g}; allowed: "
                      f"|value| <= {MAX_ABS:g}.")
  if classification:
    for key in ("a", "chance_a"):
      if key in arrays:
        v = arrays[key]
        if (v < 0).any() or np.abs(v.sum(-1) - 1).max() > PROB_TOL:
          raise fail(key, "is not class probabilities (each row >= 0, summing to 1); "
                          "map scores through a softmax (`probabilities`).")
  kind = np.asarray(rec.kind)
  if kind.shape != (P,) or kind.dtype.kind not in "U":
    raise fail("kind", f"has shape {kind.shape} ({kind.dtype}); str [P] = [{P}] is "
                       f"expected, one learner kind per teacher.")
  chance = arrays.get("chance_a")
  return Recorded(
      x=x.astype(np.float32), y=y.astype(np.int32 if classification else np.float32),
      a=a.astype(np.float32), kind=kind, task=rec.task,
      chance_a=None if chance is None else chance.astype(np.float32), path=path)


def save(path: str, rec: Recorded) -> None:
  """Writes `rec` (validated) in the format above."""
  rec = validate(rec)
  extra = {} if rec.chance_a is None else {"chance_a": rec.chance_a}
  with open(path, "wb") as f:  # a file object: np.savez would append .npz to a name
    np.savez(f, x=rec.x, y=rec.y, a=rec.a, kind=rec.kind, task=np.str_(rec.task),
             format_version=np.int64(FORMAT_VERSION), **extra)


def load(path: str) -> Recorded:
  """Reads and validates a recorded-teachers file; ValueError naming the key."""
  archive = npz.open_archive(path, "recorded teachers file", "learners.recorded.save")
  arrays = {}
  with archive:
    for key in ("x", "y", "a", "kind", "task", "chance_a", "format_version"):
      if key not in archive.files:
        if key in ("chance_a", "format_version"):
          continue
        raise _fail(path, key, f"is missing; found keys {sorted(archive.files)} "
                               f"(required: x, y, a, kind, task).")
      try:
        arrays[key] = archive[key]
      except ValueError:  # object arrays need pickle, which a data file must not use
        raise _fail(path, key, "holds Python objects; numeric arrays (str for kind and "
                               "task) are expected.") from None
  version = arrays.get("format_version", np.int64(FORMAT_VERSION))
  if version.shape != () or not np.issubdtype(version.dtype, np.integer) or (
      int(version) > FORMAT_VERSION):
    raise _fail(path, "format_version", f"is {version.tolist()!r}; allowed: an int "
                                        f"<= {FORMAT_VERSION}.")
  task = arrays["task"]
  if task.shape != () or task.dtype.kind != "U":
    raise _fail(path, "task", f"is {task.tolist()!r}; allowed: {list(TASKS)}.")
  return validate(Recorded(x=arrays["x"], y=arrays["y"], a=arrays["a"],
                           kind=arrays["kind"], task=str(task),
                           chance_a=arrays.get("chance_a"), path=path))


def check_fits(rec: Recorded, task: str, x_shape: tuple, out_dim: int,
               batch: int | None = None, steps: int | None = None) -> None:
  """ValueError naming the field when a run's imitators cannot take the file: another
  task, input shape, output width or (when given) examples a step, or fewer than
  `steps` steps."""
  where = f"recorded teachers file {rec.path!r}"
  if rec.task != task:
    raise ValueError(f"{where}: task is {rec.task!r}; the run's imitators need {task!r}.")
  if tuple(rec.x.shape[3:]) != tuple(x_shape):
    raise ValueError(f"{where}: x has examples of shape {tuple(rec.x.shape[3:])}; the "
                     f"run's inputs have shape {tuple(x_shape)} (x [P, T, B, "
                     f"{', '.join(map(str, x_shape))}]).")
  if rec.out_dim != out_dim:
    what = "class columns" if task == "classification" else "output columns"
    raise ValueError(f"{where}: a has {rec.out_dim} {what}; the run's imitators predict "
                     f"{out_dim} (a [P, T, B, {out_dim}]).")
  if batch is not None and rec.x.shape[2] != batch:
    raise ValueError(f"{where}: x has B={rec.x.shape[2]} examples a step; the run's "
                     f"streams have {batch} (x [P, T, {batch}, ...]).")
  if steps is not None and rec.x.shape[1] < steps:
    raise ValueError(f"{where}: x has T={rec.x.shape[1]} steps; allowed: T >= {steps} "
                     f"(the training horizon T_train; x [P, T, B, ...]).")


# ------------------------------------------------------------------------ recording


def probabilities(scores) -> np.ndarray:
  """Class scores [B, n] (or binary decision scores [B]) as probabilities [B, n]."""
  s = np.asarray(scores, np.float64)
  if s.ndim == 1:  # sklearn's binary decision_function: the score of class 1
    s = np.stack([np.zeros_like(s), s], axis=-1)
  s = s - s.max(-1, keepdims=True)
  e = np.exp(s)
  return e / e.sum(-1, keepdims=True)


class Sklearn:
  """A scikit-learn estimator with `partial_fit` as a learner. Regressors behave with
  `predict` ([B] read as [B, 1]); classifiers with `predict_proba` when they have it,
  else `decision_function` through a softmax. Before the first `partial_fit` sklearn
  cannot predict: the behaviour is then 0 (regression) or uniform (classification)."""

  def __init__(self, estimator, task: str = "regression", n_classes: int = 0,
               out_dim: int = 1, kind: str | None = None):
    if task not in TASKS:
      raise ValueError(f"task={task!r}; allowed: {list(TASKS)}.")
    if task == "classification" and n_classes < 2:
      raise ValueError(f"n_classes={n_classes}: a classifier needs n_classes >= 2.")
    self.estimator, self.task, self.n_classes, self.out_dim = (estimator, task, n_classes,
                                                               out_dim)
    self.kind = kind or type(estimator).__name__
    self.fitted = False

  def predict(self, x):
    x = np.asarray(x).reshape(len(x), -1)
    if self.task == "classification":
      if not self.fitted:
        return np.full((len(x), self.n_classes), 1.0 / self.n_classes)
      est = self.estimator
      if hasattr(est, "predict_proba"):  # False for losses without probabilities
        return est.predict_proba(x)
      return probabilities(est.decision_function(x))
    if not self.fitted:
      return np.zeros((len(x), self.out_dim))
    return np.asarray(self.estimator.predict(x)).reshape(len(x), -1)

  def learn(self, x, y):
    x = np.asarray(x).reshape(len(x), -1)
    if self.task == "classification":
      self.estimator.partial_fit(x, np.asarray(y), classes=np.arange(self.n_classes))
    else:
      y = np.asarray(y)
      self.estimator.partial_fit(x, y[:, 0] if y.ndim == 2 and y.shape[1] == 1 else y)
    self.fitted = True


def run(learner, x, y) -> np.ndarray:
  """One learner over one stream x [T, B, ...], y [T, B(, k)], predict then learn:
  its behaviour [T, B, out]."""
  out = []
  for t in range(len(x)):
    out.append(np.asarray(learner.predict(x[t]), np.float64))
    learner.learn(x[t], y[t])
  return np.stack(out)


def record(learners, x, y, task: str, chance=None, kinds=None) -> Recorded:
  """`Recorded` of P fresh learners (one per teacher) on streams x [P, T, B, ...], y
  [P, T, B(, k)], each predicting before it learns; `chance` (optional): P more fresh
  learners, each of the same kind as its teacher with other hyperparams, run on the same
  streams (the same-kind chance reference); `kinds` [P] defaults to each learner's
  `kind` attribute or class name."""
  x, y = np.asarray(x), np.asarray(y)
  if len(learners) != len(x) or (chance is not None and len(chance) != len(x)):
    raise ValueError(f"{len(learners)} learners (and {len(chance or [])} chance "
                     f"learners) for {len(x)} streams; one each is expected.")
  a = np.stack([run(m, xs, ys) for m, xs, ys in zip(learners, x, y)])
  chance_a = None if chance is None else np.stack(
      [run(m, xs, ys) for m, xs, ys in zip(chance, x, y)])
  if kinds is None:
    kinds = [getattr(m, "kind", type(m).__name__) for m in learners]
  return validate(Recorded(x=x, y=y, a=a, kind=np.asarray(kinds, dtype=str), task=task,
                           chance_a=chance_a))
