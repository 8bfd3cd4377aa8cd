"""Runs survive kills, bad numbers and bad input (issue: reliability)."""

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imitator.rollout import objective
from imitator.runtime import checkpoint, signals
from imitator.training import experiment, train
from launch.configs import default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _smoke(steps=40, **train_fields):
  config = default.get_config("smoke")
  config.train.steps = steps
  config.train.log_every = 10
  config.train.eval_every = 20
  config.train.checkpoint_every = 20
  for k, v in train_fields.items():
    config.train[k] = v
  return config


def _latest(config, workdir):
  exp = experiment.Experiment(config)
  ckpt = checkpoint.Checkpoints(workdir)
  state, _ = ckpt.restore(exp.abstract_state())
  ckpt.close()
  return state


def _train_cmd(workdir, *flags):
  return [sys.executable, "-m", "launch.train",
          "--config=" + os.path.join(ROOT, "launch/configs/default.py") + ":smoke",
          f"--workdir={workdir}", *flags]


@pytest.mark.slow
def test_sigterm_checkpoints_exits_143_and_resume_is_bit_exact(tmp_path):
  flags = ["--config.train.steps=800", "--config.train.log_every=25",
           "--config.train.eval_every=1000", "--config.train.checkpoint_every=1000"]
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  killed = str(tmp_path / "killed")
  proc = subprocess.Popen(_train_cmd(killed, *flags), cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  metrics = os.path.join(killed, "metrics.jsonl")
  deadline = time.time() + 240
  while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
    assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=240)
  assert proc.returncode == 143, out
  lines = [l for l in out.splitlines() if l.startswith("interrupted (SIGTERM)")]
  assert len(lines) == 1 and "run the same command again to resume" in lines[0], out
  stopped = int(lines[0].split("checkpoint written at step ")[1].split(" ")[0])
  assert 0 < stopped < 800
  resumed = subprocess.run(_train_cmd(killed, *flags), cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"resumed from step {stopped}" in resumed.stderr
  straight = str(tmp_path / "straight")
  whole = subprocess.run(_train_cmd(straight, *flags), cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
  assert whole.returncode == 0, whole.stderr[-2000:]
  config = default.get_config("smoke")
  config.train.steps, config.train.log_every = 800, 25
  config.train.eval_every = config.train.checkpoint_every = 1000
  chex.assert_trees_all_equal(_latest(config, killed), _latest(config, straight))
  with open(metrics) as f1, open(os.path.join(straight, "metrics.jsonl")) as f2:
    assert f1.read() == f2.read()


@pytest.mark.slow
def test_same_config_and_seed_give_identical_metrics(tmp_path):
  config = _smoke(steps=20)
  for name in ("a", "b"):
    train.train_and_evaluate(config, str(tmp_path / name), stop_at_step=20)
  a, b = (open(tmp_path / n / "metrics.jsonl").read() for n in ("a", "b"))
  assert a == b and len(a.splitlines()) == 2


@pytest.mark.slow
def test_nonfinite_steps_are_skipped_rolled_back_then_stopped(tmp_path, monkeypatch,
                                                             caplog):
  real = objective.loss_and_grads

  def broken_baseline(imitator, meta, *args, **kwargs):
    loss, grads = real(imitator, meta, *args, **kwargs)
    if getattr(imitator, "freeze_after", 0):  # the `frozen` baseline only
      return loss * jnp.nan, jax.tree.map(lambda g: g * jnp.nan, grads)
    return loss, grads

  monkeypatch.setattr(objective, "loss_and_grads", broken_baseline)
  config = _smoke(steps=60, nonfinite_patience=10, max_rollbacks=2)
  config.train.log_every = 5
  with caplog.at_level(logging.WARNING):
    result = train.train_and_evaluate(config, str(tmp_path))
  assert result["status"] == "diverged"
  rollbacks = [r.getMessage() for r in caplog.records if "back to step" in r.getMessage()]
  assert len(rollbacks) == 2
  assert "step size x0.5" in rollbacks[0] and "step size x0.25" in rollbacks[1]
  message = result["message"]
  assert "['frozen']" in message and "learning_rate" in message and "grad_clip" in message
  state = _latest(config, str(tmp_path))
  init = experiment.Experiment(config).init_state()
  chex.assert_trees_all_equal(state.meta["frozen"], init.meta["frozen"])  # never updated
  chex.assert_trees_all_equal_structs(state.meta["imitator"], init.meta["imitator"])
  leaves = zip(jax.tree.leaves(state.meta["imitator"]), jax.tree.leaves(init.meta["imitator"]))
  assert any(not np.array_equal(a, b) for a, b in leaves)  # the others kept learning
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert lines and all(l["nonfinite_steps/frozen"] > 0 for l in lines)
  assert all(l["nonfinite_steps/imitator"] == 0 for l in lines)


@pytest.mark.slow
def test_corrupted_latest_checkpoint_falls_back_with_a_warning(tmp_path, caplog):
  config = _smoke(steps=40)
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir, stop_at_step=40)
  bad = tmp_path / "checkpoints" / "40" / "state"
  for root, _, files in os.walk(bad):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"\x00garbage")
  os.makedirs(tmp_path / "checkpoints" / "60.orbax-checkpoint-tmp-1", exist_ok=True)
  exp = experiment.Experiment(config)
  ckpt = checkpoint.Checkpoints(workdir)
  with caplog.at_level(logging.WARNING):
    state, info = ckpt.restore(exp.abstract_state())
  ckpt.close()
  assert int(state.step) == 20 and info["step"] == 20
  assert any("checkpoint step 40" in r.getMessage() and "unreadable" in r.getMessage()
             for r in caplog.records)
  assert (tmp_path / "corrupted").is_dir()
  # Training resumes from the good checkpoint and finishes.
  assert train.train_and_evaluate(config, workdir)["status"] == "finished"


