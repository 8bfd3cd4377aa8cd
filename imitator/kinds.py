"""Building imitators from config: the trained kind and the baselines beside it."""

from __future__ import annotations

from imitator.episodes import Setting
from imitator.gradient import GradientImitator
from imitator.in_context import InContextImitator
from imitator.system_id import SystemIdImitator

KINDS = ("gradient", "in_context", "system_id")


def _network(setting: Setting, cfg):
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


def build(config, setting: Setting) -> dict:
  """{'imitator': the configured kind, 'frozen': ..., 'context_only': ...}."""
  kind = config.imitator.kind
  if kind not in KINDS:
    raise ValueError(f"imitator.kind={kind!r}; allowed: {list(KINDS)}.")
  common = dict(task=setting.task, x_shape=setting.family.x_shape,
                out_dim=setting.family.out_dim, remat=config.train.remat)
  if kind == "gradient":
    g = config.imitator.gradient
    main = GradientImitator(**common, **_network(setting, g), step_size=g.step_size,
                            inner_steps=g.inner_steps, init_lr=g.init_lr,
                            init_track=g.init_track, adapt_steps=g.adapt_steps,
                            adapt_settle_after=(setting.t if g.adapt_settle_after is None
                                                else g.adapt_settle_after),
                            init_hyper_step=g.init_hyper_step, update_net=g.update_net,
                            update_net_width=g.update_net_width, tracker=g.tracker)
  elif kind == "in_context":
    c = config.imitator.in_context
    main = InContextImitator(**common, arch=c.arch, d_model=c.d_model, n_heads=c.n_heads,
                             n_layers=c.n_layers, mlp_ratio=c.mlp_ratio,
                             context=c.context or setting.t, batch=setting.spec.batch,
                             d_key=c.d_key, d_value=c.d_value, hidden=c.hidden)
  else:
    s = config.imitator.system_id
    main = SystemIdImitator(**common, family=setting.family, mode=s.mode,
                            encoder_hidden=s.encoder_hidden, max_particles=s.max_particles,
                            init_track=s.init_track, init_refine=s.init_refine,
                            init_temp=s.init_temp, init_forget=s.init_forget,
                            refine_every=s.refine_every, split_groups=s.split_groups,
                            meta_grad=s.meta_grad,
                            batch=setting.spec.batch)
  b = config.baselines
  net = _network(setting, b)
  out = {"imitator": main}
  out["frozen"] = GradientImitator(**common, **net, step_size="per_layer",
                                   init_track=b.init_track, uses_y=False,
                                   freeze_after=b.freeze_after, tracker=b.tracker)
  out["context_only"] = GradientImitator(**common, **net, step_size="per_layer",
                                         init_track=b.init_track, uses_y=False,
                                         tracker=b.tracker)
  return out


