"""The metrics of DESIGN §6, defined once and used by training, evaluation and reports.

Shapes: behaviours are [..., B, out] (probabilities for classification); per-step errors
are [P, T] (teachers x steps). Figures over teachers come with a bootstrap confidence
interval over teachers.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

_LOG_FLOOR = 1e-12


def divergence(task: str, a, a_hat):
  """D(a, a_hat) per example [..., B]: squared error, or KL(a || a_hat) over classes."""
  if task == "classification":
    log_a = jnp.log(jnp.clip(a, _LOG_FLOOR))
    log_hat = jnp.log(jnp.clip(a_hat, _LOG_FLOOR))
    return jnp.sum(a * (log_a - log_hat), axis=-1)
  return jnp.sum((a - a_hat) ** 2, axis=-1)


def step_error(task: str, a, a_hat):
  """D averaged over the B examples of each step: [..., T, B, out] -> [..., T]."""
  return divergence(task, a, a_hat).mean(axis=-1)


def task_loss(task: str, prediction, y):
  """Loss of a behaviour on the true labels, per step [..., T]: 0.5 * squared error
  (the teachers' training loss), or cross-entropy -log p[y]."""
  if task == "classification":
    p = jnp.take_along_axis(prediction, y[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return -jnp.log(jnp.clip(p, _LOG_FLOOR)).mean(axis=-1)
  return 0.5 * jnp.sum((prediction - y) ** 2, axis=-1).mean(axis=-1)


def argmax_agreement(a, a_hat):
  """Fraction of examples whose most likely class agrees, per step [..., T]."""
  return (jnp.argmax(a, axis=-1) == jnp.argmax(a_hat, axis=-1)).mean(axis=-1)


def window(horizon: int, t_train: int) -> slice:
  """Steps of the figure "at horizon H": the last t_train steps before H."""
  return slice(max(horizon - t_train, 0), horizon)


def nie(err, chance) -> float:
  """Normalized imitation error: mean imitation error / mean chance error."""
  return float(np.mean(err) / np.mean(chance))


def bootstrap_ci(per_teacher_num, per_teacher_den=None, n_boot: int = 1000,
                 level: float = 0.95, seed: int = 0):
  """Percentile CI of mean(num)/mean(den) (or of mean(num)) over teachers [P]."""
  num = np.asarray(per_teacher_num, np.float64)
  den = None if per_teacher_den is None else np.asarray(per_teacher_den, np.float64)
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, num.shape[0], size=(n_boot, num.shape[0]))
  stats = num[idx].mean(1) if den is None else num[idx].mean(1) / den[idx].mean(1)
  lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
  return float(lo), float(hi)


def nie_with_ci(err, chance, steps: slice, **kwargs):
  """NIE over `steps` of err, chance [P, T], and its bootstrap CI over teachers."""
  e = np.asarray(err)[:, steps].mean(1)
  c = np.asarray(chance)[:, steps].mean(1)
  return float(e.mean() / c.mean()), bootstrap_ci(e, c, **kwargs)


def windowed_nie(err, chance, width: int):
  """NIE over a trailing window of `width` steps ending at each step t: [T]."""
  with np.errstate(invalid="ignore", over="ignore"):  # an imitation that blew up: inf/nan
    return _windowed_nie(err, chance, width)


def _windowed_nie(err, chance, width):
  e = np.cumsum(np.asarray(err, np.float64).mean(0))
  c = np.cumsum(np.asarray(chance, np.float64).mean(0))
  e = e - np.concatenate([np.zeros(width), e[:-width]])
  c = c - np.concatenate([np.zeros(width), c[:-width]])
  return e / c


def horizon_to_divergence(err, chance, eps: float, width: int, t_train: int):
  """First horizon H >= width (steps seen) whose NIE over the trailing `width` steps
  exceeds eps, and H as a multiple of t_train; (None, None) if none does. Only full
  windows count, so with width = t_train the check at H = t_train is the NIE of the
  whole run, as in the figures "at horizon H"."""
  curve = windowed_nie(err, chance, width)
  above = np.nonzero(curve[width - 1:] > eps)[0] + width - 1
  if above.size == 0:
    return None, None
  step = int(above[0]) + 1
  return step, step / t_train


def task_gap(teacher_loss, imitator_loss, steps: slice):
  """Mean (imitator loss - teacher loss) on the true labels over `steps`, with CI."""
  gap = (np.asarray(imitator_loss) - np.asarray(teacher_loss))[:, steps].mean(1)
  return float(gap.mean()), bootstrap_ci(gap)


def forgetting_gap(teacher_curve, imitator_curve):
  """Gap between the loss-on-B curves [P, n] of teacher and imitator: mean |diff| over
  time and teachers, with CI over teachers."""
  diff = np.abs(np.asarray(imitator_curve) - np.asarray(teacher_curve)).mean(1)
  return float(diff.mean()), bootstrap_ci(diff)


def hparam_recovery(true, estimate, log_fields) -> dict:
  """Per continuous field: mean |log(est/true)| for log-scale fields, else mean |est - true|."""
  out = {}
  for field, t in true.items():
    t, e = np.asarray(t, np.float64), np.asarray(estimate[field], np.float64)
    if field in log_fields:
      ok = (t > 0) & (e > 0)
      out[field] = float(np.mean(np.abs(np.log(e[ok] / t[ok])))) if ok.any() else math.nan
    else:
      out[field] = float(np.mean(np.abs(e - t)))
  return out
