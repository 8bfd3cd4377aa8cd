"""Up-front validation of an experiment config: every field's type, range and choice.

`validate(config)` runs before anything is written to a workdir. The stream, family and
teacher blocks are checked by their own constructors (`StreamSpec.from_config`,
`family.from_config`, `Family.codes`); this module checks the rest and rejects unknown
keys everywhere. Messages name the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any, Callable

from imitator import gradient
from learners import family as family_lib
from learners import networks, streams


@dataclasses.dataclass(frozen=True)
class Rule:
  kind: type | tuple
  check: Callable[[Any], bool] = lambda v: True
  allowed: str = ""
  optional: bool = False  # None allowed (a preset or the family decides)


def _int(low=None, optional=False):
  text = f"an integer >= {low}" if low is not None else "an integer"
  return Rule(int, lambda v: low is None or v >= low, text, optional)


def _float(low=None, high=None, open_low=False, optional=False):
  def ok(v):
    if low is not None and (v <= low if open_low else v < low):
      return False
    return high is None or v <= high
  bounds = f"{'(' if open_low else '['}{low if low is not None else '-inf'}, " \
           f"{high if high is not None else 'inf'}]"
  return Rule((int, float), ok, f"a number in {bounds}", optional)


def _choice(options, optional=False):
  return Rule(str, lambda v: v in options, f"one of {list(options)}", optional)


_BOOL = Rule(bool, allowed="true or false")
_NET = dict(network=_choice(networks.NETWORKS, optional=True), width=_int(1, True),
            depth=_int(0, True), activation=_choice(networks.ACTIVATIONS, optional=True))

SCHEMA: dict[str, Any] = {
    "seed": _int(0),
    "imitator": {
        "kind": _choice(("gradient", "in_context", "system_id")),
        "gradient": {**_NET, "step_size": _choice(("per_parameter", "per_layer")),
                     "inner_steps": _int(1), "init_lr": _float(0, open_low=True),
                     "init_track": _float(0, 1, open_low=True), "adapt_steps": _BOOL,
                     "init_hyper_step": _float(), "update_net": _BOOL,
                     "update_net_width": _int(1), "tracker": _choice(gradient.TRACKERS)},
        "in_context": {"arch": _choice(("transformer", "linear_transformer", "recurrent")),
                       "d_model": _int(1), "n_heads": _int(1), "n_layers": _int(1),
                       "mlp_ratio": _int(1), "context": _int(1, optional=True),
                       "d_key": _int(1), "d_value": _int(1), "hidden": _int(1)},
        "system_id": {"mode": _choice(("refine", "amortized", "both")),
                      "encoder_hidden": _int(1), "max_particles": _int(1),
                      "init_track": _float(0, 1, open_low=True),
                      "init_refine": _float(0, open_low=True),
                      "init_temp": _float(0, open_low=True),
                      "init_forget": _float(0, 1, open_low=True),
                      "refine_every": _int(1), "split_groups": _BOOL,
                      "meta_grad": _choice(("full", "evidence"))},
    },
    "baselines": {**_NET, "freeze_after": _int(0),
                  "init_track": _float(0, 1, open_low=True),
                  "tracker": _choice(gradient.TRACKERS)},
    "train": {"steps": _int(1), "teachers": _int(1),
              "learning_rate": _float(0, open_low=True), "warmup_steps": _int(0),
              "grad_clip": _float(0, open_low=True), "truncation": _int(0),
              "remat": _BOOL, "curriculum": Rule(str, allowed="'H@S,...'"),
              "log_every": _int(1), "eval_every": _int(1), "checkpoint_every": _int(1),
              "keep_checkpoints": _int(1), "distributed": _BOOL,
              "nonfinite_patience": _int(1), "max_rollbacks": _int(0),
              "rollback_lr_factor": _float(0, 1, open_low=True), "tensorboard": _BOOL},
    "eval": {"seed": _int(0), "val_teachers": _int(2), "teachers": _int(2),
             "window": _int(0)},
}
_OWN_CHECKS = ("stream", "family", "teacher")


def _check(block: str, values, schema) -> None:
  keys = set(values.keys())
  unknown = sorted(keys - set(schema) - (set(_OWN_CHECKS) if not block else set()))
  if unknown:
    where = f"config.{block}" if block else "config"
    raise ValueError(f"unknown field(s) {unknown} in {where}; allowed: {sorted(schema)}.")
  missing = sorted(set(schema) - keys)
  if missing:
    raise ValueError(f"config.{block + '.' if block else ''}{missing[0]} is missing.")
  for key, rule in schema.items():
    name = f"{block}.{key}" if block else key
    value = values[key]
    if isinstance(rule, dict):
      _check(name, value, rule)
      continue
    if value is None and rule.optional:
      continue
    kinds = rule.kind if isinstance(rule.kind, tuple) else (rule.kind,)
    if isinstance(value, bool) and bool not in kinds:
      ok = False
    else:
      ok = isinstance(value, kinds) and rule.check(value)
    if not ok:
      raise ValueError(f"{name}={value!r} is not allowed: it must be {rule.allowed}"
                       f"{' (or None)' if rule.optional else ''}.")


def validate(config) -> None:
  """Raises ValueError for the first bad field of `config` (a ConfigDict)."""
  for block in _OWN_CHECKS:
    if block not in config and block != "teacher":
      raise ValueError(f"config.{block} is missing.")
  _check("", config, SCHEMA)
  streams.StreamSpec.from_config(config.stream)
  unknown = sorted(set(config.get("teacher", {}).keys()) - set(family_lib.FIELDS))
  if unknown:
    raise ValueError(f"unknown field(s) {unknown} in config.teacher; allowed: "
                     f"{list(family_lib.FIELDS)}.")
  if config.train.tensorboard and importlib.util.find_spec("tensorboardX") is None:
    raise ValueError("train.tensorboard=True needs tensorboardX: pip install -e "
                     "'.[tensorboard]'.")
  horizon = config.stream.horizon
  if config.train.truncation and horizon % config.train.truncation:
    raise ValueError(f"train.truncation={config.train.truncation} must divide "
                     f"stream.horizon={horizon} (0 turns truncation off).")
