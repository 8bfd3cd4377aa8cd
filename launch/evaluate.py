"""Evaluates a run's best checkpoint on the battery of shifts and horizons.

    python -m launch.evaluate --workdir=runs/default
    python -m launch.evaluate --workdir=DIR --shifts=none,covariate_scale --stream_npz=FILE
    python -m launch.evaluate --workdir=DIR --shifts=none --sweep=covariate_scale:0.5,2,8 --sweep=drift
    python -m launch.evaluate --workdir=DIR --shifts=none --noforgetting --horizons=1,4,16,64,256,1024
    python -m launch.evaluate --workdir=DIR --shifts=none --noforgetting --observe=1x --observe=4x
    python -m launch.evaluate --workdir=DIR --teachers=recorded.npz --observe=1x

Writes workdir/eval/report.json (rows merged into the training report), report.md and
the plots nie.png, forgetting.png and sweep_<shift>.png. Shifts: none and the names of
learners.shifts (optionally NAME:strength); --stream_npz adds the user's stream as shift
`npz`; each --sweep evaluates a shift at several strengths (its defaults when only the
name is given: imitator.evaluation.battery.DEFAULT_SWEEPS). --horizons lists the horizons of the
rows as multiples of T_train (default 1,2,4,8,16); beyond 16 x T_train teachers,
streams and imitators run together chunk by chunk (imitator.rollout.co_rollout), in memory that
does not grow with the horizon. Each --observe=K adds rows where the imitators see only
the teacher's first K steps (K steps, or Kx: K x T_train) and then run alone, in the
teacher's place, from the stream's inputs and labels (field `observe` of the rows;
teacher-forced rows have none), with the free-running horizon of each.

--teachers=FILE (a recorded-teachers file, learners.recorded; docs/recorded_teachers.md)
evaluates every imitator on the recorded teachers instead of the battery: rows with shift
`recorded:<file stem>` at the horizons within the file's T, teacher-forced and for each
--observe alone, with the NIE against the file's same-kind chance learner and against the
family's chance teacher on the same streams. A file the checkpoint cannot take exits 2
naming the field. --teachers=N (an integer) is the number of held-out teachers.

The workdir is locked while evaluating (exit 2 naming the holder's pid if a training or
another evaluation is using it). A damaged report.json is refused before anything is
computed; if merging the computed rows still fails they are written beside report.json
(eval/report.unmerged-*.json) and the message says where. SIGTERM/SIGINT exit 143/130
with one line on stderr saying what was kept (report.json is written whole or not at
all; checkpoints are only read).
"""

from imitator.runtime import signals

if __name__ == "__main__":
  signals.install()  # before the heavy imports: from here on no signal is lost

import os  # pylint: disable=wrong-import-position

from absl import flags, logging

from imitator import metrics
from imitator.evaluation import battery, evaluate
from imitator.evaluation import recorded as recorded_eval
from imitator.runtime import workdir as workdir_lib
from imitator.training import experiment
from launch import cli, recorded_run
from launch.configs import default
from learners import npz, recorded, shifts, streams

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory with checkpoints.",
                               required=True)
_SHIFTS = flags.DEFINE_list("shifts", list(battery.BATTERY),
                            "Shifts to evaluate (default: all).")
_STREAM_NPZ = flags.DEFINE_string("stream_npz", None, "Also evaluate on this stream file.")
_TEACHERS = flags.DEFINE_string(
    "teachers", None, "N: held-out teachers per shift (default: config.eval); or FILE: "
    "evaluate on the recorded teachers of FILE (learners.recorded) instead of the battery.")
_FORGETTING = flags.DEFINE_boolean("forgetting", True, "Run the forgetting experiment.")
_HORIZONS = flags.DEFINE_list(
    "horizons", [str(m) for m in metrics.HORIZON_MULTIPLES],
    "Horizons of the rows, as multiples of T_train (integers >= 1).")
_OBSERVE = flags.DEFINE_multi_string(
    "observe", [], "K or Kx: also evaluate alone after the teacher's first K steps (Kx: "
    "K x T_train) (repeatable).")
_ENSEMBLE = flags.DEFINE_list(
    "ensemble", [], "Workdirs of the same config with other seeds: adds rows ensemble/K "
    "(K = 2, 4, 8, ...) pooling --workdir's imitator and the first K - 1 of these.")
_SWEEP = flags.DEFINE_multi_string(
    "sweep", [], "SHIFT or SHIFT:s1,s2,...: evaluate at every strength (repeatable; "
    f"default strengths per shift: {', '.join(battery.DEFAULT_SWEEPS)}).")


