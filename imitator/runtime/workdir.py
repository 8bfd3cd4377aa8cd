"""A run directory (workdir) and the rules that keep it whole.

What a workdir holds: config.json (the run's config), command.txt (the first command),
metrics.jsonl (one JSON record per log step), checkpoints/ (the last N train states),
best/ (the best one by validation NIE), eval/ (report.json, report.md, plots) and, while
a process works in it, `lock` (its pid). This module reads those files back, refusing
damaged ones with a message that names the file and what to do, and holds the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time

from absl import logging
from flax import traverse_util
from ml_collections import config_dict

LOCK = "lock"
# Fields a restarted run may change: they decide how long it runs, how often it logs,
# validates and checkpoints, and how it is evaluated, not what it learns.
RESUMABLE = ("train.steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
             "train.keep_checkpoints", "train.tensorboard", "eval")


# --------------------------------------------------------------------------- files


def write_atomically(path: str, text: str) -> None:
  """Writes `path` through a temporary file and a rename: a kill leaves the old file or
  the new one, never half of it."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def read_json(path: str, what_to_do: str):
  """The JSON held in `path` (None when there is no such file); a file that does not
  parse is a ValueError naming it and `what_to_do`."""
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is damaged (not valid JSON: {e}); {what_to_do}") from None


def _fill(saved: dict, defaults: dict) -> dict:
  """`saved` with the fields it lacks taken from `defaults` (recursively)."""
  out = dict(saved)
  for key, value in defaults.items():
    if key not in out:
      out[key] = value
    elif isinstance(value, dict) and isinstance(out[key], dict):
      out[key] = _fill(out[key], value)
  return out


def config_path(workdir: str) -> str:
  return os.path.join(workdir, "config.json")


# Fields renamed since runs were written: {old dotted name: new dotted name}.
RENAMED = {"eval.window": "eval.chunk"}


def upgrade(saved: dict | None) -> dict | None:
  """A saved config with its renamed fields under their current names."""
  if saved is None:
    return None
  flat = traverse_util.flatten_dict(saved, keep_empty_nodes=True, sep=".")
  if not set(RENAMED) & set(flat):
    return saved
  for old, new in RENAMED.items():
    if old in flat:
      flat.setdefault(new, flat.pop(old))
  return traverse_util.unflatten_dict(flat, sep=".")


def read_saved_config(workdir: str) -> dict | None:
  """config.json as a dict (renamed fields under their current names); None when there
  is none; ValueError when it is damaged."""
  path = config_path(workdir)
  saved = read_json(path, "rerun python -m launch.train with the run's command (its "
                    "command.txt) on this workdir to rewrite it from the checkpoint.")
  if saved is not None and not isinstance(saved, dict):
    raise ValueError(f"{path} is damaged (not a JSON object); rerun python -m "
                     "launch.train with the run's command (its command.txt) on this "
                     "workdir to rewrite it from the checkpoint.")
  return upgrade(saved)


# Fields whose default changed after they were added: a run that predates the field
# ran with the value here (the behaviour before the field existed), not today's default.
BEFORE_FIELD = {"imitator": {"gradient": {"tracker": "affine", "adapt_settle_after": 0},
                             "in_context": {"seen_flag": False}},
                "baselines": {"tracker": "affine"},
                "train": {"free_running": {"fraction": 0.0}}}


def load_config(workdir: str, defaults: config_dict.ConfigDict | None = None):
  """The run's config.json as a ConfigDict; fields added to the code since the run was
  trained are filled in from BEFORE_FIELD, else from `defaults` (their values then)."""
  saved = read_saved_config(workdir)
  if saved is None:
    raise FileNotFoundError(f"{workdir!r} is not a run directory: no config.json (train "
                            "into it with python -m launch.train --workdir=...)")
  if defaults is not None:
    saved = _fill(_fill(saved, BEFORE_FIELD), json.loads(defaults.to_json_best_effort()))
  return config_dict.ConfigDict(saved)


