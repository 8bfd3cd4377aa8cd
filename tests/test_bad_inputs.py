"""Every bad input is refused up front: exit 2, one line naming the flag or file, the bad
value and what is allowed, no traceback, nothing written (issue 11, item 5)."""

import contextlib
import glob
import importlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from imitator.rollout import episodes
from imitator.training import config_schema
from launch.configs import default
from learners import npz

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "launch/configs/default.py") + ":smoke"
LOG_LINE = re.compile(r"^[IWE]\d{4} ")  # absl's own lines


def _refused(args, words):
  """Runs `python -m ...args`; asserts exit 2 and a single-line message holding
  `words`; returns that line."""
  out = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 2, out.stderr[-2000:]
  assert "Traceback" not in out.stderr, out.stderr[-2000:]
  lines = [l for l in out.stderr.splitlines() if l.strip() and not LOG_LINE.match(l)]
  assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-2000:]
  for w in words:
    assert w in lines[0], lines[0]
  return lines[0]


@pytest.mark.parametrize("flags,words", [
    (["--config.train.nosuch=1"], ["--config.train.nosuch", "'nosuch'", "steps"]),
    (["--config=launch/configs/default.py:smok"], [":smok", "'smok'", "'smoke'"]),
    (["--config=SYNTAX"], ["syntax.py", "line 1", "syntax error"]),
    (["--config.train.curriculum=abc"], ["train.curriculum='abc'", "32@200"]),
    (["--config.family.priors=init_scale=fixed(-5)"], ["init_scale=fixed(-5)", "[0, inf]"]),
    (["--config.train.learning_rate=1e300"], ["train.learning_rate=1e+300", "float32"]),
    (["--config.family.name=sgd_linear", "--config.family.width=32"],
     ["family.width=32", "'sgd_linear'", "['linear']"]),
    (["--config.imitator.in_context.d_model=8"],
     ["imitator.in_context.d_model=8", "imitator.kind='gradient'"]),
])
def test_train_refuses_bad_flags_before_the_workdir(tmp_path, flags, words):
  (tmp_path / "syntax.py").write_text("def get_config(:\n  pass\n")
  flags = [f.replace("SYNTAX", str(tmp_path / "syntax.py")) for f in flags]
  config = [] if any(f.startswith("--config=") for f in flags) else ["--config=" + SMOKE]
  workdir = tmp_path / "run"
  _refused(["launch.train", *config, f"--workdir={workdir}", *flags], words)
  assert not workdir.exists()


