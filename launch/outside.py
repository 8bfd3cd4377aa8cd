"""The outside battery (issue 25.4): scikit-learn learners, never meta-trained on, as
recorded teachers of a run's checkpoint.

    python -m launch.outside --workdir=runs/default
    python -m launch.outside --workdir=DIR --learners=sgd,pa --teachers_per_kind=16 \
        --horizon=16x --observe=1x

Records `--teachers_per_kind` learners of each `--learners` name (learners.outside:
random hyperparameters from --seed, each with a same-kind chance learner of other
random hyperparameters) on the run's held-out streams (those of its battery,
imitator.evaluation.recorded.held_out_streams) over --horizon steps (Kx: K x T_train),
predict before learning; writes them to workdir/eval/outside.npz (learners.recorded);
then evaluates every imitator of the best checkpoint, and `untrained`, on that file
exactly as `launch.evaluate --teachers=workdir/eval/outside.npz` does (rows with shift
`recorded:outside` merged into eval/report.json, teacher-forced and alone after each
--observe). Prints the table of `launch.evaluate --teachers`, a per-kind table (NIE
against the same-kind chance learner at the longest horizon, trained and untrained,
and the paired ratio trained / untrained with its paired bootstrap CI) and the
wall-clock time the recording took. Bad flags exit 2 with one line naming the flag;
the workdir is locked while recording and evaluating.
"""

from imitator.runtime import signals

if __name__ == "__main__":
  signals.install()  # before the heavy imports: from here on no signal is lost

import os  # pylint: disable=wrong-import-position
import time

from absl import flags

from imitator.evaluation import recorded as recorded_eval
from imitator.evaluation import render
from imitator.metrics import HORIZON_MULTIPLES
from imitator.runtime import workdir as workdir_lib
from imitator.training import experiment
from launch import cli, recorded_run
from launch.configs import default
from learners import outside, recorded

FILE = "outside.npz"  # in workdir/eval

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory with checkpoints.",
                               required=True)
_LEARNERS = flags.DEFINE_list(
    "learners", [], "Outside learners to record (default: all of the run's task): "
    + "; ".join(f"{task}: {','.join(names)}" for task, names in outside.LEARNERS.items()))
_PER_KIND = flags.DEFINE_integer("teachers_per_kind", 16,
                                 "Teachers of each learner (each on its own stream).")
_HORIZON = flags.DEFINE_string("horizon", f"{HORIZON_MULTIPLES[-1]}x",
                               "Steps recorded: K, or Kx (K x T_train); at least T_train.")
_OBSERVE = flags.DEFINE_multi_string(
    "observe", ["1x"], "K or Kx: also evaluate alone after the teacher's first K steps "
    "(Kx: K x T_train) (repeatable).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the learners' random hyperparameters.")
_WORKERS = flags.DEFINE_integer("workers", 1, "Processes recording the learners.")


def main(argv):
  del argv
  names = outside.check_names(_LEARNERS.value) if _LEARNERS.value else ()
  if _PER_KIND.value < 1:
    raise ValueError(f"--teachers_per_kind={_PER_KIND.value}: allowed: >= 1.")
  if _WORKERS.value < 1:
    raise ValueError(f"--workers={_WORKERS.value}: allowed: >= 1.")
  workdir = _WORKDIR.value
  config = workdir_lib.load_config(workdir, defaults=default.get_config())
  t = config.stream.horizon
  horizon = cli.parse_steps("horizon", _HORIZON.value, t)
  if horizon < t:
    raise ValueError(f"--horizon={_HORIZON.value}: {horizon} steps; allowed: at least "
                     f"T_train = {t} steps (1x).")
  observes = recorded_run.check_observes(cli.parse_observe(_OBSERVE.value, t), horizon, t,
                                         HORIZON_MULTIPLES)
  recorded_run.require_checkpoint(workdir)
  exp = experiment.Experiment(config)
  task, out_dim = exp.setting.task, exp.setting.family.out_dim
  names = outside.check_names(names or tuple(outside.LEARNERS[task]), task)
  if task == "regression" and out_dim > 1:
    single = [n for n in names if n != "mlp"]
    if single:
      raise ValueError(f"--learners: {single[0]!r} predicts one target; the run has "
                       f"{out_dim}; allowed: ['mlp'].")
  _locked(workdir, lambda: _run(workdir, config, exp, names, horizon, observes))


def _locked(workdir, run_fn):
  recorded_run.locked(workdir, "python -m launch.outside", run_fn)


def _run(workdir, config, exp, names, horizon, observes) -> str:
  """Records the battery into workdir/eval/outside.npz and evaluates the checkpoint on
  it; the text to print."""
  workdir_lib.read_report(workdir)  # damaged: refused before recording
  t, task, out_dim = exp.setting.t, exp.setting.task, exp.setting.family.out_dim
  n = _PER_KIND.value * len(names)
  x, y = recorded_eval.held_out_streams(config, n, horizon)
  start = time.perf_counter()
  try:
    rec = outside.record_battery(
        names, task, x, y, seed=_SEED.value,
        n_classes=out_dim if task == "classification" else 0,
        out_dim=out_dim if task == "regression" else 1, workers=_WORKERS.value)
  except ValueError as e:  # a learner blew up: its hyperparameter ranges do not fit
    raise ValueError(f"recording the outside battery (--seed={_SEED.value}): {e} An "
                     "outside learner blew up on this run's streams; narrow its ranges "
                     "in learners/outside.py or leave it out of --learners.") from None
  seconds = time.perf_counter() - start
  path = os.path.join(os.path.abspath(workdir), "eval", FILE)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  partial = path + ".partial"
  recorded.save(partial, rec)
  os.replace(partial, path)  # whole or not at all
  rec = recorded.load(path)  # what was written is what a user would pass
  ran, text = recorded_run.evaluate_file(workdir, exp, rec, HORIZON_MULTIPLES, observes)
  return (f"{text}\n\n{render.kind_table(ran['results'], t, recorded_eval.SAME_KIND)}\n\n"
          f"recorded {n} outside learners ({', '.join(names)}; {_PER_KIND.value} each) "
          f"and their {n} same-kind chance learners over {horizon} steps "
          f"({horizon / t:g} x T_train) in {seconds:.1f} s wall-clock "
          f"({_WORKERS.value} process{'es' if _WORKERS.value > 1 else ''}); wrote {path}")


if __name__ == "__main__":
  cli.run(main)
