"""What every entry point shares: quiet library logging, and bad input (flags, config,
data) reported as one clear line with exit code 2 instead of a traceback."""

import logging as std_logging
import os
import re
import sys

from absl import app, flags, logging

from imitator.runtime import checkpoint, signals
from imitator.runtime import workdir as workdir_lib


class _DropLibraryInfo(std_logging.Filter):
  """Keeps our INFO lines and everyone's warnings; drops orbax's per-save chatter."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def setup_logging() -> None:
  logging.get_absl_handler().addFilter(_DropLibraryInfo())
  logging.set_verbosity(logging.INFO)


def exit_interrupted(message: str, exit_code: int) -> None:
  """Prints `message` on stderr and ends the process with `exit_code` at once, skipping
  the interpreter's finalization: a signal can cut a JAX call short while XLA's threads
  still run, and finalizing beside them has segfaulted (exit -11 instead of 130). The
  callers have closed the checkpoints and the workdir lock by now."""
  print(message, file=sys.stderr, flush=True)
  logging.flush()
  sys.stdout.flush()
  os._exit(exit_code)


def _exit_if_signalled(when: str) -> None:
  signals.restore_default()
  signum = signals.received()
  if signum is not None:
    e = signals.Interrupted(signum)
    exit_interrupted(f"interrupted ({e.name}) {when}", e.exit_code)


def parse_steps(flag: str, text: str, t_train: int) -> int:
  """A flag's value K (steps) or Kx (K x T_train, in whole steps) as steps >= 1;
  ValueError naming the flag."""
  v = text.strip().lower()
  try:
    k = round(float(v[:-1]) * t_train) if v.endswith("x") else int(v)
  except ValueError:
    k = 0
  if k < 1 or (v.endswith("x") and abs(float(v[:-1]) * t_train - k) > 1e-9):
    raise ValueError(f"--{flag}={text!r}: allowed are a number of steps K >= 1 or Kx, "
                     f"K x T_train (T_train = {t_train}) in whole steps, e.g. "
                     f"--{flag}={t_train} or --{flag}=1x.")
  return k


def parse_observe(values, t_train: int) -> tuple:
  """--observe values (K steps, or Kx: K x T_train) as steps; ValueError naming the
  flag. Whether each fits the horizons is checked by the caller."""
  return tuple(sorted({parse_steps("observe", text, t_train) for text in values}))


def fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def _config_file_problem(text: str) -> str | None:
  """The error a config file raised, from the traceback config_flags puts in its
  message (its last line), or None when `text` holds none."""
  if "Error whilst parsing config file" not in text:
    return None
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  return lines[-1] if lines else None


def _no_such_field(argv, name: str, default: str | None) -> str | None:
  """'--config.a.b: no such config field ...' for the override naming `name`, listing
  the fields that block does have, or None when no override names it."""
  for arg in argv[1:]:
    flag = arg.split("=", 1)[0]
    if not flag.lstrip("-").startswith("config."):
      continue
    path = flag.lstrip("-").split(".")[1:]
    if name not in path:
      continue
    node, where = _file_config(argv, default), "config"
    for part in path:
      try:
        node = node[part]
      except (KeyError, AttributeError, TypeError):
        allowed = sorted(node.keys()) if hasattr(node, "keys") else []
        return (f"{flag}: no such config field: {where} has no {part!r}"
                f"{'; allowed: ' + str(allowed) if allowed else ''}.")
      where += f".{part}"
  return None


def _file_config(argv, default: str | None):
  """The config file's own config (no overrides), loaded again; None if it fails."""
  from ml_collections.config_flags import config_flags  # where its file parser lives
  given = [a.split("=", 1)[1] for a in argv[1:] if a.startswith(("--config=", "-config="))]
  try:
    return config_flags.ConfigFileFlagParser("config").parse(
        given[-1] if given else default)
  except Exception:  # pylint: disable=broad-except
    return None


