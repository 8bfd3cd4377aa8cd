"""Fits of how fast B decays: exponential and power law, half-life, retained fraction,
bootstrap CIs over teachers, and the flags of cells that cannot be fitted.

The signal is B's *gain*: the untrained loss on the B probes (the reading at step 0)
minus the loss at each reading of phase 2, g(tau) for tau = 0 .. 16 N steps after B
stopped. Both laws decay to the untrained level:

    exponential  g(tau) = a * 2^(-tau / h)             half-life h
    power law    g(tau) = a * (1 + tau / s)^(-alpha)   half-life s * (2^(1/alpha) - 1)

A's training can push B below untrained (cross-entropy of confidently wrong answers keeps
growing), which neither law describes; so each curve is fitted on its readings before
the first one at or below 0, where B is back at the untrained level. Fits are least
squares over a log-spaced grid of the nonlinear parameters (a in closed form), refined
around the minimum (finer grids, then a parabola per axis in log coordinates):
vectorized over many curves, so every bootstrap draw is refitted.
"""

from __future__ import annotations

import math

import numpy as np

LAWS = ("exponential", "power_law")
HELD_OUT = 0.25  # last fraction of the fitted readings kept out when choosing the law
MIN_POINTS = 4  # readings a fit needs (fewer: B is gone faster than the probes resolve)
N_BOOT = 200
_EXP_GRID = 400
_POW_TAU_GRID, _POW_ALPHA_GRID = 90, 70
ALPHAS = (0.05, 8.0)
MAX_SPANS = 1000.0  # half-lives beyond this many phase-2 spans count as inf (no decay)


def window(y):
  """[M, K] 0/1 weights: each curve's readings before its first one <= 0."""
  return (np.cumsum(np.atleast_2d(y) <= 0, axis=1) == 0).astype(np.float64)


def _linear(y, w, bases):
  """Weighted least squares of curves y [M, K] (weights w [M, K]) ~ a * basis, for bases
  [G, K] shared by the curves or [M, ..., K] per curve: (a, sse), [M, G] or [M, ...]."""
  if bases.ndim == 2:
    yb, bb = (y * w) @ bases.T, w @ (bases * bases).T
    yy = (w * y * y).sum(1, keepdims=True)
  else:
    yb = np.einsum("mk,m...k->m...", y * w, bases)
    bb = np.einsum("mk,m...k->m...", w, bases * bases)
    yy = (w * y * y).sum(1).reshape((-1,) + (1,) * (bases.ndim - 2))
  bb = np.maximum(bb, 1e-300)
  return yb / bb, yy - yb**2 / bb


def _parabola(grid_log, sse, i):
  """Vertex (in log coordinates) of the parabola through the SSE [M, G] at i - 1, i,
  i + 1 of a uniform log grid [G] (or one grid per curve, [M, G]); the grid point
  itself at the edges."""
  m, g = sse.shape
  grid_log = np.broadcast_to(grid_log, sse.shape)
  rows = np.arange(m)
  inner = (i > 0) & (i < g - 1)
  j = np.clip(i, 1, g - 2)
  s0, s1, s2 = sse[rows, j - 1], sse[rows, j], sse[rows, j + 1]
  denom = s0 - 2 * s1 + s2
  step = grid_log[:, 1] - grid_log[:, 0]
  with np.errstate(divide="ignore", invalid="ignore"):
    offset = np.where(denom > 0, 0.5 * (s0 - s2) / denom, 0.0)
  offset = np.clip(offset, -1.0, 1.0)
  return np.where(inner, grid_log[rows, j] + offset * step, grid_log[rows, i])


def exponential(tau, half_life):
  """2^(-tau / half_life): [K] x [M] -> [M, K]."""
  return np.exp2(-np.asarray(tau)[None] / np.asarray(half_life, np.float64)[:, None])


def power_law(tau, scale, alpha):
  """(1 + tau / scale)^(-alpha): [K] x [M] x [M] -> [M, K]."""
  tau = np.asarray(tau, np.float64)[None]
  return (1.0 + tau / np.asarray(scale)[:, None]) ** (-np.asarray(alpha)[:, None])


def _scales(tau):
  """Log bounds of the time-scale grids: a tenth of the first step, MAX_SPANS spans."""
  dt = np.min(np.diff(tau)) if len(tau) > 1 else 1.0
  return np.log(dt / 10.0), np.log(MAX_SPANS * max(tau[-1], dt))


def _prepare(tau, y, w):
  y = np.atleast_2d(np.asarray(y, np.float64))
  w = window(y) if w is None else np.atleast_2d(np.asarray(w, np.float64))
  return np.asarray(tau, np.float64), y, w


