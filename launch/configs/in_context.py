"""`in_context` imitator on the main job's teachers (the `small_mixed` family on a
task-switching regression stream). The argument picks the architecture:

    python -m launch.train --config=launch/configs/in_context.py --workdir=runs/ic
    python -m launch.train --config=launch/configs/in_context.py:transformer --workdir=runs/ict
    python -m launch.train --config=launch/configs/in_context.py:linear_transformer,smoke \\
        --workdir=/tmp/icl

`recurrent` (default): delta-rule fast weights + GRU controller, fixed-size state.
`transformer`: causal softmax attention (ALiBi, sliding window of `context` steps).
`linear_transformer`: decayed linear self-attention, fixed-size state.
"""

from imitator.kinds.in_context import ARCHS
from launch.configs import default


def get_config(arg=None):
  words = default.parse_arg(arg, ARCHS + ("smoke",))
  config = default.get_config()
  use_in_context(config, arch_of(words) or "recurrent")
  if "smoke" in words:
    default.shrink_to_smoke(config)
  return config


def arch_of(words: set) -> str | None:
  """The architecture among a config argument's words (None if none; two: ValueError)."""
  archs = sorted(w for w in words if w in ARCHS)
  if len(archs) > 1:
    raise ValueError(f"pick one architecture, not {archs}.")
  return archs[0] if archs else None


def use_in_context(config, arch: str) -> None:
  """Makes `config`'s imitator the in-context kind with architecture `arch`, trained
  free-running throughout (also `mixed.py:recurrent` and `mixed.py:transformer`)."""
  config.imitator.kind = "in_context"
  config.imitator.in_context.arch = arch
  # Sized for a CPU: attention cost grows with d_model and the horizon.
  config.imitator.in_context.d_model = 32
  config.train.steps = 600
  # Free-running episodes throughout: a sequence model must learn to go on from its own
  # predictions (alone after 1x: 0.31 at 16x and no blow-up, against a pooled 1104 when
  # trained teacher-forced; BUILD_NOTES, "Running alone").
  config.train.free_running.update(fraction=0.5, observe_min=16, observe_max=128,
                                   horizon=256, start_fraction=0.0)
  config.train.truncation = 64
