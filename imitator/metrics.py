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
# NIE at or below which a teacher counts as identified; a shift strength breaks an
# imitator when its NIE at the longest horizon exceeds it.
IDENTIFIED_NIE = 0.25
# The battery's horizons (x T_train); breaking points are read at the longest.
HORIZON_MULTIPLES = (1, 2, 4, 8, 16)


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


def figure_steps(horizon: int, t_train: int) -> slice:
  """Steps of the figure "at horizon H": the last t_train steps before H."""
  return slice(max(horizon - t_train, 0), horizon)


def nie(err, chance) -> float:
  """Normalized imitation error: mean imitation error / mean chance error."""
  return float(np.mean(err) / np.mean(chance))


def _resamples(n_teachers: int, n_boot: int, seed: int):
  """Teacher indices of the bootstrap draws [n_boot, P] (the same for every figure of a
  seed, so figures over the same teachers are paired)."""
  return np.random.default_rng(seed).integers(0, n_teachers, size=(n_boot, n_teachers))


def _quantiles(stats, level: float):
  """(lo, hi) percentiles over the first axis of bootstrap statistics."""
  with np.errstate(invalid="ignore"):
    return np.quantile(stats, [(1 - level) / 2, (1 + level) / 2], axis=0)


def bootstrap_ci(per_teacher_num, per_teacher_den=None, n_boot: int = 1000,
                 level: float = 0.95, seed: int = 0):
  """Percentile CI of mean(num)/mean(den) (or of mean(num)) over teachers [P]."""
  num = np.asarray(per_teacher_num, np.float64)
  den = None if per_teacher_den is None else np.asarray(per_teacher_den, np.float64)
  idx = _resamples(num.shape[0], n_boot, seed)
  with np.errstate(invalid="ignore", over="ignore"):
    stats = num[idx].mean(1) if den is None else num[idx].mean(1) / den[idx].mean(1)
  lo, hi = _quantiles(stats, level)
  return float(lo), float(hi)


def nie_with_ci(err, chance, steps: slice, **kwargs):
  """NIE over `steps` of err, chance [P, T], and its bootstrap CI over teachers."""
  e = np.asarray(err)[:, steps].mean(1)
  c = np.asarray(chance)[:, steps].mean(1)
  return float(e.mean() / c.mean()), bootstrap_ci(e, c, **kwargs)


def median_nie_with_ci(err, chance, steps: slice, n_boot: int = 1000, level: float = 0.95,
                       seed: int = 0):
  """Median over teachers of each teacher's own NIE over `steps` (err, chance [P, T]),
  and its bootstrap CI. Unlike `nie_with_ci` a few teachers with huge chance errors (near
  divergence under strong shifts) cannot pull it towards 0."""
  with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
    per_teacher = (np.asarray(err, np.float64)[:, steps].mean(1)
                   / np.asarray(chance, np.float64)[:, steps].mean(1))
    stats = np.median(per_teacher[_resamples(per_teacher.shape[0], n_boot, seed)], axis=1)
  lo, hi = _quantiles(stats, level)
  return float(np.median(per_teacher)), (float(lo), float(hi))


def trailing_sums(values, width: int):
  """Sums over the trailing `width` steps ending at each step, along the last axis
  [..., T] -> [..., T]; the first windows hold the steps so far."""
  v = np.cumsum(np.asarray(values, np.float64), axis=-1)
  shifted = np.concatenate([np.zeros(v.shape[:-1] + (min(width, v.shape[-1]),)),
                            v[..., :-width]], axis=-1)
  return v - shifted


def windowed_nie(err, chance, width: int):
  """NIE over a trailing window of `width` steps ending at each step t: [T]."""
  # inf/nan: an imitation that blew up, or a window where chance is exact (a recorded
  # learner and its chance learner answering alike before either has learned)
  with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
    return (trailing_sums(np.asarray(err, np.float64).mean(0), width)
            / trailing_sums(np.asarray(chance, np.float64).mean(0), width))


