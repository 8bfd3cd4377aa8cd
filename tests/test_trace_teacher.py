"""The teacher dump: one per optimizer, self-consistent, replayable through --stream_npz,
and complete: a NumPy learner written from README alone reproduces replay and
shrink-and-perturb teachers step for step from the file's arrays, draws included."""

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
from learners import learner, optimizers, rollout, streams, teacher_dump

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(optimizer, **teacher):
  config = default.get_config("smoke")
  config.family.name = "optimizers_mlp"
  config.family.width = 8
  config.teacher.optimizer = optimizer
  for k, v in teacher.items():
    config.teacher[k] = v
  return config


@pytest.mark.parametrize("optimizer", optimizers.OPTIMIZERS)
def test_dump_for_every_optimizer_reproduces_its_behaviour(optimizer, tmp_path):
  path = str(tmp_path / "teacher.npz")
  teacher_dump.save(path, trace_teacher.trace(_config(optimizer)))
  dump = teacher_dump.load(path)
  assert dump.description["teacher"].split(" | ")[1].startswith(optimizer + "(")
  assert set(dump.hparams) == set(family_lib.FIELDS)
  assert dump.codes["optimizer"] == optimizers.OPTIMIZERS
  assert dump.codes["optimizer"][int(dump.hparams["optimizer"])] == optimizer
  assert set(dump.init_params) == {"mlp"}
  assert dump.init_params["mlp"]["dense_0"]["w"].shape == (8, 8)
  assert dump.draws == learner.Draws()  # optimizers_mlp has no random update
  # Rolling the dumped hyperparams and initial weights over the dumped stream gives the
  # dumped behaviour and loss.
  fam = teacher_dump.family(dump.description)
  state = learner.init(fam, dump.hparams, jax.random.key(0), params=dump.init_params)
  step = jax.jit(lambda s, x, y: learner.step(fam, dump.hparams, s, x, y))
  outs, losses = [], []
  for t in range(dump.stream.horizon):
    state, (a, loss) = step(state, dump.stream.x[t], dump.stream.y[t])
    outs.append(a)
    losses.append(loss)
  np.testing.assert_allclose(np.stack(outs), dump.behaviour, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.stack(losses), dump.loss, rtol=1e-5, atol=1e-6)


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


# ------------------------------------------- an independent learner, from the file alone
#
# Written from README ("Teacher dump") and nothing else of the package: float64 NumPy,
# reading only np.load's arrays. Any draw the dump lacked would be a KeyError here.

REPLAY_SIZE = 8  # small, so the reservoir fills within the stream and then drops examples
ACTIVATIONS = {  # name -> (activation, its derivative at the pre-activation)
    "tanh": (np.tanh, lambda z: 1.0 - np.tanh(z) ** 2),
    "softplus": (lambda z: np.logaddexp(0.0, z), lambda z: 1.0 / (1.0 + np.exp(-z))),
}


def _net_grads(layers, act, x, y):
  """Outputs [B, out] of the NTK-parametrized net and the gradient of the mean over the
  batch of 0.5 * ||f - y||^2 w.r.t. every layer's w and b."""
  f, df = ACTIVATIONS[act]
  h, inputs, pre = x.reshape(len(x), -1), [], []
  for i, layer in enumerate(layers):
    inputs.append(h)
    z = h @ layer["w"] / np.sqrt(layer["w"].shape[0]) + layer["b"]
    pre.append(z)
    h = f(z) if i < len(layers) - 1 else z
  d, grads = (h - y) / len(x), [None] * len(layers)
  for i in reversed(range(len(layers))):
    w = layers[i]["w"]
    grads[i] = {"w": inputs[i].T @ d / np.sqrt(w.shape[0]), "b": d.sum(0)}
    if i:
      d = (d @ w.T / np.sqrt(w.shape[0])) * df(pre[i - 1])
  return h, grads


