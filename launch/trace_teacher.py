"""Dumps one teacher's rollout to an .npz that anyone can check against their own code.

    python -m launch.trace_teacher --config=launch/configs/default.py --out=teacher.npz
    python -m launch.trace_teacher --config.family.name=optimizers_mlp \\
        --config.teacher.optimizer=adam --config.teacher.learning_rate=0.01 --out=adam.npz
    python -m launch.trace_teacher --stream_npz=my_stream.npz --out=teacher.npz

Fields left unset in `config.teacher` are drawn from the family's prior (seed
`config.seed`, teacher `--index`). The format is `learners.teacher_dump`'s, documented in
README ("Teacher dump").
"""

import json
import os

import jax
from absl import flags

from imitator.rollout import episodes
from launch import cli
from learners import npz, streams, teacher_dump


_CONFIG = cli.define_config(
    os.path.join(os.path.dirname(__file__), "configs", "default.py"), lock_config=False)
_OUT = flags.DEFINE_string("out", "teacher.npz", "Where to write the dump.")
_STREAM_NPZ = flags.DEFINE_string(
    "stream_npz", None, "Replay this stream file (flat npz or a teacher dump) instead of "
    "config.stream; the horizon is the file's length over config.stream.batch.")
_INDEX = flags.DEFINE_integer("index", 0, "Which teacher of the seed's sequence.")


def trace(config, stream_npz: str | None = None, index: int = 0) -> dict:
  """The dump's arrays for teacher `index` of config.seed (`teacher_dump.record`)."""
  if stream_npz:
    data = npz.load(stream_npz)
    with config.unlocked():
      config.stream.kind = "npz"
      config.stream.npz_path = stream_npz
      config.stream.horizon = max(data.x.shape[0] // config.stream.batch, 1)
  setting, data = episodes.setting_from_config(config)
  key = jax.random.fold_in(jax.random.key(config.seed), index)
  k_teacher, k_stream = jax.random.split(key)
  hp, init_keys = episodes.teachers(setting, k_teacher, 1)
  hp = setting.family.member(hp, 0)
  setting.family.validate(hp)
  stream = streams.make_stream(setting.spec, k_stream, data)
  return teacher_dump.record(setting.family, hp, init_keys[0], stream)


def main(argv):
  del argv
  arrays = trace(cli.config_value(_CONFIG), _STREAM_NPZ.value, _INDEX.value)
  teacher_dump.save(_OUT.value, arrays)
  description = json.loads(str(arrays["description"]))
  print(description["teacher"])
  print(f"wrote {len(arrays)} arrays ({arrays['behaviour'].shape[0]} steps; draws: "
        f"{', '.join(description['draws']) or 'none'}) to {os.path.abspath(_OUT.value)}")


if __name__ == "__main__":
  cli.run(main)