@pytest.mark.slow
def test_restore_with_other_shapes_names_the_differing_fields(tmp_path):
  config = _smoke(steps=20)
  train.train_and_evaluate(config, str(tmp_path), stop_at_step=20)
  changed = _smoke(steps=20)
  changed.imitator.gradient.network = "mlp"
  changed.imitator.gradient.width = 7
  with pytest.raises(ValueError) as e:
    train.train_and_evaluate(changed, str(tmp_path))
  text = str(e.value)
  assert "imitator.gradient.width: checkpoint None, config 7" in text
  assert "imitator.gradient.network" in text and "checkpoint step 20" in text


@pytest.mark.parametrize("field,value,words", [
    ("train.steps", -1, ["train.steps=-1", ">= 1"]),
    ("train.learning_rate", 0.0, ["train.learning_rate=0.0", "(0"]),
    ("imitator.kind", "gradientt", ["imitator.kind='gradientt'", "'system_id'"]),
    ("imitator.in_context.arch", "lstm", ["'lstm'", "'recurrent'"]),
    ("train.remat", 1, ["train.remat=1", "true or false"]),
    ("stream.label_noise", 2.0, ["stream.label_noise=2.0", "[0.0, 1.0]"]),
    ("family.optimizers", "sgd,adamw", ["'adamw'", "'rmsprop'"]),
    ("teacher.learning_rate", -0.1, ["learning_rate=-0.1", "allowed"]),
])
def test_bad_config_values_are_named_with_what_is_allowed(field, value, words):
  config = default.get_config("smoke")
  block, key = field.rsplit(".", 1)
  node = config
  for part in block.split("."):
    node = node[part]
  with node.ignore_type():
    node[key] = value
  with pytest.raises(ValueError) as e:
    experiment.Experiment(config)
  for w in words:
    assert w in str(e.value), str(e.value)


def test_unknown_keys_are_rejected():
  config = default.get_config("smoke")
  with config.train.unlocked():
    config.train.stepz = 3
  with pytest.raises(ValueError, match=r"unknown field\(s\) \['stepz'\] in config.train"):
    experiment.Experiment(config)


@pytest.mark.parametrize("flags,words", [
    (["--config.train.steps=-3"], ["train.steps=-3"]),
    (["--config.train.stepz=3"], ["--config.train.stepz", "steps"]),
    (["--config.stream.kind=dataset", "--config.stream.dataset=no_such_set"],
     ["no_such_set"]),
    (["--config.stream.kind=dataset", "--config.stream.dataset=mnist",
      "--config.stream.data_dir=/nonexistent"], ["mnist", "--data_dir", "/nonexistent"]),
    (["--config.stream.kind=npz", "--config.stream.npz_path=MALFORMED"], ["MALFORMED"]),
])
def test_cli_refuses_bad_input_with_exit_2_and_writes_nothing(tmp_path, flags, words):
  malformed = tmp_path / "bad.npz"
  malformed.write_bytes(b"not an npz")
  flags = [f.replace("MALFORMED", str(malformed)) for f in flags]
  words = [w.replace("MALFORMED", str(malformed)) for w in words]
  workdir = tmp_path / "run"
  out = subprocess.run(_train_cmd(str(workdir), *flags), cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-2000:]
  error = [l for l in out.stderr.splitlines() if l.startswith("error: ")]
  assert error, out.stderr[-2000:]
  for w in words:
    assert w in error[0], error[0]
  assert not workdir.exists()


