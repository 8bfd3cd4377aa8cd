"""SIGTERM and SIGINT, never lost: the handler records the first one in a flag, and
every phase of a run checks that flag, so a signal counts even when the exception it
raised died in foreign code (a coroutine orbax closes, a __del__, an asyncio callback).

    install()            # first thing an entry point does: from then on, record only
    with interruptible():  # raise `Interrupted` at once, and on leaving if one came
      ...; check("restore") ...
    with polled():       # the training loop: record only, polled with received()
    with uninterrupted():  # writing a file: held back until it is whole
    with deferred("restore"):  # reading: held back until done, then raised as usual

Only the standard library here: entry points import this before anything heavy.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_RESEND_AFTER_S = 0.05
# received: the first signal's number; deferring: depth of uninterrupted() blocks;
# raising: whether the handler raises (inside interruptible()) or only records;
# in_flight: an Interrupted was raised and not yet seen lost.
_STATE = {"received": None, "deferring": 0, "raising": False, "in_flight": False}


class Interrupted(KeyboardInterrupt):
  """SIGTERM or SIGINT received. A KeyboardInterrupt, so that neither `except
  Exception` nor asyncio swallows it. The process should exit with `exit_code` (128 +
  the signal number: 143 for SIGTERM, 130 for SIGINT). `phase` says what was running
  when the caller knows it; `completed` is set when the signal arrived inside an
  `uninterrupted()` block, which finished first."""

  def __init__(self, signum: int, phase: str | None = None):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum
    self.name = signal.Signals(signum).name
    self.exit_code = 128 + signum
    self.phase = phase
    self.completed = False


def _handle(signum, frame):
  del frame
  if _STATE["received"] is None:
    _STATE["received"] = signum
  # A second Ctrl-C while stopping must not break the clean-up.
  if _STATE["raising"] and not _STATE["deferring"] and not _STATE["in_flight"]:
    _STATE["in_flight"] = True
    raise Interrupted(_STATE["received"])


def install() -> None:
  """Records SIGTERM/SIGINT from now on (in the main thread), raising nothing: a signal
  while modules import or flags parse is acted on when `interruptible()` begins."""
  for sig in SIGNALS:
    signal.signal(sig, _handle)


def restore_default() -> None:
  """The default action (the process ends by the signal) for SIGTERM and SIGINT: what
  an entry point sets before its last look at the flag, so that a signal arriving
  after it, while the interpreter shuts down, is not recorded and lost."""
  for sig in SIGNALS:
    signal.signal(sig, signal.SIG_DFL)


def received() -> int | None:
  """The number of the first signal received, or None."""
  return _STATE["received"]


def reset() -> None:
  """Forgets a received signal (for tests that signal their own process)."""
  _STATE.update(received=None, in_flight=False)


def check(phase: str | None = None) -> None:
  """Raises `Interrupted` if a signal was received (outside `uninterrupted()`)."""
  signum = _STATE["received"]
  if signum is not None and not _STATE["deferring"]:
    _STATE["in_flight"] = True
    raise Interrupted(signum, phase)


def as_interrupted(error: BaseException) -> Interrupted:
  """`error` if it is an `Interrupted`; any other exception as the `Interrupted` of the
  signal received (foreign code may have turned it into its own error: an unreadable
  checkpoint, a closed event loop); re-raises `error` when no signal came."""
  if isinstance(error, Interrupted):
    return error
  if _STATE["received"] is None:
    raise error
  interrupted = Interrupted(_STATE["received"])
  interrupted.__cause__ = error
  return interrupted


def _unraisable(hook_args, previous):
  """An `Interrupted` raised where Python ignores exceptions is sent again shortly,
  from another thread, to be raised at a later instruction (from here its handler
  would run inside this hook and be ignored again). The flag keeps it in any case."""
  e = hook_args.exc_value
  if isinstance(e, Interrupted):
    _STATE["in_flight"] = False
    threading.Timer(_RESEND_AFTER_S, os.kill, (os.getpid(), e.signum)).start()
    return
  previous(hook_args)


@contextlib.contextmanager
def _handlers(raising: bool):
  old = {sig: signal.signal(sig, _handle) for sig in SIGNALS}
  was = _STATE["raising"]
  _STATE["raising"] = raising
  try:
    yield
  finally:
    _STATE["raising"] = was
    for sig, handler in old.items():
      signal.signal(sig, handler)


@contextlib.contextmanager
def interruptible():
  """While the block runs, SIGTERM and SIGINT raise `Interrupted` at the next Python
  instruction (a compilation or a device computation finishes first). A signal
  received before the block raises on entering it, one whose exception was lost
  raises on leaving it."""
  check()
  previous_hook = sys.unraisablehook
  sys.unraisablehook = lambda hook_args: _unraisable(hook_args, previous_hook)
  try:
    with _handlers(raising=True):
      yield
    check()
  finally:
    sys.unraisablehook = previous_hook


@contextlib.contextmanager
def polled():
  """While the block runs, SIGTERM and SIGINT are only recorded (`received()`): the
  training loop stops at a step boundary, with its checkpoint written."""
  with _handlers(raising=False):
    yield


@contextlib.contextmanager
def deferred(phase: str | None = None):
  """Holds `Interrupted` back while the block runs (a checkpoint read whose event loop
  and I/O threads a raise inside would tear apart mid-flight), then raises it for
  `phase` as `check` does."""
  _STATE["deferring"] += 1
  try:
    yield
  finally:
    _STATE["deferring"] -= 1
  check(phase)


@contextlib.contextmanager
def uninterrupted():
  """Holds `Interrupted` back until the block (writing a file) is done, then raises it
  with `completed` set; a signal received before the block raises before it starts."""
  check()
  _STATE["deferring"] += 1
  try:
    yield
  finally:
    _STATE["deferring"] -= 1
  if _STATE["received"] is not None and not _STATE["deferring"]:
    _STATE["in_flight"] = True
    e = Interrupted(_STATE["received"])
    e.completed = True
    raise e
