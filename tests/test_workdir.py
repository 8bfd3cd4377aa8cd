"""A workdir that cannot be broken: reruns, concurrent runs, changed configs, damaged
files (issue 11). Most checks use a finished workdir built without training (a checkpoint
of the initial state at the last step, a report with the training rows), so the command
line is exercised in seconds; the end-to-end rerun after launch.evaluate is slow."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from imitator.evaluation import report_json
from imitator.runtime import checkpoint, workdir
from imitator.training import experiment, train
from launch.configs import default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 20
FLAGS = [f"--config.train.steps={STEPS}", "--config.train.log_every=10",
         "--config.train.eval_every=10", "--config.train.checkpoint_every=10"]


def _config(**train_fields):
  config = default.get_config("smoke")
  config.train.steps, config.train.log_every = STEPS, 10
  config.train.eval_every = config.train.checkpoint_every = 10
  for k, v in train_fields.items():
    config.train[k] = v
  return config


def _row(name, nie, **extra):
  ci = [None, None] if nie is None else [nie - 0.01, nie + 0.01]
  return {"imitator": name, "shift": "none", "strength": None, "horizon": 32, "nie": nie,
          "nie_ci": ci,
          "n_teachers": 64, "n_teachers_excluded": 0, **extra}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A workdir as a finished, evaluated smoke run leaves it: checkpoints at steps 10 and
  20 (the initial state: no training needed), config.json, metrics.jsonl and a report
  whose training rows launch.evaluate enriched; one imitator's NIE is not finite."""
  root = str(tmp_path_factory.mktemp("finished"))
  config = _config()
  exp = experiment.Experiment(config)
  state = exp.init_state()
  ckpt = checkpoint.Checkpoints(root, keep=config.train.keep_checkpoints)
  saved = json.loads(config.to_json_best_effort())
  for step in (10, STEPS):
    ckpt.save(step, state._replace(step=state.step + step),
              {"step": step, "metrics": None, "config": saved, "best_val_nie": 0.5},
              val_nie=0.5)
  ckpt.wait()
  ckpt.close()
  with open(os.path.join(root, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  with open(os.path.join(root, "metrics.jsonl"), "w") as f:
    for step in (10, STEPS):
      f.write(json.dumps({"step": step, "horizon": 32, "loss/imitator": 0.5}) + "\n")
  os.makedirs(os.path.join(root, "eval"))
  report = {"t_train": 32, "results": [
      _row("gradient", 0.37, horizon_to_divergence={"0.1": {"step": None}}, task_gap=0.1),
      _row("frozen", None, horizon_to_divergence={"0.1": {"step": 3}}, task_gap=None),
      _row("gradient", 0.9, horizon=512)], "comparisons": [], "breaking_points": []}
  with open(os.path.join(root, "eval", "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  return root


def _copy(finished, tmp_path):
  dest = str(tmp_path / "run")
  shutil.copytree(finished, dest)
  return dest


def _contents(root):
  out = {}
  for d, _, files in os.walk(root):
    for name in files:
      with open(os.path.join(d, name), "rb") as f:
        out[os.path.relpath(os.path.join(d, name), root)] = f.read()
  return out


def _cli(module, workdir, *flags, timeout=300):
  cmd = [sys.executable, "-m", module, f"--workdir={workdir}"]
  if module == "launch.train":
    cmd.insert(3, "--config=" + os.path.join(ROOT, "launch/configs/default.py") + ":smoke")
    cmd += FLAGS
  return subprocess.run(cmd + list(flags), cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout)


def _error(out):
  """The one 'error: ' line of a run that exited 2 (and no traceback)."""
  assert out.returncode == 2, out.stderr[-3000:]
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  errors = [l for l in out.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1, out.stderr[-3000:]
  return errors[0]


# --------------------------------------------------------------------------- rerun


def test_rerun_on_a_finished_workdir_reprints_its_summary_and_writes_nothing(
    finished, tmp_path):
  run = _copy(finished, tmp_path)
  before = _contents(run)
  out = _cli("launch.train", run)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "the run is complete (step 20" in out.stdout
  lines = [l for l in out.stdout.splitlines() if " NIE " in l]
  # The training rows only (not the 16x one), a non-finite NIE shown as n/a.
  assert len(lines) == 2, out.stdout
  assert "gradient  NIE 0.3700  [0.3600, 0.3800]" in lines[0]
  assert "frozen  NIE n/a  [n/a, n/a]" in lines[1]
  assert _contents(run) == before  # report rows keep their fields; no lock left behind


def test_summary_lines_show_non_finite_values_as_na():
  lines = workdir.summary_lines([_row("x", None), {"imitator": "y", "nie": 0.5}])
  assert "NIE n/a  [n/a, n/a]" in lines[0]
  assert "NIE 0.5000  [n/a, n/a]" in lines[1]


@pytest.mark.slow
def test_train_evaluate_train_again_keeps_the_report(tmp_path):
  """The README sequence on one workdir: the second training exits 0 and report.json,
  report.md and metrics.jsonl stay byte for byte as launch.evaluate left them."""
  run = str(tmp_path / "run")
  first = _cli("launch.train", run, timeout=900)
  assert first.returncode == 0, first.stderr[-3000:]
  ev = _cli("launch.evaluate", run, "--shifts=none", "--noforgetting", timeout=900)
  assert ev.returncode == 0, ev.stderr[-3000:]
  before = _contents(run)
  again = _cli("launch.train", run, timeout=900)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "the run is complete" in again.stdout
  assert _contents(run) == before
  report = json.load(open(os.path.join(run, "eval", "report.json")))
  rows = workdir.training_rows(report, 32)
  assert rows and all("horizon_to_divergence" in r and "task_gap" in r for r in rows)


# --------------------------------------------------------------------------- lock


_HOLD = ("import sys, time; from imitator.runtime import workdir\n"
         "with workdir.lock(sys.argv[1], 'holder'):\n"
         "  print('locked', flush=True); time.sleep(120)\n")


def test_lock_refuses_a_second_holder_and_takes_over_a_dead_ones(tmp_path, caplog):
  holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(ValueError) as e:
      with workdir.lock(str(tmp_path)):
        pass
    assert f"workdir {tmp_path} is in use" in str(e.value)
    assert f"pid {holder.pid}" in str(e.value) and "\n" not in str(e.value)
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  assert (tmp_path / "lock").exists()  # left behind by the killed holder
  with caplog.at_level(logging.WARNING):
    with workdir.lock(str(tmp_path), "me"):
      assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()
  assert any(f"stale lock of pid {holder.pid}" in r.getMessage() for r in caplog.records)
  assert not (tmp_path / "lock").exists()  # released on leaving
  with workdir.lock(str(tmp_path)):  # and free again
    pass


@pytest.mark.parametrize("module", ["launch.train", "launch.evaluate"])
def test_second_process_on_a_workdir_exits_2_naming_the_holder(finished, tmp_path, module):
  run = _copy(finished, tmp_path)
  before = _contents(run)
  with workdir.lock(run, "test"):
    out = _cli(module, run)
    after = _contents(run)
  line = _error(out)
  assert f"workdir {run} is in use" in line and f"pid {os.getpid()}" in line, line
  assert after.pop("lock") and after == before


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGINT"])
def test_signal_during_evaluate_exits_with_one_line_and_writes_nothing(finished, tmp_path,
                                                                      sig, code):
  run = _copy(finished, tmp_path)
  before = _contents(run)
  proc = subprocess.Popen([sys.executable, "-m", "launch.evaluate", f"--workdir={run}",
                           "--shifts=none", "--noforgetting"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while not os.path.exists(os.path.join(run, "lock")):  # taken where evaluation starts
    assert proc.poll() is None and time.time() < deadline, proc.communicate()
    time.sleep(0.1)
  time.sleep(2)  # into building and compiling the evaluation
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == code, err[-3000:]
  assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
  lines = [l for l in err.splitlines() if l.startswith("interrupted (")]
  assert len(lines) == 1 and "while evaluating: nothing written" in lines[0], err[-3000:]
  assert "run the same command again" in lines[0]
  assert _contents(run) == before  # report.json as it was, the lock released


@pytest.mark.slow
def test_a_signal_at_any_moment_of_an_evaluation_ends_it_with_its_exit_code(finished,
                                                                            tmp_path):
  # 20 signals spread over a whole evaluation (imports, flags, orbax restoring,
  # compiling, the battery, writing report.json, plots, printing, shutting down).
  run = _copy(finished, tmp_path)
  cmd = [sys.executable, "-m", "launch.evaluate", f"--workdir={run}", "--shifts=none",
         "--noforgetting"]
  start = time.time()
  whole = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert whole.returncode == 0, whole.stderr[-3000:]
  duration = time.time() - start
  report = os.path.join(run, "eval", "report.json")
  for i in range(20):
    sig, code = ((signal.SIGTERM, 143), (signal.SIGINT, 130))[i % 2]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    time.sleep(duration * (i + 0.5) / 20)
    finished_first = proc.poll() is not None
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    where = f"signal {i} ({sig.name}) at {duration * (i + 0.5) / 20:.1f}s: {err[-2000:]}"
    if finished_first:
      assert proc.returncode == 0, where
      continue
    # Killed by the signal's default action only after the last look at the flag.
    assert proc.returncode in (code, -sig), where
    lines = [l for l in err.splitlines() if l.startswith("interrupted (")]
    assert len(lines) == (proc.returncode == code), where
    assert "Traceback" not in err, where
    assert not os.path.exists(os.path.join(run, "lock")), where
    with open(report) as f:
      json.load(f)  # whole, as it was or with the rows merged


# --------------------------------------------------------------------------- metrics


def _write_lines(path, *lines, end="\n"):
  with open(path, "w") as f:
    f.write("\n".join(lines) + end)


def test_metrics_rewritten_to_the_restored_step_without_duplicates(tmp_path, caplog):
  path = str(tmp_path / "metrics.jsonl")
  r = lambda s: json.dumps({"step": s, "loss": s / 10})
  _write_lines(path, r(10), r(20), r(30), r(10), r(20), '{"step": 30, "lo', end="")
  with caplog.at_level(logging.WARNING):
    kept = workdir.rewrite_metrics(path, 20)
  assert [k["step"] for k in kept] == [10, 20]
  assert open(path).read() == r(10) + "\n" + r(20) + "\n"
  messages = [r.getMessage() for r in caplog.records]
  assert sum("cut short" in m and path in m for m in messages) == 1
  assert sum("duplicated" in m and path in m for m in messages) == 1


class _Stop(Exception):
  pass


@pytest.mark.parametrize("case", ["resume_at_10", "killed_before_first_checkpoint"])
def test_resume_rewrites_metrics_to_the_restored_step(finished, tmp_path, monkeypatch,
                                                      caplog, case):
  """Up to the first compilation (stopped there): the restored step decides what
  metrics.jsonl keeps; an empty checkpoints/ (a kill before the first checkpoint) is a
  restart from step 0, not a refusal."""
  run = _copy(finished, tmp_path)
  shutil.rmtree(os.path.join(run, "checkpoints", "20"))
  if case == "killed_before_first_checkpoint":
    shutil.rmtree(os.path.join(run, "checkpoints", "10"))
    shutil.rmtree(os.path.join(run, "best"))
  path = os.path.join(run, "metrics.jsonl")
  r = lambda s: json.dumps({"step": s, "horizon": 32})
  _write_lines(path, r(10), r(20), r(10), '{"step": 30, "ho', end="")

  def stop(self):
    raise _Stop()

  monkeypatch.setattr(experiment.Experiment, "validation_fn", stop)
  with caplog.at_level(logging.WARNING), pytest.raises(_Stop):
    train.train_and_evaluate(_config(), run)
  expected = r(10) + "\n" if case == "resume_at_10" else ""
  assert open(path).read() == expected
  assert any("cut short" in m.getMessage() and path in m.getMessage()
             for m in caplog.records)
  assert not os.path.exists(os.path.join(run, "lock"))


def test_metrics_line_damaged_mid_file_is_named(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  _write_lines(path, '{"step": 10}', "garbage", '{"step": 20}')
  with pytest.raises(ValueError, match=f"{path} line 2 is not a metrics record"):
    workdir.read_metrics(path)


def test_deleted_checkpoints_do_not_restart_the_run_from_zero(finished, tmp_path):
  run = _copy(finished, tmp_path)
  shutil.rmtree(os.path.join(run, "checkpoints"))
  shutil.rmtree(os.path.join(run, "best"))
  metrics = open(os.path.join(run, "metrics.jsonl")).read()
  with pytest.raises(ValueError) as e:
    train.train_and_evaluate(_config(), run)
  text = str(e.value)
  assert "metrics.jsonl holds a run up to step 20" in text and "checkpoints" in text
  assert "fresh --workdir" in text and "\n" not in text
  assert open(os.path.join(run, "metrics.jsonl")).read() == metrics
  assert not os.path.exists(os.path.join(run, "lock"))


# --------------------------------------------------------------------------- config


def test_config_changes_ignore_resumable_fields():
  saved = json.loads(_config().to_json_best_effort())
  now = _config(steps=500, log_every=7, eval_every=9, checkpoint_every=11,
                keep_checkpoints=5)
  now.eval.teachers = 8
  assert workdir.config_changes(saved, json.loads(now.to_json_best_effort())) == []
  now.train.learning_rate = 0.5
  now.family.name = "sgd_linear"
  assert workdir.config_changes(saved, json.loads(now.to_json_best_effort())) == [
      "family.name: run 'small_mixed', now 'sgd_linear'",
      "train.learning_rate: run 0.01, now 0.5"]


def test_a_renamed_field_of_an_old_config_json_loads_under_its_new_name(tmp_path):
  old = json.loads(_config().to_json_best_effort())
  del old["eval"]["chunk"]
  old["eval"]["window"] = 16  # its name before issue 14
  (tmp_path / "config.json").write_text(json.dumps(old))
  saved = workdir.read_saved_config(str(tmp_path))
  expected = json.loads(json.dumps(old))
  expected["eval"]["chunk"] = expected["eval"].pop("window")
  assert saved == expected  # the rest untouched, None placeholders included
  assert workdir.load_config(str(tmp_path), default.get_config()).eval.chunk == 16


def test_restart_with_another_config_exits_2_naming_the_fields(finished, tmp_path):
  run = _copy(finished, tmp_path)
  before = _contents(run)
  out = _cli("launch.train", run, "--config.train.learning_rate=0.05")
  line = _error(out)
  assert "train.learning_rate: run 0.01, now 0.05" in line, line
  assert "config.json" in line and "--allow_config_change" in line, line
  assert _contents(run) == before


def test_allowed_config_change_keeps_the_old_config(finished, tmp_path):
  run = _copy(finished, tmp_path)
  old = open(os.path.join(run, "config.json")).read()
  config = _config(learning_rate=0.05)
  # The run is complete: nothing to train, and its config stays the one it ran with.
  result = train.train_and_evaluate(config, run, allow_config_change=True)
  assert result["status"] == "complete"
  assert open(os.path.join(run, "config.json")).read() == old
  with pytest.raises(ValueError, match="train.learning_rate: run 0.01, now 0.05"):
    train.train_and_evaluate(config, run)


# --------------------------------------------------------------------------- damaged files


def test_damaged_config_json_is_rewritten_from_the_checkpoint(finished, tmp_path, caplog):
  run = _copy(finished, tmp_path)
  path = os.path.join(run, "config.json")
  good = open(path).read()
  with open(path, "w") as f:
    f.write(good[:40])
  with caplog.at_level(logging.WARNING):
    result = train.train_and_evaluate(_config(), run)
  assert result["status"] == "complete"
  assert open(path).read() == good
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert len(warnings) == 1 and path in warnings[0] and "checkpoint step 20" in warnings[0]


def test_evaluate_refuses_a_damaged_config_json_naming_it(finished, tmp_path):
  run = _copy(finished, tmp_path)
  path = os.path.join(run, "config.json")
  text = open(path).read()
  with open(path, "w") as f:
    f.write(text[:40])
  line = _error(_cli("launch.evaluate", run))
  assert f"{path} is damaged" in line and "launch.train" in line, line


def test_damaged_report_json_is_refused_before_anything_is_computed(finished, tmp_path):
  run = _copy(finished, tmp_path)
  path = os.path.join(run, "eval", "report.json")
  with open(path, "w") as f:
    f.write('{"t_train": 32, "results": [{"imi')
  before = _contents(run)
  with pytest.raises(ValueError, match=f"{path} is damaged.*move it aside"):
    train.train_and_evaluate(_config(), run)
  line = _error(_cli("launch.evaluate", run, "--shifts=none", "--noforgetting"))
  assert f"{path} is damaged" in line and "move it aside" in line, line
  assert _contents(run) == before
  with open(path, "w") as f:
    json.dump({"results": [{"nie": 1}]}, f)  # JSON, but not a report
  with pytest.raises(ValueError, match=f"{path} is damaged \\(not a report"):
    workdir.read_report(run)


def test_rows_that_cannot_be_merged_are_kept_beside_the_report(tmp_path):
  (tmp_path / "eval").mkdir()

  with open(tmp_path / "eval" / "report.json", "w") as f:
    json.dump({"t_train": 32, "results": [{"imitator": "gradient"}]}, f)  # rows lack keys
  rows = [_row("gradient", 0.3)]
  with pytest.raises(ValueError) as e:
    report_json.write_report(str(tmp_path), 32, rows, [], [])
  kept = [p for p in os.listdir(tmp_path / "eval") if p.startswith("report.unmerged-")]
  assert len(kept) == 1 and str(tmp_path / "eval" / kept[0]) in str(e.value)
  assert json.load(open(tmp_path / "eval" / kept[0]))["results"] == rows


def test_evaluate_refuses_an_empty_shift_list():
  line = _error(subprocess.run(
      [sys.executable, "-m", "launch.evaluate", "--workdir=/nonexistent", "--shifts=,"],
      cwd=ROOT, capture_output=True, text=True, timeout=120))
  assert "--shifts" in line and "allowed" in line, line


def test_unreadable_best_checkpoint_falls_back_to_the_latest(finished, tmp_path, caplog):
  run = _copy(finished, tmp_path)
  for d, _, files in os.walk(os.path.join(run, "best", "20", "state")):
    for name in files:
      with open(os.path.join(d, name), "wb") as f:
        f.write(b"\x00garbage")
  exp = experiment.Experiment(_config())
  ckpt = checkpoint.Checkpoints(run)
  with caplog.at_level(logging.WARNING):
    state, info = ckpt.restore(exp.abstract_state(), best=True)
  ckpt.close()
  assert int(state.step) == 20 and info["step"] == 20
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert len(warnings) == 1, warnings
  assert "best checkpoint step 20" in warnings[0] and "checkpoints" in warnings[0]
