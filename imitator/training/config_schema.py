"""Up-front validation of an experiment config: every field's type, range and choice.

`validate(config)` runs before anything is written to a workdir. The stream, family and
teacher blocks are checked by their own constructors (`StreamSpec.from_config`,
`family.from_config`, `Family.codes`); this module checks the rest, rejects unknown keys
everywhere, numbers that float32 or int32 cannot hold, and priors outside the range a
hyperparam can take. `check_applicable(config, defaults)` refuses fields set away from
the config file's values that the chosen family or imitator kind does not use. Messages
name the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import re
from typing import Any, Callable

import numpy as np
from flax import traverse_util

from imitator.kinds import gradient, in_context, registry, system_id, tracking
from imitator.training import finetune
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
        "kind": _choice(registry.KINDS),
        "gradient": {**_NET, "step_size": _choice(gradient.STEP_SIZES),
                     "inner_steps": _int(1), "init_lr": _float(0, open_low=True),
                     "init_track": _float(0, 1, open_low=True), "adapt_steps": _BOOL,
                     "adapt_settle_after": _int(0, optional=True),
                     "init_hyper_step": _float(), "update_net": _BOOL,
                     "update_net_width": _int(1), "tracker": _choice(tracking.TRACKERS)},
        "in_context": {"arch": _choice(in_context.ARCHS),
                       "d_model": _int(1), "n_heads": _int(1), "n_layers": _int(1),
                       "mlp_ratio": _int(1), "context": _int(1, optional=True),
                       "d_key": _int(1), "d_value": _int(1), "hidden": _int(1),
                       "seen_flag": _BOOL},
        "system_id": {"mode": _choice(system_id.MODES),
                      "encoder_hidden": _int(1), "max_particles": _int(1),
                      "init_track": _float(0, 1, open_low=True),
                      "init_refine": _float(0, open_low=True),
                      "init_temp": _float(0, open_low=True),
                      "init_forget": _float(0, 1, open_low=True),
                      "refine_every": _int(1), "refine_settle_after": _int(0),
                      "tracker": _choice(tracking.TRACKERS),
                      "init_process_noise": _float(0, open_low=True),
                      "split_groups": _BOOL,
                      "meta_grad": _choice(system_id.META_GRADS)},
    },
    "baselines": {**_NET, "freeze_after": _int(0),
                  "init_track": _float(0, 1, open_low=True),
                  "tracker": _choice(tracking.TRACKERS)},
    "train": {"steps": _int(1), "teachers": _int(1),
              "learning_rate": _float(0, open_low=True), "warmup_steps": _int(0),
              "grad_clip": _float(0, open_low=True), "truncation": _int(0),
              "remat": _BOOL,
              "curriculum": Rule(str, lambda v: re.fullmatch(_CURRICULUM, v) is not None,
                                 "'' or HORIZON@UNTIL_STEP,... e.g. '32@200,64@400'"),
              "log_every": _int(1), "eval_every": _int(1), "checkpoint_every": _int(1),
              "keep_checkpoints": _int(1), "distributed": _BOOL,
              "nonfinite_patience": _int(1), "max_rollbacks": _int(0),
              "rollback_lr_factor": _float(0, 1, open_low=True), "tensorboard": _BOOL,
              "free_running": {"fraction": _float(0, 1), "observe_min": _int(1),
                               "observe_max": _int(1), "horizon": _int(0),
                               "start_fraction": _float(0, 1)},
              "finetune": {"source": Rule(str, allowed="a trained run's workdir, or ''"),
                           "extra": _choice(finetune.EXTRAS), "weight": _float(0)}},
    "eval": {"seed": _int(0), "val_teachers": _int(2), "teachers": _int(2),
             "chunk": _int(0)},
}
_OWN_CHECKS = ("stream", "family", "teacher")
_CURRICULUM = r"\s*(\d+\s*@\s*\d+\s*(,\s*\d+\s*@\s*\d+\s*)*,?\s*)?"
# Arrays are float32 and int32: a number beyond these becomes inf or wraps on device.
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_INT32 = (-2**31, 2**31 - 1)
# What each hyperparam can be whatever its prior says: a prior outside it (a negative
# init_scale, a momentum above 1) makes teachers that are not the learners named.
HYPERPARAM_RANGES = {
    "momentum": (0.0, 1.0), "beta2": (0.0, 1.0), "weight_decay": (0.0, math.inf),
    "l2_strength": (0.0, math.inf), "anchor_rate": (0.0, 1.0),
    "ewc_strength": (0.0, math.inf), "ewc_decay": (0.0, 1.0),
    "replay_ratio": (0.0, math.inf), "shrink": (0.0, 1.0), "perturb": (0.0, math.inf),
    "temperature": (0.0, math.inf), "init_scale": (0.0, math.inf),
}


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


def _flat(config) -> dict:
  """{'a.b.c': value} of a ConfigDict."""
  return traverse_util.flatten_dict(json.loads(config.to_json_best_effort()), sep=".")


def _check_numbers(config) -> None:
  """Every number must survive the trip to the device: finite floats within float32,
  ints within int32."""
  for name, value in _flat(config).items():
    if isinstance(value, bool):
      continue
    if isinstance(value, float) and not (math.isfinite(value)
                                         and abs(value) <= _FLOAT32_MAX):
      raise ValueError(f"{name}={value!r} is not allowed: it must be a finite number "
                       f"within float32 (|value| <= {_FLOAT32_MAX:.4g}).")
    if isinstance(value, int) and not _INT32[0] <= value <= _INT32[1]:
      raise ValueError(f"{name}={value!r} is not allowed: it must fit in int32 "
                       f"({_INT32[0]}..{_INT32[1]}).")


def _check_priors(text: str) -> None:
  """Each prior of family.priors within what its hyperparam can be."""
  # pylint: disable-next=protected-access
  for field, prior in family_lib._parse_priors(text or "").items():
    if field not in HYPERPARAM_RANGES:
      continue  # family.from_config names fields without a prior
    low, high = HYPERPARAM_RANGES[field]
    ends = [prior.low] if prior.kind == "fixed" else [prior.low, prior.high]
    if not all(math.isfinite(v) and low <= v <= high for v in ends):
      raise ValueError(f"family.priors: {field}={prior.kind}({', '.join(f'{v:g}' for v in ends)})"
                       f" is not allowed: {field} must be in [{low:g}, {high:g}].")


def validate(config) -> None:
  """Raises ValueError for the first bad field of `config` (a ConfigDict)."""
  for block in _OWN_CHECKS:
    if block not in config and block != "teacher":
      raise ValueError(f"config.{block} is missing.")
  _check("", config, SCHEMA)
  _check_numbers(config)
  streams.StreamSpec.from_config(config.stream)
  unknown = sorted(set(config.get("teacher", {}).keys()) - set(family_lib.ALL_FIELDS))
  if unknown:
    raise ValueError(f"unknown field(s) {unknown} in config.teacher; allowed: "
                     f"{list(family_lib.ALL_FIELDS)}.")
  for field in ("name", "networks", "activations", "optimizers", "regularizers", "priors",
                "rules"):
    value = config.family.get(field)
    if not (isinstance(value, str) or (value is None and field != "name")):
      raise ValueError(f"family.{field}={value!r} is not allowed: it must be a string "
                       "(comma-separated names; priors: 'FIELD=PRIOR; ...').")
  _check_priors(config.family.get("priors"))  # a string by now
  for field, value in config.get("teacher", {}).items():
    kinds = (str, int) if field in family_lib.DISCRETE else (int, float)
    if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
      what = "a name or code" if field in family_lib.DISCRETE else "a number"
      raise ValueError(f"teacher.{field}={value!r} is not allowed: it must be {what} (or "
                       "None: drawn from the family's prior).")
  if config.train.tensorboard and importlib.util.find_spec("tensorboardX") is None:
    raise ValueError("train.tensorboard=True needs tensorboardX: pip install -e "
                     "'.[tensorboard]'.")
  horizon = config.stream.horizon
  if config.train.truncation and horizon % config.train.truncation:
    raise ValueError(f"train.truncation={config.train.truncation} must divide "
                     f"stream.horizon={horizon} (0 turns truncation off).")
  fr = config.train.free_running
  episode = fr.horizon or horizon
  if fr.fraction and not fr.observe_min <= fr.observe_max < episode:
    raise ValueError(
        f"train.free_running: observe_min={fr.observe_min}, observe_max={fr.observe_max} "
        f"must satisfy 1 <= observe_min <= observe_max < the episode's {episode} steps "
        "(train.free_running.horizon, or stream.horizon when it is 0).")
  if fr.horizon and config.train.truncation and fr.horizon % config.train.truncation:
    raise ValueError(f"train.free_running.horizon={fr.horizon} must be a multiple of "
                     f"train.truncation={config.train.truncation}.")
  if fr.horizon and fr.horizon < horizon:
    raise ValueError(f"train.free_running.horizon={fr.horizon} must be 0 or at least "
                     f"stream.horizon={horizon}.")
  if fr.horizon and fr.fraction and config.train.curriculum.strip():
    raise ValueError("train.curriculum and train.free_running.horizon cannot be combined "
                     "(set one of them).")
  ft = config.train.finetune
  if ft.extra != "none" and config.train.truncation:
    raise ValueError(f"train.finetune.extra={ft.extra!r} needs train.truncation=0 (its "
                     "extra behaviour is made for whole episodes); got "
                     f"{config.train.truncation}.")
  for part in filter(None, (p.strip() for p in config.train.curriculum.split(","))):
    if not 0 < int(part.split("@")[0]) <= horizon:
      raise ValueError(f"train.curriculum={config.train.curriculum!r}: horizon "
                       f"{part.split('@')[0].strip()} must be in 1..{horizon} "
                       "(stream.horizon).")


def _family_values(config) -> dict:
  """networks and regularizers of config.family: its overrides, else its preset's."""
  preset = {**{f.name: f.default for f in dataclasses.fields(family_lib.Family)},
            **family_lib.FAMILIES.get(config.family.name, {})}
  out = {}
  for key in ("networks", "regularizers"):
    value = config.family.get(key)
    out[key] = (tuple(v.strip() for v in value.split(",") if v.strip())
                if isinstance(value, str) else tuple(preset[key]))
  return out


