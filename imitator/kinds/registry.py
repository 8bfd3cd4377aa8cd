"""Building imitators from config: the trained kind and the baselines beside it."""

from __future__ import annotations

import dataclasses

from imitator.kinds.gradient import GradientImitator
from imitator.kinds.in_context import InContextImitator
from imitator.kinds.system_id import SystemIdImitator

KINDS = ("gradient", "in_context", "system_id")


def _network(setting, cfg):
  """The gradient-style network: config sizes, defaulting to the teacher family's."""
  fam = setting.family
  return dict(
      network=cfg.network or fam.networks[-1],
      width=cfg.width or fam.width,
      depth=cfg.depth or fam.depth,
      activation=cfg.activation or fam.activations[0],
  )


def label(config) -> str:
  """The trained imitator's name in reports, e.g. 'in_context/transformer'."""
  kind = config.imitator.kind
  if kind == "in_context":
    return f"in_context/{config.imitator.in_context.arch}"
  if kind == "system_id":
    return f"system_id/{config.imitator.system_id.mode}"
  return kind


def _built(cls, block, common: dict, **derived):
  """cls(**common, **block, **derived): each field of the config block goes to the
  imitator field of the same name; `derived` (from the setting) replaces the block's."""
  args = {**block.to_dict(), **derived}
  unknown = sorted(set(args) - {f.name for f in dataclasses.fields(cls)})
  if unknown:
    raise ValueError(f"config fields {unknown} are not fields of {cls.__name__}.")
  return cls(**common, **args)


def build(config, setting) -> dict:
  """{'imitator': the configured kind, 'frozen': ..., 'context_only': ...}."""
  kind = config.imitator.kind
  if kind not in KINDS:
    raise ValueError(f"imitator.kind={kind!r}; allowed: {list(KINDS)}.")
  common = dict(task=setting.task, x_shape=setting.family.x_shape,
                out_dim=setting.family.out_dim, remat=config.train.remat)
  if kind == "gradient":
    g = config.imitator.gradient
    settle = setting.t if g.adapt_settle_after is None else g.adapt_settle_after
    main = _built(GradientImitator, g, common, **_network(setting, g),
                  adapt_settle_after=settle)
  elif kind == "in_context":
    c = config.imitator.in_context
    main = _built(InContextImitator, c, common, context=c.context or setting.t,
                  batch=setting.spec.batch)
  else:
    main = _built(SystemIdImitator, config.imitator.system_id, common,
                  family=setting.family, batch=setting.spec.batch)
  b = config.baselines
  baseline = dict(**_network(setting, b), step_size="per_layer", uses_y=False)
  return {"imitator": main,
          "frozen": _built(GradientImitator, b, common, **baseline),
          "context_only": _built(GradientImitator, b, common, **baseline, freeze_after=0)}