def test_train_refuses_a_workdir_it_cannot_create(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  _refused(["launch.train", "--config=" + SMOKE, f"--workdir={blocker}/run"],
           ["cannot create workdir", str(blocker), "Not a directory"])


def test_train_refuses_a_workdir_it_cannot_write_in():
  # /proc/self exists but takes no new file, for root too.
  _refused(["launch.train", "--config=" + SMOKE, "--workdir=/proc/self"],
           ["cannot write in workdir /proc/self", "/proc/self/lock"])


def test_train_refuses_a_training_stream_npz_too_short_for_the_horizon(tmp_path):
  path = tmp_path / "short.npz"
  np.savez(path, x=np.zeros((10, 8), np.float32), y=np.zeros(10, np.float32))
  workdir = tmp_path / "run"
  _refused(["launch.train", "--config=" + SMOKE, f"--workdir={workdir}",
            "--config.stream.kind=npz", f"--config.stream.npz_path={path}"],
           [str(path), "N=10", "horizon * batch = 32 * 1 = 32"])
  assert not workdir.exists()


def _run_dir(tmp_path):
  """A workdir holding only a smoke run's config.json (enough to validate against)."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(default.get_config("smoke").to_json_best_effort())
  return workdir


def _contents(workdir):
  return sorted((p, os.path.getmtime(os.path.join(workdir, p))) for p in os.listdir(workdir))


@contextlib.contextmanager
def _read_only(path):
  """`path` made unwritable: chmod for a user, the immutable attribute for root (whom
  permissions do not stop); skips the test where neither is possible."""
  if os.geteuid() != 0:
    os.chmod(path, 0o555)
    undo = lambda: os.chmod(path, 0o755)
  elif subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0:
    undo = lambda: subprocess.run(["chattr", "-i", str(path)], check=True)
  else:
    pytest.skip("cannot make a directory read-only for root here (no chattr +i)")
  try:
    yield
  finally:
    undo()


@pytest.mark.parametrize("module", ["launch.train", "launch.evaluate"])
def test_a_read_only_run_directory_is_refused_naming_it(tmp_path, module):
  workdir = _run_dir(tmp_path)
  (workdir / "checkpoints").mkdir()  # launch.evaluate wants something to evaluate
  before = _contents(workdir)
  args = ["--config=" + SMOKE] if module == "launch.train" else ["--shifts=none"]
  with _read_only(workdir):
    _refused([module, f"--workdir={workdir}", *args],
             [f"cannot write in workdir {workdir}", f"{workdir}/lock"])
  assert _contents(workdir) == before


@pytest.mark.parametrize("arrays,words", [
    (dict(x=np.zeros((10, 8)), y=np.zeros(10)), ["N=10", "at least 32"]),
    (dict(x=np.zeros((100, 2, 4)), y=np.zeros(100)), ["(2, 4)", "(8,)"]),
    (dict(x=np.zeros((100, 5)), y=np.zeros(100)), ["(5,)", "(8,)"]),
    (dict(x=np.zeros((100, 8)), y=np.zeros((100, 3))), ["3 target columns", "predict 1"]),
    (dict(x=np.zeros((100, 8)), y=np.arange(100) % 3), ["classification", "float targets"]),
    (dict(x=np.full((100, 8), 1e300), y=np.zeros(100)), ["'x'", "1e+300", "1e+06"]),
])
def test_evaluate_refuses_a_stream_npz_that_does_not_fit(tmp_path, arrays, words):
  workdir = _run_dir(tmp_path)
  path = tmp_path / "stream.npz"
  np.savez(path, **arrays)
  before = _contents(workdir)
  _refused(["launch.evaluate", f"--workdir={workdir}", "--shifts=none",
            f"--stream_npz={path}"], ["--stream_npz", str(path)] + words)
  assert _contents(workdir) == before


@pytest.mark.parametrize("flags,words", [
    (["--shifts=,"], ["--shifts=','", "allowed"]),
    (["--shifts=none"], ["no checkpoint", "launch.train"]),
    (["--shifts=none", "--horizons=1,0"], ["--horizons='1,0'", "integers >= 1"]),
    (["--shifts=none", "--horizons=1,x4"], ["--horizons='1,x4'", "1,4,16,64,256,1024"]),
    (["--shifts=none", "--observe=0"], ["--observe='0'", "K >= 1"]),
    (["--shifts=none", "--observe=1.3x"], ["--observe='1.3x'", "whole steps"]),
    (["--shifts=none", "--observe=600"], ["--observe=600", "1 <= K < 512"]),
    (["--shifts=none", "--horizons=32", "--observe=20"], ["--observe=20", "multiple of 8"]),
])
def test_evaluate_refuses_bad_flags_and_writes_nothing(tmp_path, flags, words):
  workdir = _run_dir(tmp_path)
  before = _contents(workdir)
  _refused(["launch.evaluate", f"--workdir={workdir}", *flags], words)
  assert _contents(workdir) == before


def _bad_npz(rng, path):
  """A generated stream file that cannot stand in for the smoke run's stream (inputs
  [N, 8], float targets [N] or [N, 1], at least 32 examples)."""
  n = int(rng.integers(40, 80))
  x, y = rng.normal(size=(n, 8)), rng.normal(size=n)
  case = rng.integers(8)
  if case == 0:
    x = x[:int(rng.integers(1, 32))]
    y = y[:len(x)]
  elif case == 1:
    x = rng.normal(size=(n, int(rng.integers(1, 8))))
  elif case == 2:
    x = x.reshape(n, 2, 4)
  elif case == 3:
    y = rng.integers(0, 5, size=n)
  elif case == 4:
    y = rng.normal(size=(n, int(rng.integers(2, 5))))
  elif case == 5:
    x[rng.integers(n), rng.integers(8)] = rng.choice([np.nan, np.inf, -np.inf])
  elif case == 6:
    x[rng.integers(n), rng.integers(8)] = 10.0 ** rng.uniform(7, 300)
  else:
    y = y[:n - int(rng.integers(1, 5))]
  with np.errstate(over="ignore"):  # float32 turns the largest into inf: also bad
    np.savez(path, x=x.astype(rng.choice([np.float32, np.float64])), y=y)


def test_fuzz_bad_npz_files_are_refused_with_one_line(tmp_path):
  rng = np.random.default_rng(0)
  for i in range(60):
    path = str(tmp_path / f"bad{i}.npz")
    _bad_npz(rng, path)
    with pytest.raises(ValueError) as e:
      npz.check_fits(npz.load(path), "regression", (8,), 1, 32)
    message = str(e.value)
    assert "\n" not in message and path in message, message


def test_fuzz_bad_npz_through_the_cli(tmp_path):
  workdir = _run_dir(tmp_path)
  rng = np.random.default_rng(1)
  path = tmp_path / "bad.npz"
  _bad_npz(rng, path)
  _refused(["launch.evaluate", f"--workdir={workdir}", "--shifts=none",
            f"--stream_npz={path}"], ["--stream_npz", str(path)])


_BAD_VALUES = [-1, 0, 2**40, -2**40, 1e300, -1e300, float("nan"), float("inf"), "abc",
               "", True, None, 1.5, [1]]


def test_fuzz_bad_config_values_are_refused_naming_the_field():
  rng = np.random.default_rng(2)
  base = default.get_config("smoke")
  fields = sorted(config_schema._flat(base))  # pylint: disable=protected-access
  refused = 0
  for _ in range(300):
    field = fields[rng.integers(len(fields))]
    value = _BAD_VALUES[rng.integers(len(_BAD_VALUES))]
    config = default.get_config("smoke")
    block, _, key = field.rpartition(".")
    node = config
    for part in filter(None, block.split(".")):
      node = node[part]
    with node.ignore_type():
      node[key] = value
    try:
      config_schema.validate(config)
      config_schema.check_applicable(config, base)
      episodes.setting_from_config(config)  # the stream, family, teacher blocks' checks
    except ValueError as e:
      message = str(e)
      assert "\n" not in message and key in message, (field, value, message)
      refused += 1
  assert refused > 100


def test_every_shipped_config_still_validates():
  for path in sorted(glob.glob(os.path.join(ROOT, "launch/configs/*.py"))):
    name = os.path.basename(path)[:-3]
    if name == "__init__":
      continue
    module = importlib.import_module(f"launch.configs.{name}")
    if name == "decay":  # launch.decay's grid, not a training config
      from imitator.decay import sweep as decay_sweep
      for arg in (None, "smoke", "large", "imitator"):
        assert decay_sweep.grid(module.get_config(arg))[1]
      continue
    if name == "bandits":  # acting teachers: imitator.acting's own loop and checks
      from imitator.acting import train as acting_train
      for arg in (None, "smoke", "reversal"):
        acting_train.check(module.get_config(arg))
      continue
    for arg in (None, "smoke") + (("large",) if name in ("mixed", "continual_digits") else ()):
      config = module.get_config(arg)
      config_schema.validate(config)
      config_schema.check_applicable(config, module.get_config(arg))


def test_numbers_beyond_float32_and_int32_are_refused():
  config = default.get_config("smoke")
  config.stream.noise = 1e39
  with pytest.raises(ValueError, match=r"stream.noise=1e\+39 .*float32"):
    config_schema.validate(config)
  config = default.get_config("smoke")
  config.train.steps = 2**31
  with pytest.raises(ValueError, match="train.steps=2147483648 .*int32"):
    config_schema.validate(config)
