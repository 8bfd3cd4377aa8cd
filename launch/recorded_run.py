"""What `launch.evaluate --teachers=FILE` and `launch.outside` share (no flags of its own,
so both entry points can import it): the workdir locked while evaluating, and a
checkpoint's imitators evaluated on a recorded-teachers file into report.json."""

import os

from imitator.evaluation import evaluate, report_json
from imitator.evaluation import recorded as recorded_eval
from imitator.runtime import signals
from imitator.runtime import workdir as workdir_lib
from launch import cli


def locked(workdir: str, command: str, evaluate_fn) -> None:
  """Runs `evaluate_fn` (which returns the text to print) with the workdir locked;
  SIGTERM/SIGINT end the process with one line saying what was kept."""
  summary = None
  try:
    with signals.interruptible():
      with workdir_lib.lock(workdir, command):
        summary = evaluate_fn()
  except BaseException as e:  # pylint: disable=broad-except
    e = signals.as_interrupted(e)  # anything else goes on up
    report = workdir_lib.report_path(os.path.abspath(workdir))
    if summary is not None:
      kept = f"the evaluation is complete, its rows merged into {report}"
    elif e.phase == "plots" or e.completed:
      kept = (f"the rows are merged into {report}, some plots may be missing; run the "
              "same command again to redo them")
    else:
      kept = (f"nothing written ({report} is as it was, checkpoints are only read); run "
              "the same command again")
    cli.exit_interrupted(f"interrupted ({e.name}) while evaluating: {kept}", e.exit_code)
  print(summary, flush=True)


def require_checkpoint(workdir: str) -> None:
  """ValueError when the workdir has no checkpoint to evaluate."""
  if not any(os.path.isdir(os.path.join(workdir, d)) for d in ("best", "checkpoints")):
    raise ValueError(f"--workdir={workdir}: no checkpoint to evaluate (no best/ or "
                     "checkpoints/); train into it first with python -m launch.train.")


def check_observes(observes, steps: int, t_train: int, multiples) -> tuple:
  """`observes` (steps) when each is shorter than the longest horizon evaluated on a file
  of `steps` steps; ValueError naming --observe otherwise."""
  horizon = recorded_eval.horizons(steps, t_train, multiples)[-1]
  for k in observes:
    if k >= horizon:
      raise ValueError(f"--observe={k}: the recorded teachers' longest horizon evaluated "
                       f"is {horizon} steps (file T = {steps}); allowed: K < {horizon}.")
  return tuple(observes)


def evaluate_file(workdir: str, exp, rec, multiples, observes) -> tuple:
  """Every imitator of the workdir's best checkpoint (and `untrained`) on the recorded
  teachers `rec` (`recorded_eval.evaluate_recorded`), rows merged into report.json:
  (what evaluate_recorded returned, the text to print). A damaged report.json is
  refused before anything is computed. Call it with the workdir locked."""
  t = exp.setting.t
  workdir_lib.read_report(workdir)  # damaged: refused before computing
  meta = evaluate.restore_meta(exp, workdir)
  ran = recorded_eval.evaluate_recorded(exp, meta, rec, multiples, observes)
  report_json.write_report(workdir, t, ran["results"], [], ran["comparisons"])
  text = (f"recorded teachers {rec.path} ({rec.shape[0]} teachers, {ran['excluded']} "
          f"excluded as blown up), shift {ran['shift']}:\n"
          f"{recorded_eval.table(ran['results'], t)}\nwrote "
          f"{workdir_lib.report_path(os.path.abspath(workdir))}")
  return ran, text
