"""Named shifts: documented changes of the stream or teacher distribution, for evaluation.

A shift maps an experiment config (with `stream` and `family` blocks) to a shifted copy;
its docstring says what it changes. Names may carry a strength, `covariate_scale:3`.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Callable

from ml_collections import config_dict


@dataclasses.dataclass(frozen=True)
class Shift:
  name: str
  doc: str
  default: float
  apply: Callable[[config_dict.ConfigDict, float], None]  # edits a copy in place


def _covariate_scale(cfg, s):
  cfg.stream.input_scale = cfg.stream.input_scale * s


def _skewed_covariance(cfg, s):
  cfg.stream.skew = s


def _label_noise(cfg, s):
  cfg.stream.label_noise = s
  cfg.stream.noise = max(cfg.stream.noise, s)


def _fast_switching(cfg, s):
  every = cfg.stream.task_switch_every or max(cfg.stream.horizon // 4, 1)
  cfg.stream.task_switch_every = max(int(every // s), 1)


def _drift(cfg, s):
  cfg.stream.drift = s


SHIFTS: dict[str, Shift] = {s.name: s for s in [
    Shift("covariate_scale",
          "inputs multiplied by s (default 2): x -> s*x, covariance s^2*Sigma; the "
          "labeller is unchanged.", 2.0, _covariate_scale),
    Shift("skewed_covariance",
          "input variances i^-s (default s=2) rescaled to mean 1: same total variance, "
          "concentrated on the first features.", 2.0, _skewed_covariance),
    Shift("label_noise",
          "noisy labels at level s (default 0.3): a fraction s of class labels replaced "
          "by uniform random classes; regression target noise std at least s.", 0.3,
          _label_noise),
    Shift("fast_switching",
          "tasks switch s times as often (default 4): every K/s steps, K the stream's "
          "period (horizon/4 when the stream never switches).", 4.0, _fast_switching),
    Shift("drift",
          "the labeller drifts every step: w <- sqrt(1-s^2) w + s*eps (default s=0.05), "
          "stationary N(0, 1) weights.", 0.05, _drift),
]}


def apply(config: config_dict.ConfigDict, name: str) -> config_dict.ConfigDict:
  """The config under shift `name` ('none', 'NAME' or 'NAME:strength'); a copy."""
  if name == "none":
    return config
  base, _, arg = name.partition(":")
  if base not in SHIFTS:
    raise ValueError(f"unknown shift {base!r}; allowed: {['none'] + sorted(SHIFTS)}.")
  shift = SHIFTS[base]
  try:
    strength = float(arg) if arg else shift.default
  except ValueError:
    raise ValueError(f"shift {name!r}: strength {arg!r} is not a number.") from None
  out = copy.deepcopy(config)
  shift.apply(out, strength)
  return out