# --------------------------------------------------------------------------- config


def resumable(field: str) -> bool:
  return any(field == r or field.startswith(r + ".") for r in RESUMABLE)


def config_changes(saved: dict, current: dict) -> list[str]:
  """'field: run X, now Y' for every field both configs have whose value differs and
  that a restart may not change (fields only one of them has were added to or removed
  from the code since the run started)."""
  a, b = (traverse_util.flatten_dict(c or {}, sep=".") for c in (saved, current))
  return [f"{k}: run {a[k]!r}, now {b[k]!r}" for k in sorted(set(a) & set(b))
          if a[k] != b[k] and not resumable(k)]


# --------------------------------------------------------------------------- metrics


def metrics_path(workdir: str) -> str:
  return os.path.join(workdir, "metrics.jsonl")


def read_metrics(path: str) -> list[dict]:
  """The records of a metrics.jsonl. A last line cut short (a kill while appending) is
  left out with a warning; any other line that is not a record is a ValueError naming
  the file and the line."""
  if not os.path.exists(path):
    return []
  with open(path, errors="replace") as f:
    lines = f.read().split("\n")
  while lines and not lines[-1].strip():
    lines.pop()
  records = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        raise ValueError("no integer 'step'")
    except ValueError as e:
      if i == len(lines) - 1:
        logging.warning("%s: dropped its last line, cut short (%s): %r", path, e,
                        line[:60])
        break
      raise ValueError(f"{path} line {i + 1} is not a metrics record ({e}); delete or "
                       "repair that line, then run again.") from None
    records.append(record)
  return records


def rewrite_metrics(path: str, last_step: int, records: list[dict] | None = None
                    ) -> list[dict]:
  """Makes metrics.jsonl agree with a run restored at `last_step`: records logged after
  it are dropped (the resumed run logs them again), a step logged twice keeps its last
  record, records are in step order. Rewritten (atomically) only when that changes it.
  `records`: the file's records when already read."""
  if not os.path.exists(path):
    return []
  if records is None:
    records = read_metrics(path)
  by_step = {}
  for r in records:
    if r["step"] <= last_step:
      by_step[r["step"]] = r
  kept = [by_step[s] for s in sorted(by_step)]
  duplicates = sum(r["step"] <= last_step for r in records) - len(kept)
  if duplicates:
    logging.warning("%s: dropped %d duplicated record(s) (steps logged twice)", path,
                    duplicates)
  text = "".join(json.dumps(r) + "\n" for r in kept)
  with open(path, errors="replace") as f:
    if f.read() != text:
      write_atomically(path, text)
  return kept


def metrics_at(workdir: str, step: int) -> dict | None:
  """The metrics.jsonl record logged at `step`, if any."""
  for record in read_metrics(metrics_path(workdir)):
    if record["step"] == step:
      return record
  return None


# --------------------------------------------------------------------------- report


def report_path(workdir: str) -> str:
  return os.path.join(workdir, "eval", "report.json")


def read_report(workdir: str) -> dict | None:
  """eval/report.json, checked to be something rows can be merged into; None when there
  is none; ValueError naming the file and what to do when it is damaged."""
  path = report_path(workdir)
  todo = ("move it aside and run again (python -m launch.train on this workdir writes its "
          "training rows again, python -m launch.evaluate the others).")
  report = read_json(path, todo)
  if report is None:
    return None
  ok = (isinstance(report, dict) and isinstance(report.get("results"), list)
        and isinstance(report.get("comparisons", []), list)
        and isinstance(report.get("skipped", []), list)
        and all(isinstance(r, dict) and "imitator" in r and "shift" in r and "horizon" in r
                for r in report["results"])
        and all(isinstance(r, dict) for r in report.get("comparisons", []))
        and all(isinstance(s, dict) and "shift" in s for s in report.get("skipped", [])))
  if not ok:
    raise ValueError(f"{path} is damaged (not a report: rows without imitator, shift or "
                     f"horizon); {todo}")
  return report


