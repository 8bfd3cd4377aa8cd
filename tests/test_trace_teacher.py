"""The teacher dump: one per optimizer, self-consistent, replayable through --stream_npz."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from launch import trace_teacher
from launch.configs import default
from learners import family as family_lib
from learners import learner, optimizers, streams

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(optimizer, **teacher):
  config = default.get_config("smoke")
  config.family.name = "optimizers_mlp"
  config.family.width = 8
  config.teacher.optimizer = optimizer
  for k, v in teacher.items():
    config.teacher[k] = v
  return config


def _unflatten(arrays, prefix):
  tree = {}
  for key, value in arrays.items():
    if key.startswith(prefix + "/"):
      node = tree
      parts = key[len(prefix) + 1:].split("/")
      for p in parts[:-1]:
        node = node.setdefault(p, {})
      node[parts[-1]] = value
  return tree


@pytest.mark.parametrize("optimizer", optimizers.OPTIMIZERS)
def test_dump_for_every_optimizer_reproduces_its_behaviour(optimizer):
  arrays = trace_teacher.trace(_config(optimizer))
  desc = json.loads(str(arrays["description"]))
  assert desc["teacher"].split(" | ")[1].startswith(optimizer + "(")
  hp = {f: arrays[f"hparams/{f}"] for f in family_lib.FIELDS}
  assert optimizers.OPTIMIZERS[int(hp["optimizer"])] == optimizer
  init = _unflatten(arrays, "init_params")
  assert set(init) == {"mlp"} and init["mlp"]["dense_0"]["w"].shape == (8, 8)
  # Rolling the dumped hyperparams and initial weights over the dumped stream gives the
  # dumped behaviour and loss.
  fam = family_lib.Family(name="check", task=desc["task"], x_shape=tuple(desc["x_shape"]),
                          out_dim=desc["out_dim"], width=desc["width"], depth=desc["depth"],
                          networks=tuple(desc["networks"]),
                          activations=tuple(desc["activations"]),
                          optimizers=tuple(desc["optimizers"]))
  stream = streams.Stream(arrays["x"], arrays["y"], arrays["task_id"])
  state = learner.init(fam, hp, jax.random.key(0), params=jax.tree.map(np.asarray, init))
  step = jax.jit(lambda s, x, y: learner.step(fam, hp, s, x, y))
  outs, losses = [], []
  for t in range(stream.horizon):
    state, (a, loss) = step(state, stream.x[t], stream.y[t])
    outs.append(a)
    losses.append(loss)
  np.testing.assert_allclose(np.stack(outs), arrays["behaviour"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.stack(losses), arrays["loss"], rtol=1e-5, atol=1e-6)


def test_fixed_fields_and_stream_replay(tmp_path):
  arrays = trace_teacher.trace(_config("adam", learning_rate=0.01, momentum=0.8))
  assert float(arrays["hparams/learning_rate"]) == pytest.approx(0.01)
  assert float(arrays["hparams/momentum"]) == pytest.approx(0.8)
  dump = str(tmp_path / "teacher.npz")
  np.savez(dump, **arrays)
  replay = trace_teacher.trace(_config("adam", learning_rate=0.01, momentum=0.8),
                               stream_npz=dump)
  for key in ("x", "y", "task_id", "behaviour", "loss"):
    np.testing.assert_array_equal(replay[key], arrays[key], err_msg=key)


@pytest.mark.slow
def test_command_writes_the_file_and_refuses_an_optimizer_outside_the_family(tmp_path):
  out = str(tmp_path / "t.npz")
  ok = subprocess.run([sys.executable, "-m", "launch.trace_teacher",
                       "--config.family.name=optimizers_mlp",
                       "--config.teacher.optimizer=rmsprop", "--config.stream.horizon=96",
                       f"--out={out}"],
                      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert "rmsprop(" in ok.stdout and np.load(out)["behaviour"].shape[0] == 96
  bad = subprocess.run([sys.executable, "-m", "launch.trace_teacher",
                        "--config.teacher.optimizer=adamw", f"--out={out}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and "'adamw'" in bad.stderr and "rmsprop" in bad.stderr
