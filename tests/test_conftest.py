"""The suite's crash handling (tests/conftest.py): a test whose xdist worker dies is run
again once; a second death fails it and it is not run a third time, while the rest of
its file still runs."""

import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

CRASHING = '''
import os, pathlib, signal
RUNS = pathlib.Path(os.environ["RUNS_FILE"])

def test_dies_n_times():
  n = int(RUNS.read_text()) if RUNS.exists() else 0
  RUNS.write_text(str(n + 1))
  if n < int(os.environ["DEATHS"]):
    os.kill(os.getpid(), signal.SIGKILL)

def test_after_it():
  pass
'''


def _session(tmp_path, deaths: int):
  """(pytest's exit code, its output, how often the dying test ran)."""
  shutil.copy(os.path.join(HERE, "conftest.py"), tmp_path / "conftest.py")
  (tmp_path / "test_dying.py").write_text(CRASHING)
  (tmp_path / "test_fine.py").write_text("def test_fine():\n  pass\n")
  runs = tmp_path / "runs"
  env = dict(os.environ, RUNS_FILE=str(runs), DEATHS=str(deaths))
  out = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadfile",
                        "-p", "no:cacheprovider", "-q", str(tmp_path)], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
  return out.returncode, out.stdout + out.stderr, int(runs.read_text())


@pytest.mark.parametrize("deaths, code, ran, summary", [
    (1, 0, 2, "3 passed, 1 rerun"),  # one crash: rerun, and the rerun decides
    (2, 1, 2, "1 failed, 2 passed, 1 rerun"),  # a second crash fails it, no third run
    (50, 1, 2, "1 failed, 2 passed, 1 rerun"),  # not rerun up to xdist's restart limit
])
def test_a_crashed_test_runs_again_once(tmp_path, deaths, code, ran, summary):
  rc, text, runs = _session(tmp_path, deaths)
  assert (rc, runs) == (code, ran), text[-3000:]
  assert summary in text, text[-3000:]
