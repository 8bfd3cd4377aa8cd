"""Named shifts: documented changes of the stream or teacher distribution, for evaluation.

A shift maps an experiment config (with `stream` and `family` blocks) to a shifted copy;
its docstring says what it changes. Names may carry a strength, `covariate_scale:3`.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Callable

from ml_collections import config_dict

from learners import family as family_lib


class NotApplicable(ValueError):
  """The shift has no meaning for this config (the message says why)."""


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


_OTHER_CLASS = {"linear_regression": "mlp_regression", "mlp_regression": "linear_regression",
                "linear_classification": "mlp_classification",
                "mlp_classification": "linear_classification"}


def _new_task_class(cfg, s):
  del s
  if cfg.stream.kind not in _OTHER_CLASS:
    raise NotApplicable(f"stream kind {cfg.stream.kind!r} has no synthetic labeller class")
  cfg.stream.kind = _OTHER_CLASS[cfg.stream.kind]


def _real_inputs(name):
  def apply(cfg, s):
    del s
    if cfg.stream.kind not in _OTHER_CLASS:
      raise NotApplicable(f"real {name} inputs replace synthetic inputs; the stream is "
                          f"already {cfg.stream.kind!r}")
    cfg.stream.real_inputs = name
  return apply


def _teacher_prior(cfg, s):
  cfg.family.lr_scale = (cfg.family.lr_scale or 1.0) / s


def _support(cfg, field):
  value = cfg.family[field]
  if value is None:
    preset = family_lib.FAMILIES[cfg.family.name]
    default = {f.name: f.default for f in dataclasses.fields(family_lib.Family)}[field]
    value = preset.get(field, default)
  return tuple(v.strip() for v in value.split(",")) if isinstance(value, str) else tuple(value)


def _out_of_family(cfg, s):
  del s
  absent = [o for o in ("adam", "momentum", "rmsprop", "sgd")
            if o not in _support(cfg, "optimizers")]
  if absent:
    cfg.family.optimizers = absent[0]
    return
  regs = _support(cfg, "regularizers")
  missing = [r for r in family_lib.REGULARIZERS if r not in regs]
  if not missing:
    raise NotApplicable("the family has every optimizer and regularizer")
  cfg.family.regularizers = ",".join(regs + (missing[0],))


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
    Shift("new_task_class",
          "labellers of the other class: MLP labellers for a linear stream and vice "
          "versa.", 0.0, _new_task_class),
    Shift("digits",
          "real inputs: scikit-learn's 8x8 digits, fixed random projection to the input "
          "dimension; labels from the stream's labeller.", 0.0, _real_inputs("digits")),
    Shift("mnist1d",
          "real inputs: mnist1d sequences, fixed random projection to the input "
          "dimension; labels from the stream's labeller.", 0.0, _real_inputs("mnist1d")),
    Shift("teacher_prior",
          "teachers outside the meta-training prior: learning-rate ranges divided by s "
          "(default 30, just below the training range).", 30.0, _teacher_prior),
    Shift("out_of_family",
          "teachers from outside the family: an optimizer absent from meta-training "
          "(adam, momentum, rmsprop, sgd: the first missing), else a missing "
          "regularizer.", 0.0, _out_of_family),
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