def reproduce(arrays):
  """(behaviour [T, B, out], loss [T]) of the dumped regression teacher, an sgd member
  with any of l2-to-anchor, online EWC, replay and shrink-and-perturb."""
  desc = json.loads(str(arrays["description"]))
  hp = {k.split("/", 1)[1]: arrays[k].item() for k in arrays if k.startswith("hparams/")}
  name = lambda field: str(arrays[f"codes/{field}"][hp[field]])  # global tables
  assert desc["task"] == "regression" and name("optimizer") == "sgd"
  net, act, regs = name("network"), name("activation"), desc["support"]["regularizer"]
  # Flat {'mlp/dense_0/w': array}: every network kind of the superset learns.
  params = {k.split("/", 1)[1]: arrays[k].astype(np.float64) for k in arrays
            if k.startswith("init_params/")}
  anchor = dict(params)
  fisher = {k: np.zeros_like(v) for k, v in params.items()}
  x_all, y_all = arrays["x"].astype(np.float64), arrays["y"].astype(np.float64)
  T, B = x_all.shape[:2]
  M = desc["replay_size"]
  buf_x, buf_y, count = np.zeros((M,) + x_all.shape[2:]), np.zeros((M,) + y_all.shape[2:]), 0

  def data(params, x, y):
    n = sum(k.startswith(net + "/") and k.endswith("/w") for k in params)
    layers = [{p: params[f"{net}/dense_{i}/{p}"] for p in "wb"} for i in range(n)]
    out, g = _net_grads(layers, act, x, y)
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    grads.update({f"{net}/dense_{i}/{p}": g[i][p] for i in range(n) for p in "wb"})
    return out, grads

  behaviour, losses = [], []
  for t in range(T):
    x, y = x_all[t], y_all[t]
    out, g0 = data(params, x, y)
    behaviour.append(out)
    losses.append(0.5 * np.mean(np.sum((out - y) ** 2, -1)))
    if "replay" in regs:
      slots = arrays["draws/replay_slots"][t]
      x_rep, y_rep = buf_x[slots], buf_y[slots]
      ratio = hp["replay_ratio"] if count else 0.0
    for i in range(hp["inner_steps"]):
      g = g0 if i == 0 else data(params, x, y)[1]
      if "replay" in regs:
        g_rep = data(params, x_rep, y_rep)[1]
        g = {k: (1 - ratio) * g[k] + ratio * g_rep[k] for k in g}
      params = {k: w - hp["learning_rate"] * (
          g[k] + (hp["l2_strength"] + hp["ewc_strength"] * fisher[k]) * (w - anchor[k])
          + hp["weight_decay"] * w) for k, w in params.items()}
    if "ewc" in regs:
      d = hp["ewc_decay"]
      fisher = {k: d * f + (1 - d) * g0[k] ** 2 for k, f in fisher.items()}
    anchor = {k: a + hp["anchor_rate"] * (params[k] - a) for k, a in anchor.items()}
    if "replay" in regs:
      for b, s in enumerate(arrays["draws/insert_slots"][t]):
        if s < M:  # in order: a later example wins a shared slot
          buf_x[s], buf_y[s] = x[b], y[b]
      count += B
    if "shrink_perturb" in regs:
      params = {k: (1 - hp["shrink"]) * w + hp["perturb"] * arrays[f"draws/noise/{k}"][t]
                for k, w in params.items()}
  return np.stack(behaviour), np.array(losses)


_REPLAY = dict(activation="tanh", replay_ratio=0.6, shrink=0.0, perturb=0.0,
               l2_strength=0.05, anchor_rate=1e-3, ewc_strength=0.0)
CONTINUAL = {  # teacher -> (fixed fields, draw to corrupt: reproduction must then fail)
    "replay": (_REPLAY, "draws/replay_slots"),
    "reservoir": (_REPLAY, "draws/insert_slots"),  # the same teacher
    # softplus: global code 3, second of the family's support (codes index the tables)
    "shrink_perturb": (dict(activation="softplus", replay_ratio=0.0, shrink=1e-3,
                            perturb=1e-2, l2_strength=0.0, ewc_strength=0.5,
                            ewc_decay=0.95), "draws/noise/mlp/dense_0/w"),
}


@pytest.fixture(scope="module")
def continual_dumps(tmp_path_factory):
  """{teacher: arrays of its dump as np.load reads them back} (two distinct dumps)."""
  out = {}
  for name in ("replay", "shrink_perturb"):
    config = default.get_config("smoke")
    config.family.name = "continual_mlp"
    config.family.width = 8
    config.family.activations = "tanh,softplus"
    config.family.replay_size = REPLAY_SIZE
    config.stream.batch = 4
    for k, v in dict(CONTINUAL[name][0], learning_rate=0.1).items():
      config.teacher[k] = v
    path = str(tmp_path_factory.mktemp("dumps") / f"{name}.npz")
    teacher_dump.save(path, trace_teacher.trace(config))
    with np.load(path, allow_pickle=False) as f:
      out[name] = {k: f[k] for k in f.files}
  out["reservoir"] = out["replay"]
  return out