def windowed_nie_band(err, chance, width: int, steps, n_boot: int = 1000,
                      level: float = 0.95, seed: int = 0):
  """`windowed_nie` at the 1-based `steps` [S] of err, chance [P, T], with a percentile
  band over teachers: (nie [S], lo [S], hi [S]), each resample the ratio of its means."""
  idx = np.asarray(steps) - 1
  with np.errstate(invalid="ignore", over="ignore"):
    e = trailing_sums(err, width)[:, idx]
    c = trailing_sums(chance, width)[:, idx]
    draws = _resamples(e.shape[0], n_boot, seed)
    # Draws in blocks: [block, P, S] at a time stays a few MB for any horizon.
    stats = np.concatenate([e[d].mean(1) / c[d].mean(1)
                            for d in np.array_split(draws, max(n_boot // 100, 1))])
    lo, hi = _quantiles(stats, level)
    return e.mean(0) / c.mean(0), lo, hi


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


def _first_step_staying_at_most(curves, threshold: float):
  """Per curve [..., T]: the first 1-based step t with curve <= threshold at every step
  from t to T, as a float; inf when the last step is above it (or not finite)."""
  ok = np.asarray(curves) <= threshold  # nan counts as above
  # Steps from the last "above" on, counted backwards: an all-ok tail.
  tail = np.cumprod(ok[..., ::-1], axis=-1).sum(-1)
  return np.where(tail > 0, ok.shape[-1] - tail + 1, np.inf)


def identification_step(err, chance, width: int, t_train: int,
                        threshold: float = IDENTIFIED_NIE):
  """First step t (steps seen) from which the population NIE over the trailing `width`
  steps stays <= threshold to the end of err, chance [P, T]; and t / t_train.
  (None, None) if the NIE at the last step is above it."""
  step = _first_step_staying_at_most(windowed_nie(err, chance, width), threshold)
  if not np.isfinite(step):
    return None, None
  return int(step), int(step) / t_train


def identification_step_median(err, chance, width: int, t_train: int,
                               threshold: float = IDENTIFIED_NIE):
  """`identification_step` of each teacher's own trailing-window ratio (its error sum
  over its chance-error sum), then the lower median over teachers with teachers that
  never identify as +inf, so that it is null exactly when more than half never do.
  Returns (step or None, step / t_train or None, fraction of teachers identified)."""
  with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
    curves = trailing_sums(err, width) / trailing_sums(chance, width)
  steps = np.sort(_first_step_staying_at_most(curves, threshold))
  fraction = float(np.isfinite(steps).mean())
  median = steps[(steps.shape[0] - 1) // 2]
  if not np.isfinite(median):
    return None, None, fraction
  return int(median), int(median) / t_train, fraction


def free_running_horizon(err, chance, cut: int, width: int, t_train: int,
                         threshold: float = IDENTIFIED_NIE, n_boot: int = 1000,
                         level: float = 0.95, seed: int = 0) -> dict:
  """How long an imitation holds alone: per teacher, the steps after the cut until its
  own NIE over the trailing `width` steps after the cut (its error sum over its
  chance-error sum, full windows only) first exceeds threshold; the median over teachers
  with a bootstrap CI. err, chance [P, T] per step (or per block: then cut, width and
  the result count blocks, and t_train is in blocks too). A teacher that never exceeds
  it within T counts as beyond; null fields mean beyond (the median, or a CI end)."""
  with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
    curves = (trailing_sums(np.asarray(err, np.float64)[:, cut:], width)
              / trailing_sums(np.asarray(chance, np.float64)[:, cut:], width))
  above = ~(curves[:, width - 1:] <= threshold)  # nan counts as above
  first = np.where(above.any(1), above.argmax(1) + width, np.inf)
  medians = np.median(first[_resamples(first.shape[0], n_boot, seed)], axis=1)
  # Without interpolation: between two infinite medians it would give nan.
  lo = np.quantile(medians, (1 - level) / 2, method="lower")
  hi = np.quantile(medians, (1 + level) / 2, method="higher")
  finite = lambda v: None if not np.isfinite(v) else float(v)
  median = np.median(first)
  return {"steps": finite(median),
          "t_train_multiple": finite(median / t_train),
          "t_train_multiple_ci": [finite(lo / t_train), finite(hi / t_train)],
          "beyond_fraction": float(np.mean(~np.isfinite(first))),
          "within_steps": int(curves.shape[1])}


def paired_comparison(err, err_versus, chance, steps: slice, n_boot: int = 1000,
                      level: float = 0.95, seed: int = 0) -> dict:
  """NIE of err minus (and over) NIE of err_versus over `steps`, all [P, T] on the same
  teachers, with CIs from a paired bootstrap: each draw resamples the teachers once and
  uses them for both. {"nie_diff", "nie_diff_ci", "nie_ratio", "nie_ratio_ci",
  "n_teachers"}."""
  e = np.asarray(err, np.float64)[:, steps].mean(1)
  v = np.asarray(err_versus, np.float64)[:, steps].mean(1)
  c = np.asarray(chance, np.float64)[:, steps].mean(1)
  idx = _resamples(e.shape[0], n_boot, seed)
  with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
    diff = (e.mean() - v.mean()) / c.mean()
    ratio = e.mean() / v.mean()
    diffs = (e[idx].mean(1) - v[idx].mean(1)) / c[idx].mean(1)
    ratios = e[idx].mean(1) / v[idx].mean(1)
  return {"nie_diff": float(diff), "nie_diff_ci": [float(q) for q in _quantiles(diffs, level)],
          "nie_ratio": float(ratio),
          "nie_ratio_ci": [float(q) for q in _quantiles(ratios, level)],
          "n_teachers": int(e.shape[0])}


def breaking_strength(strengths, nies, threshold: float = IDENTIFIED_NIE):
  """The smallest strength whose NIE exceeds threshold (a null or non-finite NIE, an
  imitation that blew up, counts as exceeding); None if none does."""
  broken = [s for s, n in zip(strengths, nies)
            if n is None or not np.isfinite(n) or n > threshold]
  return min(broken) if broken else None


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


# ------------------------------------------------------------------ acting teachers
# Choices are integer arms; policies [..., K] are probabilities before the choice.

BEHAVIOUR_COUNTS = ("trial", "reward", "switch", "win", "win_stay", "loss", "lose_shift")


def choice_nll(log_policy, choice):
  """-log pi(choice) [...] of log_policy [..., K] and integer choice [...]."""
  return -jnp.take_along_axis(log_policy, choice[..., None], axis=-1)[..., 0]


def policy_kl(p, log_q):
  """KL(p || q) [...] in nats of p [..., K] and log q [..., K] (0 log 0 = 0)."""
  return jnp.sum(jnp.where(p > 0, p * (jnp.log(jnp.maximum(p, _LOG_FLOOR)) - log_q), 0.0),
                 axis=-1)


def normalized_likelihood(mean_nll):
  """The geometric mean probability of the observed choices: exp(-mean NLL per choice)."""
  return np.exp(-np.asarray(mean_nll))


def behaviour_counts(prev_choice, prev_reward, choice, reward):
  """One trial's counts [..., 7] in BEHAVIOUR_COUNTS order; prev_choice < 0 means no
  previous trial (no switch, win or loss counted)."""
  has_prev = prev_choice >= 0
  stay = choice == prev_choice
  win = has_prev & (prev_reward > 0)
  loss = has_prev & (prev_reward <= 0)
  counts = (jnp.ones_like(reward), reward, has_prev & ~stay, win, win & stay, loss,
            loss & ~stay)
  return jnp.stack([jnp.asarray(c, jnp.float32) for c in counts], -1)


def behaviour_rates(counts) -> dict:
  """Per-teacher rates [P] from summed counts [P, 7]: reward per trial, switches per
  trial after a trial, win-stay per win, lose-shift per loss (NaN without any)."""
  c = {k: np.asarray(counts, np.float64)[:, i] for i, k in enumerate(BEHAVIOUR_COUNTS)}
  with np.errstate(invalid="ignore", divide="ignore"):
    return {"reward_rate": c["reward"] / c["trial"],
            "switch_rate": c["switch"] / (c["win"] + c["loss"]),
            "win_stay": c["win_stay"] / c["win"],
            "lose_shift": c["lose_shift"] / c["loss"]}
