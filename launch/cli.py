"""What every entry point shares: quiet library logging, and bad input (flags, config,
data) reported as one clear line with exit code 2 instead of a traceback."""

import logging as std_logging
import re
import sys

from absl import app, flags, logging


class _DropLibraryInfo(std_logging.Filter):
  """Keeps our INFO lines and everyone's warnings; drops orbax's per-save chatter."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def setup_logging() -> None:
  logging.get_absl_handler().addFilter(_DropLibraryInfo())
  logging.set_verbosity(logging.INFO)


def fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def _flag_problem(argv, error: Exception) -> str:
  """A readable message for a flag that could not be applied, naming the flag."""
  text = str(error).strip().strip("'\"").replace("\\n", " ").replace("\\'", "'")
  text = re.sub(r"\s+", " ", text)
  names = re.findall(r"'(\w+)'", text)
  culprit = next((a for a in argv[1:] for n in names if f".{n}" in a.split("=")[0]), None)
  if isinstance(error, AttributeError) and culprit:
    return f"{culprit.split('=')[0]}: no such config field ({text})."
  return f"{culprit + ': ' if culprit else ''}{text}"


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e))
  except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    fail(_flag_problem(argv, e))


def define_config(default: str, lock_config: bool = True):
  """DEFINE_config_file('config', ...): `--config=FILE[:arg]` and `--config.a.b=v`.

  config_flags applies overrides to the default file while defining the flag, so bad
  ones are caught here as well as in `config_value`."""
  from ml_collections import config_flags
  try:
    return config_flags.DEFINE_config_file(
        "config", default, "Config file (ml_collections), optionally FILE:arg; override "
        "any field with --config.a.b=value.", lock_config=lock_config)
  except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    fail(_flag_problem(sys.argv, e))


def config_value(holder):
  """The value of a config_flags flag; its file and `--config.a.b=v` overrides are
  applied here, so their errors are reported like other bad flags."""
  try:
    config = holder.value
    config.keys()  # a file that failed to load gives a proxy that raises on first use
    return config
  except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    fail(_flag_problem(sys.argv, e))


def run(main) -> None:
  """app.run(main), with bad flags and ValueError/FileNotFoundError from main (bad
  config, data or files) reported as 'error: ...' on stderr and exit code 2."""

  def guarded(argv):
    setup_logging()
    try:
      return main(argv)
    except (ValueError, FileNotFoundError) as e:
      fail(str(e))

  app.run(guarded, flags_parser=_parse_flags)


def flat_arrays(tree, prefix: str = "") -> dict:
  """{'prefix' + 'a/b/c': np.ndarray} for a nested dict of arrays (the flat names of
  teacher dumps and meta-param exports)."""
  import jax
  import numpy as np
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    out[f"{prefix}{name}"] = np.asarray(leaf)
  return out
