"""ml_collections blocks for streams, families and fixed teacher fields.

Every field exists in the ConfigDict (None where a preset or the prior decides), so any
of them can be set from the command line: `--config.stream.dim=16`,
`--config.family.optimizers=sgd,adam`, `--config.teacher.learning_rate=0.01`.
"""

import dataclasses

from ml_collections import config_dict

from learners import family as family_lib
from learners import streams


def stream_config(**overrides) -> config_dict.ConfigDict:
  """All StreamSpec fields with their defaults, then `overrides`."""
  spec = dataclasses.replace(streams.StreamSpec(), **overrides) if overrides else streams.StreamSpec()
  cfg = config_dict.ConfigDict()
  for f in dataclasses.fields(streams.StreamSpec):
    value = getattr(spec, f.name)
    cfg[f.name] = config_dict.placeholder(str) if value is None and f.name in (
        "data_dir", "npz_path") else value
  return cfg


def family_config(name: str, **overrides) -> config_dict.ConfigDict:
  """{'name': preset} plus every adjustable Family field (None: the preset's value)."""
  cfg = config_dict.ConfigDict()
  cfg.name = name
  types = {"width": int, "depth": int, "networks": str, "activations": str,
           "optimizers": str, "regularizers": str, "replay_size": int,
           "max_inner_steps": int, "lr_scale": float, "priors": str, "rules": str,
           "window": int, "max_neighbours": int, "prototypes": int}
  for field, kind in types.items():
    cfg[field] = config_dict.placeholder(kind)
  for field, value in overrides.items():
    cfg[field] = ",".join(value) if isinstance(value, tuple) else value
  return cfg


def teacher_config() -> config_dict.ConfigDict:
  """Hyperparam fields to fix instead of sampling (names for discrete choices)."""
  cfg = config_dict.ConfigDict()
  for field in family_lib.ALL_FIELDS:
    kind = (int if field in ("inner_steps", "neighbours") else
            str if field in family_lib.DISCRETE else float)
    cfg[field] = config_dict.placeholder(kind)
  return cfg


def teacher_overrides(cfg) -> dict:
  """The fields of a teacher_config that are set."""
  return {k: v for k, v in cfg.items() if v is not None}
