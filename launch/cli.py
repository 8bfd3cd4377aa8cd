"""What every entry point shares: quiet library logging, and bad input as a clear
one-line error with exit code 2 instead of a traceback."""

import logging as std_logging
import sys

from absl import app, logging


class _DropLibraryInfo(std_logging.Filter):
  """Keeps our INFO lines and everyone's warnings; drops orbax's per-save chatter."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def setup_logging() -> None:
  logging.get_absl_handler().addFilter(_DropLibraryInfo())
  logging.set_verbosity(logging.INFO)


def run(main) -> None:
  """app.run(main), with ValueError/FileNotFoundError (bad config, flags, data) reported
  as 'error: ...' on stderr and exit code 2."""

  def guarded(argv):
    setup_logging()
    try:
      return main(argv)
    except (ValueError, FileNotFoundError) as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(2)

  app.run(guarded)
