"""Test options: `--runslow` also runs tests marked slow (kept out of the default run)."""

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