def _flag_problem(argv, error: BaseException, default: str | None = None) -> str:
  """A readable one-line message for a flag that could not be applied, naming it;
  `default`: the config file used when --config is not given."""
  if isinstance(error, SyntaxError):
    return (f"--config: {error.filename}, line {error.lineno}: syntax error "
            f"({error.msg}); fix the config file.")
  raw = str(error)
  inner = _config_file_problem(raw.replace("\\n", "\n"))
  if inner is not None:
    flag = raw.split(": Error whilst", 1)[0] if ": Error whilst" in raw else "--config"
    return f"{flag.replace('flag ', '', 1)}: {inner}"
  text = raw.strip()
  if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":  # a KeyError's repr
    text = text[1:-1]
  text = re.sub(r"\s+", " ", text.replace("\\n", " ").replace("\\'", "'"))
  text = text.removeprefix("flag ")
  names = re.findall(r"'(\w+)'", text) or ([text] if re.fullmatch(r"\w+", text) else [])
  if isinstance(error, (AttributeError, KeyError)):
    for name in names:
      message = _no_such_field(argv, name, default)
      if message:
        return message
  culprit = next((a for a in argv[1:] for n in names if f".{n}" in a.split("=")[0]), None)
  if isinstance(error, AttributeError) and culprit:
    return f"{culprit.split('=')[0]}: no such config field ({text})."
  return f"{culprit + ': ' if culprit else ''}{text}"


def _parse_flags(argv):
  # A config file that fails to load, whatever it raises, is bad input: one line.
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    fail(_flag_problem(argv, e, _config_default()))


def define_config(default: str, lock_config: bool = True):
  """DEFINE_config_file('config', ...): `--config=FILE[:arg]` and `--config.a.b=v`.

  config_flags applies overrides to the default file while defining the flag, so bad
  ones are caught here as well as in `config_value`."""
  from ml_collections import config_flags
  try:
    return config_flags.DEFINE_config_file(
        "config", default, "Config file (ml_collections), optionally FILE:arg; override "
        "any field with --config.a.b=value.", lock_config=lock_config)
  except Exception as e:  # pylint: disable=broad-except
    fail(_flag_problem(sys.argv, e, default))


def config_value(holder):
  """The value of a config_flags flag; its file and `--config.a.b=v` overrides are
  applied here, so their errors are reported like other bad flags."""
  try:
    config = holder.value
    config.keys()  # a file that failed to load gives a proxy that raises on first use
    return config
  except Exception as e:  # pylint: disable=broad-except
    fail(_flag_problem(sys.argv, e, _config_default()))


def _config_default() -> str | None:
  """The config file used when --config is not given (absl keeps it unparsed only
  once the flag has parsed it)."""
  if "config" not in flags.FLAGS:
    return None
  flag = flags.FLAGS["config"]
  path = getattr(flag, "default_unparsed", None) or flag.default
  return path if isinstance(path, str) else None


def file_config():
  """The config file's own config: `--config=FILE[:arg]` without the `--config.a.b=v`
  overrides (what they changed is the difference)."""
  return _file_config(sys.argv, _config_default())


def run(main) -> None:
  """app.run(main), with bad flags and ValueError/FileNotFoundError from main (bad
  config, data or files) reported as 'error: ...' on stderr and exit code 2. A signal
  recorded by `signals.install()` and not yet acted on is checked once more before
  either exit (the process ends with 128 + its number); after that look a signal
  takes its default action."""

  def guarded(argv):
    setup_logging()
    try:
      main(argv)
    except (ValueError, FileNotFoundError) as e:
      _exit_if_signalled(f"with an error ({e})")
      fail(str(e))
    _exit_if_signalled("as it finished: everything it does is written")

  app.run(guarded, flags_parser=_parse_flags)


