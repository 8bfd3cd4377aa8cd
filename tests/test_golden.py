"""Golden values: one jitted outer training step per imitator kind gives recorded numbers.

Each kind runs on `launch/configs/default.py:smoke` (the smoke horizon) with 2 teachers:
the first outer step from the config's seed samples the same teachers and streams,
unrolls the imitator and both baselines beside them, and must give the loss and global
meta-gradient norm recorded below for each of them. A refactoring that keeps behaviour
keeps these numbers; a failure means the outer step now computes something else.

The values were produced by running this code once (`python tests/test_golden.py`
prints them) on CPU, jax 0.10.2, on 2026-12-02. If a change of them is intended (a new
default, a bug fixed), record them again the same way and say why in the change.

All slow (`--runslow`): compiling one step costs 30 s of CPU per kind (system_id 90 s).
"""

import chex
import jax
import pytest

from imitator.training import experiment, outer_step
from launch.configs import default

# name -> (imitator.kind, fields of its config block)
KINDS = {
    "gradient": ("gradient", {}),
    "in_context/transformer": ("in_context", {"arch": "transformer"}),
    "in_context/recurrent": ("in_context", {"arch": "recurrent"}),
    "system_id": ("system_id", {}),
}

# Recorded by `python tests/test_golden.py` (see the module docstring): a change means
# the outer step's behaviour changed. The baselines are the same in every kind's step
# (same teachers, same meta-param keys).
GOLDEN = {
    "gradient": {
        'grad_norm/imitator': 0.17394307255744934,
        'loss/imitator': 0.2897266149520874,
        'grad_norm/context_only': 0.15295937657356262,
        'grad_norm/frozen': 0.19462859630584717,
        'loss/context_only': 0.23708847165107727,
        'loss/frozen': 0.30770018696784973,
    },
    "in_context/transformer": {
        'grad_norm/imitator': 3.976102828979492,
        'loss/imitator': 0.6594175696372986,
        'grad_norm/context_only': 0.15295937657356262,
        'grad_norm/frozen': 0.19462859630584717,
        'loss/context_only': 0.23708847165107727,
        'loss/frozen': 0.30770015716552734,
    },
    "in_context/recurrent": {
        'grad_norm/imitator': 4.888252258300781,
        'loss/imitator': 0.8341126441955566,
        'grad_norm/context_only': 0.15295937657356262,
        'grad_norm/frozen': 0.19462859630584717,
        'loss/context_only': 0.23708847165107727,
        'loss/frozen': 0.30770018696784973,
    },
    "system_id": {
        'grad_norm/imitator': 0.31511014699935913,
        'loss/imitator': 0.3694749176502228,
        'grad_norm/context_only': 0.15295937657356262,
        'grad_norm/frozen': 0.19462859630584717,
        'loss/context_only': 0.23708847165107727,
        'loss/frozen': 0.30770018696784973,
    },
}
RTOL = 1e-4


def config(name, remat=False):
  """default.py:smoke with the kind `name`, 2 teachers (and `train.remat`). The fields
  default.py was changing when the values were recorded are pinned to the values they
  were recorded with, so that a change of defaults does not pass for a change of the
  step."""
  kind, fields = KINDS[name]
  c = default.get_config("smoke")
  c.imitator.kind = kind
  for k, v in fields.items():
    c.imitator[kind][k] = v
  c.train.teachers = 2
  c.train.remat = remat
  c.imitator.gradient.tracker = "kalman"
  c.imitator.gradient.adapt_settle_after = None  # settles after the training horizon
  c.baselines.tracker = "kalman"
  c.imitator.in_context.seen_flag = False  # the seen/unseen token feature came later
  return c


def first_step_metrics(exp: experiment.Experiment) -> dict:
  """{'loss/NAME' | 'grad_norm/NAME': float} of the first outer step of `exp` (from its
  initial state, so the step's metric sums are that step's values)."""
  ts = outer_step.step_fn(exp, exp.config.stream.horizon)(exp.place(exp.init_state()))
  assert int(ts.count) == 1 and int(ts.bad_total) == 0  # the step was taken
  return {k: float(v) for k, v in jax.device_get(ts.sums).items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", KINDS)
def test_one_jitted_outer_step_gives_the_recorded_loss_and_grad_norm(name):
  got = first_step_metrics(experiment.Experiment(config(name)))
  assert set(got) == {f"{m}/{n}" for m in ("loss", "grad_norm")
                      for n in ("imitator", "frozen", "context_only")}
  chex.assert_trees_all_close(got, GOLDEN[name], rtol=RTOL)


# Op by op the step costs ~3x its jitted compile and run (~100 s of CPU for `gradient`,
# whose step also runs both baselines, the same in every kind's step): checked for the
# main job's kind only. Measured: within 3.1e-7 (relative) of the jitted values.
@pytest.mark.slow
def test_the_step_without_jit_gives_the_same_numbers():
  with jax.disable_jit():
    got = first_step_metrics(experiment.Experiment(config("gradient")))
  chex.assert_trees_all_close(got, GOLDEN["gradient"], rtol=RTOL)


if __name__ == "__main__":  # prints GOLDEN as the current code computes it
  for name in KINDS:
    values = first_step_metrics(experiment.Experiment(config(name)))
    print(f"    {name!r}: {{")
    for k, v in sorted(values.items()):
      print(f"        {k!r}: {v!r},")
    print("    },")