@pytest.mark.parametrize("teacher", sorted(CONTINUAL))
def test_numpy_learner_reproduces_the_teacher_from_the_dump_alone(continual_dumps,
                                                                   teacher):
  arrays = continual_dumps[teacher]
  behaviour, loss = reproduce(arrays)
  for t in range(len(loss)):
    np.testing.assert_allclose(behaviour[t], arrays["behaviour"][t], rtol=1e-4, atol=1e-5,
                               err_msg=f"behaviour at step {t}")
    np.testing.assert_allclose(loss[t], arrays["loss"][t], rtol=1e-4, atol=1e-6,
                               err_msg=f"loss at step {t}")
  # The draws matter: the same learner fed other draws misses the teacher.
  key = CONTINUAL[teacher][1]
  wrong = dict(arrays)
  if key == "draws/insert_slots":
    wrong[key] = np.roll(arrays[key], 1, axis=1)
  elif key == "draws/replay_slots":
    wrong[key] = (arrays[key] + 1) % REPLAY_SIZE
  else:
    wrong[key] = np.zeros_like(arrays[key])
  assert np.abs(reproduce(wrong)[0] - arrays["behaviour"]).max() > 1e-3


def test_dump_holds_every_draw_and_the_code_tables(continual_dumps):
  arrays = continual_dumps["replay"]
  desc = json.loads(str(arrays["description"]))
  T, B = arrays["x"].shape[:2]
  assert desc["draws"] == ["insert_slots", "noise", "replay_slots"]
  assert desc["support"]["activation"] == ["tanh", "softplus"]
  for field, names in family_lib.CODE_TABLES.items():
    assert tuple(arrays[f"codes/{field}"]) == names
  for key in ("draws/replay_slots", "draws/insert_slots"):
    assert arrays[key].shape == (T, B) and arrays[key].dtype == np.int32
  slots = arrays["draws/insert_slots"]
  assert (slots == REPLAY_SIZE).any() and (slots < REPLAY_SIZE).all(1).any()
  # two examples of a step drawing one slot (the later wins): the case worth checking
  assert any(len(set(s[s < REPLAY_SIZE])) < (s < REPLAY_SIZE).sum() for s in slots)
  noise = {k: v for k, v in arrays.items() if k.startswith("draws/noise/")}
  assert {k[len("draws/noise/"):] for k in noise} == {
      k[len("init_params/"):] for k in arrays if k.startswith("init_params/")}
  assert all(v.shape[0] == T for v in noise.values())
  # The draws are those the teacher made: its rollout without recording them gives the
  # same numbers to the bit, and the learner's draws from its key are the dumped ones.
  fam = teacher_dump.family(desc)
  hp = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("hparams/")}
  key = jax.random.wrap_key_data(arrays["init_key"])
  stream = streams.Stream(arrays["x"], arrays["y"], arrays["task_id"])
  traj = jax.jit(lambda h, k, s: rollout.rollout(fam, h, k, s))(hp, key, stream)
  np.testing.assert_array_equal(traj.behaviour, arrays["behaviour"])
  np.testing.assert_array_equal(traj.loss, arrays["loss"])
  first = learner.draws(fam, learner.init(fam, hp, key), B)
  np.testing.assert_array_equal(first.replay_slots, arrays["draws/replay_slots"][0])
  np.testing.assert_array_equal(first.insert_slots, arrays["draws/insert_slots"][0])
  np.testing.assert_array_equal(first.noise["mlp"]["dense_1"]["w"],
                                arrays["draws/noise/mlp/dense_1/w"][0])


def test_load_names_a_missing_key_and_an_old_format(tmp_path):
  path = str(tmp_path / "old.npz")
  arrays = dict(x=np.zeros((2, 1, 3)), y=np.zeros((2, 1, 1)), task_id=np.zeros(2, int),
                behaviour=np.zeros((2, 1, 1)), loss=np.zeros(2))
  teacher_dump.save(path, arrays)
  with pytest.raises(ValueError, match=r"old.npz.*key 'init_key' is missing"):
    teacher_dump.load(path)
  arrays.update(init_key=np.zeros(2, np.uint32),
                description=np.asarray(json.dumps({"format_version": 1})))
  teacher_dump.save(path, arrays)
  with pytest.raises(ValueError, match=r"format_version 1; this code reads \[2, 3\]"):
    teacher_dump.load(path)