def training_rows(report: dict | None, t_train: int) -> list[dict]:
  """The rows of the end-of-training evaluation: shift none, no strength, horizon
  t_train (launch.evaluate may have replaced them by richer rows of the same key)."""
  return [r for r in (report or {}).get("results", [])
          if r.get("shift") == "none" and r.get("strength") is None
          and r.get("horizon") == t_train]


def _number(value) -> str:
  return "n/a" if value is None else f"{value:.4f}"


def summary_lines(rows: list[dict]) -> list[str]:
  """One line per row: NIE [95% CI], teachers, horizon ('n/a' for a value that was not
  finite, e.g. an imitation that blew up)."""
  lines = []
  for r in rows:
    lo, hi = (list(r.get("nie_ci") or []) + [None, None])[:2]
    lines.append(f"{r['imitator']:>28s}  NIE {_number(r.get('nie'))}  [{_number(lo)}, "
                 f"{_number(hi)}]  ({r.get('n_teachers')} held-out teachers, horizon "
                 f"{r.get('horizon')})")
  return lines


def keep_unmerged(workdir: str, rows: list, skipped, comparisons, error: Exception) -> str:
  """Writes rows that could not be merged into report.json beside it (or, if the eval
  directory cannot be written, to the temporary directory); returns the path."""
  payload = {"error": f"{type(error).__name__}: {error}", "results": rows,
             "skipped": skipped or [], "comparisons": comparisons or []}
  name = f"report.unmerged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
  for directory in (os.path.join(workdir, "eval"), os.environ.get("TMPDIR", "/tmp")):
    path = os.path.join(directory, name)
    try:
      os.makedirs(directory, exist_ok=True)
      with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=repr)
      return os.path.abspath(path)
    except OSError:
      continue
  raise error


# --------------------------------------------------------------------------- lock


def _holder(fd) -> dict:
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    return json.loads(os.read(fd, 4096).decode() or "{}")
  except (OSError, ValueError):
    return {}


@contextlib.contextmanager
def lock(workdir: str, what: str = "python"):
  """Holds workdir/lock (an flock on a file naming this process) while the block runs.
  Another live holder is a ValueError naming the workdir and its pid; the kernel drops
  the lock of a process that dies, so a lock file left by a dead process is taken over
  (with a warning). Released, and the file removed, on leaving the block."""
  path = os.path.join(workdir, LOCK)
  while True:
    try:
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise ValueError(f"cannot write in workdir {os.path.abspath(workdir)} ({e.strerror}: "
                       f"{path}); give a --workdir this user can write to.") from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = _holder(fd)
      os.close(fd)
      if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        # A filesystem without flock: nothing can be locked there.
        logging.warning("%s: cannot lock (%s); running without a workdir lock", path,
                        e.strerror)
        yield None
        return
      pid = holder.get("pid", "unknown")
      raise ValueError(
          f"workdir {os.path.abspath(workdir)} is in use by another process (pid {pid}"
          f"{', ' + holder['what'] if holder.get('what') else ''}"
          f"{', host ' + holder['host'] if holder.get('host') else ''}); wait for it to "
          f"finish or stop it (kill {pid}), then run this again.") from None
    try:  # a holder releasing the lock removes the file: lock the one at `path`
      same = os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)
  try:
    stale = _holder(fd)
    if stale.get("pid") is not None:
      logging.warning("%s: took over a stale lock of pid %s (%s), which is no longer "
                      "running", path, stale.get("pid"), stale.get("what", "?"))
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps({"pid": os.getpid(), "what": what,
                             "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
    yield path
  finally:
    try:
      if os.path.samestat(os.fstat(fd), os.stat(path)):
        os.unlink(path)
    except OSError:
      pass
    os.close(fd)
