"""What a run is made of, built from its config: the setting and data teachers and
streams come from, the imitator and baselines, their optimizer, the device mesh, the
initial train state and the validation set (`config.eval.seed`, disjoint from the
training key stream)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from imitator.evaluation import battery
from imitator.kinds import registry
from imitator.rollout import episodes
from imitator.runtime import parallel
from imitator.training import config_schema, finetune, outer_step


def optimizer(train_cfg) -> optax.GradientTransformation:
  """Adam on a warmup-cosine schedule (peak train.learning_rate, ending at a tenth of it)
  after clipping the meta-gradient's global norm to train.grad_clip."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train_cfg.learning_rate,
      warmup_steps=min(train_cfg.warmup_steps, max(train_cfg.steps - 1, 1)),
      decay_steps=max(train_cfg.steps, 2), end_value=train_cfg.learning_rate * 0.1)
  return optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip),
                     optax.adam(schedule))


# Alone validation (free-running training): the teacher seen for T_train steps, the
# NIE over the last T_train steps of this many.
ALONE_VALIDATION = 4


class Experiment:
  """Everything static a run needs, built from the config."""

  def __init__(self, config):
    config_schema.validate(config)
    self.config = config
    self.setting, self.data = episodes.setting_from_config(config)
    self.imitators = registry.build(config, self.setting)
    self.tx = optimizer(config.train)
    self.mesh = parallel.data_mesh()
    # The overseer of process fine-tuning chooses its trusted learner once, on streams of
    # the validation key.
    self.overseer = (finetune.overseer_member(
        self.setting, self.data, jax.random.fold_in(jax.random.key(config.eval.seed), 3))
                     if config.train.finetune.extra == "process" else None)
    n = config.train.teachers
    if n % self.mesh.size:
      raise ValueError(f"train.teachers={n} must be a multiple of the {self.mesh.size} "
                       "devices the teachers are sharded over.")

  def init_state(self) -> outer_step.TrainState:
    key = jax.random.key(self.config.seed)
    meta = {name: im.init_meta(jax.random.fold_in(jax.random.fold_in(key, 1), i))
            for i, (name, im) in enumerate(self.imitators.items())}
    zeros = {k: jnp.zeros((), jnp.float32) for k in outer_step.metric_names(self.imitators)}
    return outer_step.TrainState(
        step=jnp.zeros((), jnp.int32), meta=meta,
        opt_state={name: self.tx.init(m) for name, m in meta.items()},
        key=jax.random.key_data(key), lr_scale=jnp.ones((), jnp.float32),
        bad_streak=jnp.zeros((), jnp.int32), bad_total=jnp.zeros((), jnp.int32),
        bad={name: jnp.zeros((), jnp.int32) for name in self.imitators},
        rollbacks=jnp.zeros((), jnp.int32),
        sums=zeros, count=jnp.zeros((), jnp.int32))

  def abstract_state(self):
    """Shapes, dtypes and (replicated) shardings of the train state: what restoring a
    checkpoint needs, without holding arrays a donated step could delete."""
    replicated = NamedSharding(self.mesh, PartitionSpec())
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                        jax.eval_shape(self.init_state))

  def place(self, ts: outer_step.TrainState) -> outer_step.TrainState:
    """The train state replicated over the mesh, as the step returns it (so the step is
    traced once, not again on its second call)."""
    return jax.device_put(ts, NamedSharding(self.mesh, PartitionSpec()))

  def validation_fn(self, alone: bool = False):
    """Jitted: meta -> ({name: err [P, T]}, chance [P, T]) on the fixed validation set;
    `alone`: episodes of ALONE_VALIDATION x T_train steps, seen for the first T_train."""
    cfg = self.config.eval
    t = self.setting.t
    setting = self.setting.with_horizon(ALONE_VALIDATION * t) if alone else self.setting
    key = jax.random.fold_in(jax.random.key(cfg.seed), 1)
    val = jax.jit(lambda k: episodes.sample(setting, self.data, k, cfg.val_teachers,
                                            chance=True))(key)
    return battery.errors_fn(self.imitators, setting, val, cfg.chunk,
                             observe=t if alone else None)