def _unused(config, field: str) -> str | None:
  """Why `field` does not apply to this config (None when it does)."""
  kind, family = config.imitator.kind, _family_values(config)
  block, _, key = field.rpartition(".")
  name = config.family.name
  if block.startswith("imitator.") and block.split(".")[1] != kind:
    return (f"imitator.kind={kind!r} uses only the imitator.{kind} block (to use this "
            f"one, set --config.imitator.kind={block.split('.')[1]})")
  if block == "family" and key in ("width", "depth", "activations") and (
      "mlp" not in family["networks"]):
    return (f"family {name!r} has networks {list(family['networks'])}, and width, depth "
            "and activations shape an mlp (add one: --config.family.networks=linear,mlp)")
  if field == "family.replay_size" and "replay" not in family["regularizers"]:
    return (f"family {name!r} has regularizers {list(family['regularizers'])}, without "
            "replay (add it: --config.family.regularizers=...,replay)")
  if block in ("imitator.gradient", "baselines") and key in ("width", "depth",
                                                             "activation"):
    node = config.imitator.gradient if block == "imitator.gradient" else config.baselines
    if (node.network or family["networks"][-1]) == "linear":  # as kinds._network picks
      return (f"{block}'s network is linear (its {block}.network, or the family's last "
              "network), and width, depth and activation shape an mlp (set "
              f"--config.{block}.network=mlp)")
  if field == "imitator.gradient.update_net_width" and not config.imitator.gradient.update_net:
    return "imitator.gradient.update_net is False (set it to True to use an update net)"
  return None


def check_applicable(config, defaults) -> None:
  """Raises ValueError naming the first field whose value differs from `defaults` (the
  config file's own config) but that the chosen family or imitator kind does not use:
  such a setting would be saved with the run and silently have no effect."""
  base = _flat(defaults)
  for field, value in sorted(_flat(config).items()):
    if field in base and base[field] == value:
      continue
    why = _unused(config, field)
    if why:
      raise ValueError(f"{field}={value!r} does not apply: {why}.")
