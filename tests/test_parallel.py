"""Data-parallel meta-training: 1 and 4 devices agree; the outer step is traced once."""

import os
import subprocess
import sys

import numpy as np
import pytest

from imitator.rollout import objective
from imitator.training import train
from launch.configs import default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs a few outer steps on `devices` simulated CPU devices; saves meta and the HLO.
_WORKER = """
import sys, numpy as np, jax
from imitator.training import experiment, outer_step
from launch.configs import default
config = default.get_config("smoke")
config.train.teachers = 16
exp = experiment.Experiment(config)
assert exp.mesh.size == len(jax.devices()) == int(sys.argv[2])
step = outer_step.step_fn(exp, config.stream.horizon)
ts = exp.place(exp.init_state())
hlo = step.lower(ts).compile().as_text()
for _ in range(5):
  ts = step(ts)
leaves = jax.tree_util.tree_flatten_with_path(ts.meta)[0]
np.savez(sys.argv[1], **{jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves})
open(sys.argv[1] + ".hlo", "w").write(hlo)
"""


def _run(devices, out):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  proc = subprocess.run([sys.executable, "-c", _WORKER, out, str(devices)], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return dict(np.load(out)), open(out + ".hlo").read()


@pytest.mark.slow
def test_one_and_four_devices_give_the_same_meta_params(tmp_path):
  one, _ = _run(1, str(tmp_path / "one.npz"))
  four, hlo = _run(4, str(tmp_path / "four.npz"))
  assert set(one) == set(four)
  for name in one:
    np.testing.assert_allclose(four[name], one[name], rtol=2e-4, atol=2e-6, err_msg=name)
  # The teachers really were split over the devices: gradients are all-reduced.
  assert "all-reduce" in hlo


@pytest.mark.slow
def test_outer_step_is_traced_once_across_steps(tmp_path, monkeypatch):
  traces = []
  real = objective.loss_and_grads

  def counting(imitator, *args, **kwargs):
    traces.append(type(imitator).__name__)
    return real(imitator, *args, **kwargs)

  monkeypatch.setattr(objective, "loss_and_grads", counting)
  config = default.get_config("smoke")
  config.train.steps = 30
  config.train.log_every = 5  # log steps reset the metric sums between steps
  config.train.eval_every = 10
  config.train.checkpoint_every = 10
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result["status"] == "finished"
  # One trace of the step calls the objective once per imitator (3), never again.
  assert len(traces) == 3, traces


def test_any_process_ors_the_flags_of_every_process(monkeypatch):
  from jax.experimental import multihost_utils
  from imitator.runtime import parallel
  gathered = []
  assert parallel.any_process(True) and not parallel.any_process(False)  # one process
  monkeypatch.setattr(parallel.jax, "process_count", lambda: 3)
  for others, mine, expected in [((0, 0), False, False), ((0, 1), False, True),
                                 ((0, 0), True, True)]:
    def allgather(x, others=others):
      gathered.append(int(x))
      return np.asarray([int(x), *others])
    monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
    assert parallel.any_process(mine) is expected
  assert gathered == [0, 0, 1]
  # Several processes agree only every `every` steps; one process answers at once.
  assert not parallel.agreed_flag(True, 5, 10) and parallel.agreed_flag(True, 10, 10)
  monkeypatch.setattr(parallel.jax, "process_count", lambda: 1)
  assert parallel.agreed_flag(True, 5, 10) and not parallel.agreed_flag(False, 10, 10)


@pytest.mark.slow
def test_a_signal_on_another_process_stops_this_one_after_the_same_step(tmp_path,
                                                                         monkeypatch):
  from imitator.runtime import parallel
  asked = []  # the other process is signalled during step 2
  monkeypatch.setattr(parallel, "agreed_flag",
                      lambda flag, step, every: asked.append(flag) or step >= 2)
  config = default.get_config("smoke")
  config.train.steps = 6
  config.train.checkpoint_every = 100
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result["status"] == "preempted" and result["step"] == 2
  assert asked == [False, False]  # this process itself was never signalled
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