def main(argv):
  del argv
  names = [s.strip() for s in _SHIFTS.value if s.strip()]
  for name in names:
    base = name.partition(":")[0]
    if base != "none" and base not in shifts.SHIFTS:
      raise ValueError(f"--shifts: unknown shift {base!r}; allowed: "
                       f"{list(battery.BATTERY)}.")
  sweeps = {}
  for text in _SWEEP.value:
    shift, strengths = battery.parse_sweep(text)
    sweeps[shift] = tuple(sorted(set(sweeps.get(shift, ())) | set(strengths)))
  multiples = parse_horizons(_HORIZONS.value)
  if _STREAM_NPZ.value:
    if not os.path.exists(_STREAM_NPZ.value):
      raise ValueError(f"--stream_npz={_STREAM_NPZ.value!r} does not exist.")
    names.append("npz")
  if not names and not sweeps:
    raise ValueError(f"--shifts={','.join(_SHIFTS.value)!r} names no shift; allowed: "
                     f"{list(battery.BATTERY)}.")
  config = workdir_lib.load_config(_WORKDIR.value, defaults=default.get_config())
  t = config.stream.horizon
  n_teachers, rec = parse_teachers(_TEACHERS.value)
  if rec is not None:
    given = [f"--{n}" for n in ("shifts", "sweep", "stream_npz", "forgetting")
             if flags.FLAGS[n].present]
    if given:
      raise ValueError(f"--teachers={_TEACHERS.value}: a recorded-teachers file replaces "
                       f"the battery; {', '.join(given)} cannot go with it.")
    return _recorded_main(config, rec, multiples)
  observes = battery.check_observes(cli.parse_observe(_OBSERVE.value, t), t, t * max(multiples))
  if _STREAM_NPZ.value:
    _check_stream_npz(config, _STREAM_NPZ.value)
  if not any(os.path.isdir(os.path.join(_WORKDIR.value, d)) for d in ("best", "checkpoints")):
    raise ValueError(f"--workdir={_WORKDIR.value}: no checkpoint to evaluate (no best/ or "
                     "checkpoints/); train into it first with python -m launch.train.")
  ensembles = evaluate.check_ensemble(config, [w.strip() for w in _ENSEMBLE.value if w.strip()])
  _locked(lambda: _evaluate(config, names, sweeps, multiples, observes, n_teachers,
                            ensembles))


def _locked(evaluate_fn) -> None:
  """Runs `evaluate_fn` (which returns the text to print) with the workdir locked;
  SIGTERM/SIGINT end the process with one line saying what was kept."""
  recorded_run.locked(_WORKDIR.value, "python -m launch.evaluate", evaluate_fn)


def _check_stream_npz(config, path):
  """--stream_npz must be a stream the run's imitators can take (its inputs, outputs and
  label type) and hold at least the training horizon: refused before anything runs."""
  spec = streams.StreamSpec.from_config(config.stream)
  task, x_shape, out_dim = streams.signature(spec, streams.load_data(spec))
  try:
    npz.check_fits(npz.load(path), task, x_shape, out_dim, spec.horizon * spec.batch)
  except ValueError as e:
    raise ValueError(f"--stream_npz: {e}") from None


def parse_horizons(values) -> tuple:
  """--horizons as sorted distinct multiples of T_train; ValueError naming the flag."""
  try:
    multiples = [int(v) for v in values if v.strip()]
  except ValueError:
    multiples = []
  if not multiples or min(multiples) < 1:
    raise ValueError(f"--horizons={','.join(values)!r}: allowed are integers >= 1 (multiples "
                     "of T_train), comma-separated, e.g. 1,4,16,64,256,1024.")
  return tuple(sorted(set(multiples)))


def parse_teachers(value):
  """--teachers as (number of held-out teachers or None, None) or (None, the validated
  recorded-teachers file); ValueError naming the flag."""
  if value is None or not value.strip():
    return None, None
  try:
    n = int(value)
  except ValueError:
    n = None
  if n is not None:
    if n < 1:
      raise ValueError(f"--teachers={value}: allowed are a number of teachers >= 1 or a "
                       "recorded-teachers file.")
    return n, None
  if not os.path.isfile(value):
    raise ValueError(f"--teachers={value!r}: neither a number of teachers nor an existing "
                     "recorded-teachers file (.npz, learners.recorded).")
  try:
    return None, recorded.load(value)
  except ValueError as e:
    raise ValueError(f"--teachers: {e}") from None


def _recorded_main(config, rec, multiples):
  """--teachers=FILE: the recorded teachers in place of the battery (checked against
  the run before anything is computed); prints the table."""
  recorded_run.require_checkpoint(_WORKDIR.value)
  t = config.stream.horizon
  exp = experiment.Experiment(config)
  try:
    recorded_eval.check(exp, rec)
  except ValueError as e:
    raise ValueError(f"--teachers: {e}") from None
  observes = recorded_run.check_observes(cli.parse_observe(_OBSERVE.value, t), rec.shape[1],
                                         t, multiples)
  _locked(lambda: recorded_run.evaluate_file(_WORKDIR.value, exp, rec, multiples,
                                             observes)[1])


def _evaluate(config, names, sweeps, multiples, observes, n_teachers=None,
              ensembles=()) -> str:
  """Evaluates into the workdir; the text to print (report.md, the files written)."""
  workdir_lib.read_report(_WORKDIR.value)  # a damaged report.json: refused before computing
  if n_teachers:
    config.eval.teachers = n_teachers
  if config.eval.teachers < 64:
    logging.warning("eval.teachers=%d: the battery is meant for at least 64 teachers",
                    config.eval.teachers)
  exp = experiment.Experiment(config)
  evaluate.evaluate(exp, _WORKDIR.value, names, _STREAM_NPZ.value,
                    with_forgetting=_FORGETTING.value,
                    sweeps=sweeps, multiples=multiples, observes=observes,
                    ensembles=ensembles)
  eval_dir = os.path.abspath(os.path.join(_WORKDIR.value, "eval"))
  with open(os.path.join(eval_dir, "report.md")) as f:
    text = f.read()
  plots = sorted(f for f in os.listdir(eval_dir) if f.endswith(".png"))
  return f"{text}\nwrote {eval_dir}/report.json, report.md, {', '.join(plots)}"


if __name__ == "__main__":
  cli.run(main)