def test_old_config_json_gets_new_fields_from_defaults(tmp_path):
  config = default.get_config("smoke")
  saved = json.loads(config.to_json_best_effort())
  del saved["train"]["tensorboard"]
  saved["train"]["steps"] = 7
  (tmp_path / "config.json").write_text(json.dumps(saved))
  from imitator.runtime import workdir
  loaded = workdir.load_config(str(tmp_path), defaults=default.get_config())
  assert loaded.train.tensorboard is False and loaded.train.steps == 7
  experiment.Experiment(loaded)  # valid again
  with pytest.raises(ValueError, match="config.train.tensorboard is missing"):
    experiment.Experiment(workdir.load_config(str(tmp_path)))


def test_a_run_older_than_a_changed_default_keeps_the_value_it_ran_with(tmp_path):
  """Runs trained before the tracker and settling fields existed ran with affine
  tracking and no settling; re-evaluating them must not switch to today's defaults."""
  saved = json.loads(default.get_config("smoke").to_json_best_effort())
  del saved["imitator"]["gradient"]["tracker"], saved["baselines"]["tracker"]
  del saved["imitator"]["gradient"]["adapt_settle_after"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  from imitator.runtime import workdir
  loaded = workdir.load_config(str(tmp_path), defaults=default.get_config())
  assert default.get_config().imitator.gradient.tracker == "kalman"  # what changed
  assert loaded.imitator.gradient.tracker == loaded.baselines.tracker == "affine"
  assert loaded.imitator.gradient.adapt_settle_after == 0


def _interrupt_at(tmp_path, pattern, sig, delay=1.0):
  """Starts a 2-step smoke run, sends `sig` `delay` s after a log line holds `pattern`;
  (exit code, stderr)."""
  workdir = str(tmp_path / "run")
  flags = ["--config.train.steps=2", "--config.train.log_every=1",
           "--config.train.eval_every=1", "--config.train.checkpoint_every=1"]
  log = tmp_path / "log"
  with open(log, "w") as f:
    proc = subprocess.Popen(_train_cmd(workdir, *flags), cwd=ROOT, stdout=f,
                            stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = time.time() + 240
    while pattern not in log.read_text():
      assert proc.poll() is None and time.time() < deadline, log.read_text()[-2000:]
      time.sleep(0.2)
    time.sleep(delay)
    proc.send_signal(sig)
    proc.wait(timeout=120)
  return proc.returncode, log.read_text(), workdir


@pytest.fixture(autouse=True)
def _no_signal_left_over():
  # The tests below signal their own process; the flag is per process.
  signals.reset()
  yield
  signals.reset()


def test_a_signal_whose_exception_foreign_code_swallowed_still_ends_the_block():
  ran_on = False
  with pytest.raises(signals.Interrupted) as caught:
    with signals.interruptible():
      try:
        signals._handle(signal.SIGTERM, None)
      except BaseException:  # pylint: disable=broad-except
        pass  # as a coroutine being closed does
      ran_on = True
  assert ran_on and caught.value.exit_code == 143
  with pytest.raises(signals.Interrupted):  # and every later phase stops
    signals.check("next phase")


def test_a_signal_turned_into_another_error_is_reported_as_the_signal():
  with pytest.raises(ValueError):  # no signal: the error itself
    signals.as_interrupted(ValueError("bad flag"))
  signals._handle(signal.SIGINT, None)  # recorded only: outside interruptible()
  e = signals.as_interrupted(RuntimeError("Event loop is closed"))
  assert isinstance(e, signals.Interrupted) and e.exit_code == 130


def test_uninterrupted_writes_whole_or_not_at_all(tmp_path):
  path = tmp_path / "f"
  with pytest.raises(signals.Interrupted) as caught:
    with signals.uninterrupted():
      signals._handle(signal.SIGTERM, None)  # held back: the write finishes
      path.write_text("whole")
  assert caught.value.completed and path.read_text() == "whole"
  with pytest.raises(signals.Interrupted) as caught:  # received before: nothing written
    with signals.uninterrupted():
      path.write_text("again")
  assert not caught.value.completed and path.read_text() == "whole"


def test_a_signal_during_a_restore_never_makes_a_checkpoint_look_unreadable(
    tmp_path, monkeypatch, caplog):
  ckpt = checkpoint.Checkpoints(str(tmp_path))
  for step in (1, 2):
    ckpt.save(step, {"w": jnp.full((3,), float(step))}, {"step": step})
  ckpt.wait()
  real = ckpt.latest.restore

  def signalled_restore(step, args=None):  # orbax turns the signal into its own error
    if "state" in args.keys():
      signals._handle(signal.SIGTERM, None)
      raise RuntimeError("Event loop is closed")
    return real(step, args=args)

  monkeypatch.setattr(ckpt.latest, "restore", signalled_restore)
  with caplog.at_level(logging.WARNING), pytest.raises(signals.Interrupted):
    ckpt.restore({"w": jnp.zeros((3,))})
  ckpt.close()
  assert not any("unreadable" in r.getMessage() for r in caplog.records)
  assert checkpoint.saved_steps(str(tmp_path)) == [1, 2]  # step 2 was not set aside
  assert not (tmp_path / "corrupted").exists()


def test_a_signal_raised_where_python_ignores_exceptions_is_raised_again_later():
  # A signal landing in a __del__ (as during compilation, under gc) raises there, where
  # Python only reports the exception; it must not be lost.
  class RaisesInDel:
    def __del__(self):
      signals._handle(signal.SIGTERM, None)

  with pytest.raises(signals.Interrupted) as caught:
    with signals.interruptible():
      RaisesInDel()  # collected at once: Interrupted inside __del__, unraisable
      deadline = time.time() + 10
      while time.time() < deadline:
        time.sleep(0.01)
  assert caught.value.exit_code == 143


def test_a_signal_raised_inside_an_asyncio_callback_reaches_the_caller():
  # Orbax restores in an event loop; asyncio logs and drops what its callbacks raise,
  # except KeyboardInterrupt and SystemExit.
  loop = asyncio.new_event_loop()
  try:
    with pytest.raises(signals.Interrupted) as caught:
      with signals.interruptible():
        done = loop.create_future()
        loop.call_soon(signals._handle, signal.SIGINT, None)
        loop.call_later(0.05, done.set_result, None)
        loop.run_until_complete(done)
  finally:
    loop.close()
  assert caught.value.exit_code == 130


@pytest.mark.slow
def test_sigterm_before_the_first_step_exits_143_with_one_line(tmp_path):
  code, out, workdir = _interrupt_at(tmp_path, "workdir:", signal.SIGTERM)
  assert code == 143, out[-2000:]
  lines = [l for l in out.splitlines() if l.startswith("interrupted (SIGTERM)")]
  assert len(lines) == 1, out[-2000:]
  assert "nothing checkpointed yet" in lines[0]
  assert "run the same command again" in lines[0]
  assert "Traceback" not in out and not os.path.exists(os.path.join(workdir, "lock"))


@pytest.mark.slow
def test_sigint_during_the_final_evaluation_exits_130_naming_the_checkpoint(tmp_path):
  code, out, workdir = _interrupt_at(tmp_path, "evaluating the best checkpoint",
                                     signal.SIGINT)
  assert code == 130, out[-2000:]
  lines = [l for l in out.splitlines() if l.startswith("interrupted (SIGINT)")]
  assert len(lines) == 1, out[-2000:]
  assert "checkpoint at step 2" in lines[0] and "launch.evaluate --workdir=" in lines[0]
  assert "Traceback" not in out and "KeyboardInterrupt" not in out
  assert not os.path.exists(os.path.join(workdir, "lock"))


@pytest.mark.slow
def test_damaged_manifest_falls_back_without_event_loop_tracebacks(tmp_path, capfd):
  config = _smoke(steps=2, log_every=1, eval_every=1, checkpoint_every=1)
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir, stop_at_step=2)
  for root, _, files in os.walk(tmp_path / "checkpoints" / "2"):
    for name in files:
      if name == "manifest.ocdbt":
        with open(os.path.join(root, name), "wb") as f:
          f.write(b"\x00garbage")
  capfd.readouterr()
  exp = experiment.Experiment(config)
  ckpt = checkpoint.Checkpoints(workdir)
  state, info = ckpt.restore(exp.abstract_state())
  ckpt.close()
  time.sleep(1)  # reads left in flight would print their tracebacks by now
  err = capfd.readouterr().err
  assert int(state.step) == 1 and info["step"] == 1
  assert (tmp_path / "corrupted").is_dir()  # the unreadable step 2 set aside
  assert "Event loop is closed" not in err and "Traceback" not in err