def train_and_report(config, workdir: str, command: str,
                     allow_config_change: bool = False) -> None:
  """`train.train_and_evaluate` as an entry point runs it: a signal exits 143/130 with
  one line saying what is saved and how to go on; a diverged run exits 1; a finished
  (or already complete) run prints its summary and report path."""
  from imitator.training import train  # pylint: disable=import-outside-toplevel
  result = None
  try:
    with signals.interruptible():
      result = train.train_and_evaluate(config, workdir, command=command,
                                        allow_config_change=allow_config_change)
  except BaseException as e:  # pylint: disable=broad-except
    e = signals.as_interrupted(e)  # anything else goes on up
    if result is not None and result["status"] != "diverged":
      e.phase, e.completed = "evaluation", True  # it finished before the signal counted
    exit_interrupted(_interrupted_message(e, workdir, result), e.exit_code)
  if result["status"] == "diverged":
    print(f"error: {result['message']}", flush=True)
    sys.exit(1)
  if result["status"] == "preempted":  # a signal on another process of the run
    exit_interrupted(f"interrupted (SIGTERM on another process): "
                     f"{result['message']}", 143)
  if result["status"] == "complete":
    print(f"the run is complete (step {result['step']}, train.steps="
          f"{config.train.steps}); nothing to do. Its summary:", flush=True)
  rows = workdir_lib.training_rows(result["report"], result["t_train"])
  for line in workdir_lib.summary_lines(rows):
    print(line, flush=True)
  print(f"report: {os.path.join(os.path.abspath(workdir), 'eval', 'report.json')}",
        flush=True)


def acting_train_and_report(config, workdir: str, command: str) -> None:
  """`train_and_report` for an acting config (`launch/configs/bandits.py`): its own loop
  and closed-loop report."""
  from imitator.acting import report as acting_report  # pylint: disable=import-outside-toplevel
  from imitator.acting import train as acting_train  # pylint: disable=import-outside-toplevel
  try:
    with signals.interruptible():
      result = acting_train.train_and_evaluate(config, workdir, command=command)
  except BaseException as e:  # pylint: disable=broad-except
    e = signals.as_interrupted(e)
    steps = checkpoint.saved_steps(os.path.abspath(workdir))
    saved = f"checkpoint at step {steps[-1]}" if steps else "nothing checkpointed yet"
    exit_interrupted(f"interrupted ({e.name}): {saved} in {os.path.abspath(workdir)}; "
                     "run the same command again to go on", e.exit_code)
  if result["status"] == "preempted":
    exit_interrupted(f"interrupted: {result['message']}", 143)
  if result["status"] == "complete":
    print(f"the run is complete (train.steps={config.train.steps}); nothing to do. Its "
          "summary:", flush=True)
  for line in acting_report.summary_lines(result):
    print(line, flush=True)
  print(f"report: {os.path.join(os.path.abspath(workdir), 'eval', 'report.json')}",
        flush=True)


def _interrupted_message(e, workdir, result) -> str:
  """One line: what an interrupt leaves, how to continue."""
  if result is not None and result["status"] == "preempted":
    return f"interrupted ({e.name}): {result['message']}"
  workdir = os.path.abspath(workdir)
  steps = checkpoint.saved_steps(workdir)
  saved = (f"checkpoint at step {steps[-1]} in {os.path.join(workdir, 'checkpoints')}"
           if steps else "nothing checkpointed yet")
  report = workdir_lib.report_path(workdir)
  if e.phase == "evaluation" and e.completed:
    return (f"interrupted ({e.name}) after the final evaluation: {saved}, report in "
            f"{report}; the run is complete")
  if e.phase == "evaluation":
    return (f"interrupted ({e.name}) during the final evaluation: training is done "
            f"({saved}), {report} not written; run the same command again (it only "
            f"evaluates) or python -m launch.evaluate --workdir={workdir}")
  return (f"interrupted ({e.name}) before training {'resumed' if steps else 'started'}: "
          f"{saved}; run the same command again to "
          f"{'resume' if steps else 'start from step 0'}")