def fit_exponential(tau, y, w=None):
  """Curves y [M, K] at times tau [K], weights w [M, K] (default: `window`):
  {'half_life', 'amplitude'} arrays [M]; a half-life at the top of the grid is inf."""
  tau, y, w = _prepare(tau, y, w)
  grid = np.linspace(*_scales(tau), _EXP_GRID)
  sse = _linear(y, w, exponential(tau, np.exp(grid)))[1]
  i = np.argmin(sse, axis=1)
  h = np.exp(_parabola(grid, sse, i))
  a = _linear(y, w, exponential(tau, h)[:, None])[0][:, 0]
  return {"half_life": np.where(i == len(grid) - 1, np.inf, h), "amplitude": a}


def _zoom(tau, y, w, log_s, log_a, ds, da, n: int = 11):
  """Per curve: the best (log scale, log alpha) on an n x n grid of half-widths (ds, da)
  around (log_s, log_a) [M], refined by a parabola along each axis."""
  off = np.linspace(-1.0, 1.0, n)
  grid_s = log_s[:, None] + ds * off  # [M, n]
  grid_a = log_a[:, None] + da * off
  s = np.exp(grid_s)[:, :, None, None]
  a = np.exp(grid_a)[:, None, :, None]
  sse = _linear(y, w, (1.0 + tau / s) ** (-a))[1]  # [M, n, n]
  m = np.arange(y.shape[0])
  i_s, i_a = np.unravel_index(np.argmin(sse.reshape(len(m), -1), axis=1), (n, n))
  return (_parabola(grid_s, sse[m, :, i_a], i_s),
          _parabola(grid_a, sse[m, i_s, :], i_a))


def fit_power_law(tau, y, w=None):
  """Curves y [M, K] at times tau [K], weights w [M, K] (default: `window`):
  {'half_life', 'amplitude', 'scale', 'alpha'} arrays [M]."""
  tau, y, w = _prepare(tau, y, w)
  lo, hi = _scales(tau)
  g_s = np.linspace(lo, hi - np.log(10.0), _POW_TAU_GRID)
  g_a = np.linspace(np.log(ALPHAS[0]), np.log(ALPHAS[1]), _POW_ALPHA_GRID)
  ss, aa = (v.ravel() for v in np.meshgrid(g_s, g_a, indexing="ij"))
  i = np.argmin(_linear(y, w, power_law(tau, np.exp(ss), np.exp(aa)))[1], axis=1)
  i_s, i_a = np.unravel_index(i, (len(g_s), len(g_a)))
  log_s, log_a = g_s[i_s], g_a[i_a]
  ds, da = g_s[1] - g_s[0], g_a[1] - g_a[0]
  for zoom in (1.0, 0.2):  # finer grids around each curve's own minimum
    log_s, log_a = _zoom(tau, y, w, log_s, log_a, zoom * ds, zoom * da)
  s, alpha = np.exp(log_s), np.exp(log_a)
  a = _linear(y, w, power_law(tau, s, alpha)[:, None])[0][:, 0]
  h = s * (np.exp2(1.0 / alpha) - 1.0)
  h = np.where(h > MAX_SPANS * tau[-1], np.inf, h)  # as the exponential's grid ends
  return {"half_life": h, "amplitude": a, "scale": s, "alpha": alpha}


FITS = {"exponential": fit_exponential, "power_law": fit_power_law}


def predict(law: str, params: dict, tau):
  """The fitted curves [M, K] of `law` at tau [K]."""
  if law == "exponential":
    f = exponential(tau, params["half_life"])
  else:
    f = power_law(tau, params["scale"], params["alpha"])
  return params["amplitude"][:, None] * f


def held_out_errors(tau, y) -> dict:
  """{law: mean squared error on the last HELD_OUT of the fitted readings of the curve
  y [K] of a fit to the rest}: how well each law extrapolates, which picks the law."""
  tau, y = np.asarray(tau, np.float64), np.asarray(y, np.float64)
  k = int(window(y)[0].sum())
  cut = max(int(round(k * (1 - HELD_OUT))), MIN_POINTS - 1)
  out = {}
  for law, fit in FITS.items():
    params = fit(tau[:cut], y[None, :cut])
    with np.errstate(over="ignore", invalid="ignore"):
      err = np.mean((predict(law, params, tau[cut:k])[0] - y[cut:k]) ** 2)
    out[law] = float(err) if np.isfinite(err) else float("inf")
  return out


def half_life_crossing(tau, y):
  """Model-free half-life of curves y [M, K]: the first time (linearly interpolated)
  each falls to half its value at tau[0]; inf if it never does. [M]."""
  y = np.atleast_2d(np.asarray(y, np.float64))
  below = y <= 0.5 * y[:, :1]
  out = np.full(y.shape[0], np.inf)
  for m in np.flatnonzero(below.any(1)):
    j = int(np.argmax(below[m]))
    if j == 0:
      out[m] = tau[0]
      continue
    y0, y1, half = y[m, j - 1], y[m, j], 0.5 * y[m, 0]
    out[m] = tau[j - 1] + (tau[j] - tau[j - 1]) * (y0 - half) / (y0 - y1)
  return out


