"""Test options: `--runslow` also runs tests marked slow (kept out of the default run);
a test whose xdist worker crashes once is run again (see below)."""

import collections
import os

import pytest

# The suite runs in parallel workers (`-n 2`, pytest-xdist): on an accelerator each
# worker would otherwise reserve most of its memory up front and starve the others.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def pytest_addoption(parser):
  parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: slower checks, run with --runslow")


def pytest_collection_modifyitems(config, items):
  if config.getoption("--runslow"):
    return
  skip = pytest.mark.skip(reason="slow: run with --runslow")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)


# XLA's CPU compiler has crashed (SIGSEGV) a long-lived xdist worker mid-compile, in tests
# that pass alone and on rerun. Under `--dist loadfile` xdist re-queues the crashed test
# (to a new worker, or to the other one if it is idle first); its first crash is reported
# as a rerun, so that run decides the outcome.
# A second crash of the same test fails it, and so does any crash past the session's budget
# (far below xdist's worker-restart limit, after which re-queued tests would not run); a
# failed crash item is taken out of the queue, or xdist would run it again and again
# until the worker-restart limit (tests/test_conftest.py).
CRASH_RERUNS = 2
_crashed = collections.Counter()


def _pending_units(sched, nodeid: str) -> list:
  """The work units (queued, or handed to a worker) in which the scheduler will run
  `nodeid` again."""
  units = list(getattr(sched, "workqueue", {}).values())
  units += [u for work in getattr(sched, "assigned_work", {}).values() for u in work.values()]
  return [unit for unit in units if nodeid in unit and not unit[nodeid]]


@pytest.hookimpl(optionalhook=True)
def pytest_handlecrashitem(crashitem, report, sched):
  units = _pending_units(sched, crashitem)
  if units and not _crashed[crashitem] and sum(_crashed.values()) < CRASH_RERUNS:
    report.outcome = "rerun"
  else:
    for unit in units:  # loadscope's units map nodeid -> completed
      unit[crashitem] = True
  _crashed[crashitem] += 1


def pytest_report_teststatus(report):
  if report.outcome == "rerun":
    return "rerun", "R", "RERUN"


def pytest_terminal_summary(terminalreporter):
  for nodeid, n in _crashed.items():
    terminalreporter.write_line(f"{nodeid}: its worker crashed {n} time(s); after its "
                                "first crash the test is run again")


def untrained_workdir(root: str, config) -> str:
  """`root` as a run of `config` leaves it, without training: a checkpoint of the
  initial state at step 10 (also the best, val_nie 0.5) and config.json."""
  import json  # pylint: disable=import-outside-toplevel
  from imitator.runtime import checkpoint  # pylint: disable=import-outside-toplevel
  from imitator.training import experiment  # pylint: disable=import-outside-toplevel
  exp = experiment.Experiment(config)
  ckpt = checkpoint.Checkpoints(root, keep=config.train.keep_checkpoints)
  saved = json.loads(config.to_json_best_effort())
  ckpt.save(10, exp.init_state(), {"step": 10, "metrics": None, "config": saved,
                                   "best_val_nie": 0.5}, val_nie=0.5)
  ckpt.wait()
  ckpt.close()
  with open(os.path.join(root, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  return root
