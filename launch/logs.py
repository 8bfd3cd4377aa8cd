"""Console logging for the entry points: our lines, not orbax's per-save chatter."""

import logging as std_logging

from absl import logging


class _DropLibraryInfo(std_logging.Filter):
  def filter(self, record):
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def setup() -> None:
  logging.get_absl_handler().addFilter(_DropLibraryInfo())
  logging.set_verbosity(logging.INFO)
