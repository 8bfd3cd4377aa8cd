"""Episodes: fresh teachers and their streams, sampled and rolled out inside jit.

A `Setting` is the static description of where teachers come from (stream spec, family,
fixed teacher fields); `sample(setting, data, key, n)` draws n teachers, a stream for
each, and rolls them out. With `chance=True` it also rolls out n independent teachers of
the same family on the same streams: the reference of the chance error (DESIGN §6).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax

from learners import config as learner_config
from learners import family as family_lib
from learners import npz, rollout, streams


@dataclasses.dataclass(frozen=True)
class Setting:
  spec: streams.StreamSpec
  family: family_lib.Family
  teacher: tuple = ()  # ((field, value), ...) fixed instead of sampled; codes for choices

  @property
  def task(self) -> str:
    return self.family.task

  @property
  def t(self) -> int:
    return self.spec.horizon

  def with_horizon(self, horizon: int) -> "Setting":
    return dataclasses.replace(self, spec=self.spec.replace(horizon=horizon))


def setting_from_config(config) -> tuple[Setting, Any]:
  """(Setting, on-device data or None) from config.stream / .family / .teacher."""
  spec = streams.StreamSpec.from_config(config.stream)
  data = streams.load_data(spec)
  if spec.kind == "npz":  # a file too short for the horizon: refused before any run starts
    npz.check(spec, data)
  task, x_shape, out_dim = streams.signature(spec, data)
  family = family_lib.from_config(config.family, task, x_shape, out_dim)
  overrides = learner_config.teacher_overrides(config.teacher) if "teacher" in config else {}
  fixed = family.codes(overrides)
  family.validate(family.sample(jax.random.key(0), 1, fixed=fixed))
  return Setting(spec=spec, family=family, teacher=tuple(sorted(fixed.items()))), data


class Episodes(NamedTuple):
  """A batch of n teachers: stream arrays [n, T, B, ...], behaviour [n, T, B, out],
  teacher loss [n, T], hparams {field: [n]}, the chance teachers' behaviour, and the
  teachers' init keys [n] (for reference learners that share a teacher's hparams or
  weights; never for imitators)."""

  x: jax.Array
  y: jax.Array
  task_id: jax.Array
  behaviour: jax.Array
  loss: jax.Array
  hparams: Any
  chance: Any = None
  init_keys: Any = None


def teachers(setting: Setting, key, n: int):
  """n teachers' hyperparams {field: [n]} and init keys [n]."""
  k_h, k_init = jax.random.split(key)
  hp = setting.family.sample(k_h, n, fixed=dict(setting.teacher))
  return hp, jax.random.split(k_init, n)


def sample(setting: Setting, data, key, n: int, chance: bool = False,
           sharding=None) -> Episodes:
  """n teachers and their streams; `sharding` (of the teacher axis) places each
  teacher's work on its device from the first key on."""
  k_teach, k_stream, k_chance = jax.random.split(key, 3)
  place = (lambda a: jax.lax.with_sharding_constraint(a, sharding)) if sharding else (
      lambda a: a)
  stream = jax.vmap(lambda k: streams.make_stream(setting.spec, k, data))(
      place(jax.random.split(k_stream, n)))
  hp, init_keys = teachers(setting, k_teach, n)
  hp, init_keys = place(hp), place(init_keys)
  traj = rollout.population_rollout(setting.family, hp, init_keys, stream)
  chance_behaviour = None
  if chance:
    hp_c, keys_c = teachers(setting, k_chance, n)
    chance_behaviour = rollout.population_rollout(setting.family, hp_c, keys_c,
                                                  stream).behaviour
  return Episodes(stream.x, stream.y, stream.task_id, traj.behaviour, traj.loss, hp,
                  chance_behaviour, init_keys)