def _resamples(n: int, n_boot: int, seed: int):
  return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _ci(values, level=0.95):
  """Percentile interval; a draw that cannot be fitted (nan) did not decay (inf)."""
  v = np.asarray(values, np.float64)
  big = np.finfo(np.float64).max
  v = np.clip(np.where(np.isnan(v), np.inf, v), -big, big)  # quantiles of inf are nan
  q = np.quantile(v, [(1 - level) / 2, (1 + level) / 2])
  return [float(x) if abs(x) < big else math.copysign(math.inf, x) for x in q]


def decay_fit(tau, gains, min_gain: float, max_retained: float, untrained=None,
              n_boot: int = N_BOOT, seed: int = 0) -> dict:
  """Everything a cell reports about one population's decay.

  tau [K]: steps since B stopped (tau[0] = 0, the end of phase 1); gains [P, K]: each
  teacher's gain on B at those steps; untrained [P]: the untrained loss (the scale
  `min_gain` is relative to; None: absolute). Flagged, not fitted: `not_learned` when
  the mean gain at tau = 0 is below min_gain x untrained loss or its CI reaches 0;
  `never_decays` when the retained fraction at the end is at least `max_retained` or the
  chosen law's amplitude is not positive; `too_fast` when fewer than MIN_POINTS readings
  precede B's return to untrained. Returns {'flag', 'gain', 'gain_ci', 'retained',
  'retained_ci', 'half_life_crossing' (model-free, with CI), and when fitted 'fit' (the
  law with the lower held-out error), 'half_life', 'half_life_ci', 'fits' ({law:
  half_life, half_life_ci, held_out_mse}), 'half_life_boot' (the chosen law's half-life
  per bootstrap draw, for scaling CIs)}."""
  tau = np.asarray(tau, np.float64)
  gains = np.asarray(gains, np.float64)
  idx = _resamples(gains.shape[0], n_boot, seed)
  mean, boot = gains.mean(0), gains[idx].mean(1)  # [K], [n_boot, K]
  with np.errstate(divide="ignore", invalid="ignore"):
    retained_boot = boot[:, -1] / boot[:, 0]
  scale = 1.0 if untrained is None else float(np.mean(untrained))
  out = {"gain": float(mean[0]), "gain_ci": _ci(boot[:, 0]),
         "retained": float(mean[-1] / mean[0]) if mean[0] else math.nan,
         "retained_ci": _ci(retained_boot),
         "half_life_crossing": float(half_life_crossing(tau, mean[None])[0]),
         "half_life_crossing_ci": _ci(half_life_crossing(tau, boot)), "flag": None}
  if not mean[0] > min_gain * scale or out["gain_ci"][0] <= 0:
    out["flag"] = "not_learned"
    return out
  if out["retained"] >= max_retained:
    out["flag"] = "never_decays"
    return out
  if window(mean)[0].sum() < MIN_POINTS:
    out["flag"] = "too_fast"
    return out
  held = held_out_errors(tau, mean)
  chosen = min(held, key=held.get)
  fits = {law: fit(tau, mean[None]) for law, fit in FITS.items()}
  if not fits[chosen]["amplitude"][0] > 0:
    out["flag"] = "never_decays"
    return out
  out["fit"], out["fits"] = chosen, {}
  for law, fit in FITS.items():
    draws = fit(tau, boot)["half_life"]
    out["fits"][law] = {"half_life": float(fits[law]["half_life"][0]),
                        "half_life_ci": _ci(draws), "held_out_mse": held[law]}
    if law == chosen:
      out["half_life_boot"] = [float(h) for h in draws]
  out["half_life"] = out["fits"][chosen]["half_life"]
  out["half_life_ci"] = out["fits"][chosen]["half_life_ci"]
  return out


def scaling_exponent(widths, half_life_boot, half_lives, level: float = 0.95) -> dict:
  """Slope of log half-life against log width and its CI: widths [W], the point
  half-lives [W] and bootstrap draws [W, n_boot] (independent teachers per width, so
  draw b of each width makes one bootstrap fit). Needs >= 2 finite widths."""
  w = np.log(np.asarray(widths, np.float64))
  h = np.asarray(half_lives, np.float64)
  if len(w) < 2 or not np.all(np.isfinite(h) & (h > 0)):
    return {"exponent": None, "exponent_ci": None}
  slope = lambda logs: np.polyfit(w, logs, 1)[0]
  draws = np.asarray(half_life_boot, np.float64)
  ok = np.all(np.isfinite(draws) & (draws > 0), axis=0)
  boot = [slope(np.log(draws[:, b])) for b in np.flatnonzero(ok)]
  ci = _ci(boot, level) if len(boot) >= 10 else None
  return {"exponent": float(slope(np.log(h))), "exponent_ci": ci}
