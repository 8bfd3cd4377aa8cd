"""The fidelity/capability frontier of a trained run: `python -m launch.frontier --workdir=W`.

    python -m launch.frontier --workdir=runs/default
    python -m launch.frontier --workdir=runs/default --lambdas=0.3,1,3 --ensemble=runs/seed1,runs/seed2,runs/seed3
    python -m launch.frontier --workdir=runs/bandits --ensemble=runs/bandits_seed1,runs/bandits_seed2

Fine-tunes W's imitator for each --extras x --lambdas (`launch.finetune`'s runs, into
W/finetune/<extra>_<lambda>; a run already complete is reused, an interrupted one
resumes), plus the lambda = 0 control (extra none), then evaluates W's imitator, every
fine-tuned one and the ensembles of W with the first K - 1 --ensemble workdirs (K = 2, 4,
...: voting by the mean) on the same held-out teachers at --multiple x T_train,
teacher-forced and alone after T_train: W/frontier/frontier.json, frontier.md (the
table) and frontier.png (`imitator.evaluation.frontier`). SIGTERM/SIGINT exit 143/130
naming what is kept: finished fine-tuning runs are complete workdirs.

On an acting run (`launch/configs/bandits.py`) the fine-tuning is `imitator.acting.
finetune`'s and the figures `imitator.acting.frontier`'s: KL for fidelity, expected
regret over the teacher's for capability, voting by the mean of the members' policies.
"""

from imitator.runtime import signals

if __name__ == "__main__":
  signals.install()  # before the heavy imports: from here on no signal is lost

import hashlib  # pylint: disable=wrong-import-position
import os
import shlex
import sys
import time

from absl import flags, logging

from imitator.acting import agents as agents_lib
from imitator.acting import finetune as acting_finetune
from imitator.acting import frontier as acting_frontier
from imitator.acting import train as acting_train
from imitator.evaluation import evaluate
from imitator.evaluation import frontier as frontier_lib
from imitator.kinds import ensemble
from imitator.runtime import workdir as workdir_lib
from imitator.training import experiment, finetune, train
from launch import cli
from launch.configs import default

_WORKDIR = flags.DEFINE_string("workdir", None, "The trained run.", required=True)
_EXTRAS = flags.DEFINE_list("extras", ["outcome", "process"], "Fine-tuning objectives.")
_LAMBDAS = flags.DEFINE_list("lambdas", ["0.3", "1", "3", "10"],
                             "Weights of the extra term (a log grid).")
_STEPS = flags.DEFINE_integer("steps", 100, "Outer steps of each fine-tuning run.")
_LEARNING_RATE = flags.DEFINE_float(
    "learning_rate", None, "Peak meta step size (default 1e-2; 1e-3 on acting runs).")
_ENSEMBLE = flags.DEFINE_list("ensemble", [], "Workdirs of the same config, other seeds: "
                              "voting points K = 2, 4, ... (W first).")
_MULTIPLE = flags.DEFINE_integer("multiple", 16, "Horizon of the figures, x T_train.")


def _lambdas(values) -> list[float]:
  try:
    out = [float(v) for v in values]
  except ValueError:
    out = []
  if not out or any(v <= 0 for v in out):
    raise ValueError(f"--lambdas={','.join(values)}: allowed are numbers > 0 (lambda = 0 "
                     "is always run, as extra none).")
  return sorted(set(out))


def _command(source, extra, weight, lr) -> str:
  return (f"python -m launch.finetune --workdir={source} --extra={extra} "
          f"--lambda={weight:g} --steps={_STEPS.value} --learning_rate={lr:g}")


def _finish(result, source, started, extras) -> None:
  """Writes W/frontier and prints the table."""
  result.update(source=os.path.abspath(source), multiple=_MULTIPLE.value,
                steps=_STEPS.value, seconds=round(time.time() - started), **extras,
                command=" ".join(["python -m launch.frontier"]
                                 + [shlex.quote(a) for a in sys.argv[1:]]))
  out_dir = os.path.join(source, "frontier")
  frontier_lib.write(result, out_dir)
  for line in frontier_lib.table(result):
    print(line, flush=True)
  print(f"frontier: {os.path.abspath(out_dir)} ({result['seconds']} s)", flush=True)


def _source_digest(source: str) -> str:
  """What identifies W's training as it is now: its config.json and metrics.jsonl."""
  h = hashlib.sha256()
  for name in ("config.json", "metrics.jsonl"):
    path = os.path.join(source, name)
    if os.path.exists(path):
      with open(path, "rb") as f:
        h.update(f.read())
  return h.hexdigest()[:16]


def _from_this_source(source: str, out: str, digest: str) -> None:
  """Refuses a fine-tuning run made from an earlier training of W (retrained or trained
  further since); marks a new or unmarked one as made from W as it is."""
  path = os.path.join(out, "source_digest.txt")
  if os.path.exists(path):
    with open(path) as f:
      if f.read().strip() != digest:
        raise ValueError(f"{out} was fine-tuned from an earlier training of {source} (its "
                         "config.json or metrics.jsonl changed since): remove "
                         f"{os.path.join(source, 'finetune')} to start over.")
    return
  os.makedirs(out, exist_ok=True)
  workdir_lib.write_atomically(path, digest + "\n")


def _finetuned(source, runs, digest, started, lr, make_config, train_fn):
  """Runs (or reuses) the fine-tuning of W for each (extra, weight): ({name: workdir},
  their frontier points, how many were complete already); exits or raises when one did
  not finish. `make_config(extra, weight)` -> its config; `train_fn` trains a config."""
  outs, points, reused = {}, [], 0
  for extra, weight in runs:
    config = make_config(extra, weight)
    out = finetune.out_dir(source, extra, weight)
    _from_this_source(source, out, digest)
    with signals.interruptible():
      result = train_fn(config, out, command=_command(source, extra, weight, lr))
    if result["status"] == "preempted":
      cli.exit_interrupted(f"interrupted: {result['message']}", 143)
    if result["status"] not in ("finished", "complete"):
      raise ValueError(f"fine-tuning {out} ended {result['status']}: {result['message']}")
    reused += result["status"] == "complete"
    logging.info("%s: %s (%.0f s so far)", out, result["status"], time.time() - started)
    name = f"{extra}/{weight:g}"
    outs[name] = out
    points.append({"name": name, "method": "imitation" if extra == "none" else extra,
                   "lambda": weight})
  return outs, points, reused


def _acting(source, runs, started, digest) -> None:
  """The frontier of an acting run: fine-tuning runs, then `acting.frontier` figures of
  W's imitator, the fine-tuned ones and voting ensembles of W with --ensemble runs."""
  base = acting_train.load_config(source)
  lr = _LEARNING_RATE.value or acting_finetune.LEARNING_RATE
  outs, points, reused = _finetuned(
      source, runs, digest, started, lr,
      lambda e, w: acting_finetune.run_config(base, source, e, w, _STEPS.value, lr),
      acting_train.train_and_evaluate)
  im = acting_train.imitator(base)
  candidates = {name: (im, acting_train.load(out)[1]) for name, out in outs.items()}
  members = [acting_train.load(source)[1]]
  for w in [w.strip() for w in _ENSEMBLE.value if w.strip()]:
    config, meta, _ = acting_train.load(w)
    if config.acting.to_dict() != base.acting.to_dict() or (
        config.imitator.to_dict() != base.imitator.to_dict()):
      raise ValueError(f"--ensemble={w}: a run of another acting config than "
                       f"{source}; give runs of the same config (other seeds).")
    members.append(meta)
  candidates = {frontier_lib.SOURCE: (im, members[0]), **candidates}
  k = 2
  while k <= len(members):
    candidates[f"voting/{k}"] = (agents_lib.Voting(im), tuple(members[:k]))
    points.append({"name": f"voting/{k}", "method": "voting", "k": k})
    k *= 2
  points.insert(0, {"name": frontier_lib.SOURCE, "method": "imitation", "lambda": None})
  with signals.interruptible():
    figs = acting_frontier.per_teacher(base, candidates, _MULTIPLE.value)
  result = frontier_lib.frontier(figs, points)
  result.update(acting_frontier.LABELS)
  _finish(result, source, started, dict(
      observe=base.acting.t_train, t_train=base.acting.t_train, learning_rate=lr,
      ensemble=[w.strip() for w in _ENSEMBLE.value if w.strip()], reused=reused,
      runs=len(runs)))


def main(argv):
  del argv
  source = _WORKDIR.value
  extras = list(_EXTRAS.value)
  bad = sorted(set(extras) - {"outcome", "process"})
  if bad or not extras:
    raise ValueError(f"--extras={','.join(extras)}: allowed are outcome and process.")
  runs = [("none", 0.0)] + [(e, w) for e in extras for w in _lambdas(_LAMBDAS.value)]
  started = time.time()
  digest = _source_digest(source)
  if "acting" in (workdir_lib.read_saved_config(source) or {}):
    return _acting(source, runs, started, digest)
  lr = _LEARNING_RATE.value or finetune.LEARNING_RATE
  metas, points, reused = _finetuned(
      source, runs, digest, started, lr,
      lambda e, w: finetune.run_config(source, default.get_config(), e, w, _STEPS.value,
                                       lr),
      train.train_and_evaluate)
  exp = experiment.Experiment(finetune.run_config(source, default.get_config(), "none",
                                                  0.0, 1, 1e-3))
  meta = evaluate.restore_meta(exp, source)
  im = exp.imitators["imitator"]
  candidates = {frontier_lib.SOURCE: (im, meta["imitator"])}
  for name, out in metas.items():
    candidates[name] = (im, evaluate.restore_meta(exp, out)["imitator"])
  ensembles = evaluate.check_ensemble(
      workdir_lib.load_config(source, default.get_config()),
      [w.strip() for w in _ENSEMBLE.value if w.strip()])
  members = [meta["imitator"]] + [evaluate.restore_meta(exp, w)["imitator"]
                                  for w in ensembles]
  k = 2
  while k <= len(members):
    candidates[f"voting/{k}"] = ensemble.EnsembleImitator.of(im, members[:k])
    points.append({"name": f"voting/{k}", "method": "voting", "k": k})
    k *= 2
  points.insert(0, {"name": frontier_lib.SOURCE, "method": "imitation", "lambda": None})
  with signals.interruptible():
    figs = frontier_lib.per_teacher(exp, candidates, _MULTIPLE.value, exp.setting.t)
  result = frontier_lib.frontier(figs, points)
  _finish(result, source, started, dict(
      observe=exp.setting.t, t_train=exp.setting.t, learning_rate=lr,
      ensemble=ensembles, reused=reused, runs=len(runs)))


def _run(argv):
  try:
    main(argv)
  except BaseException as e:  # pylint: disable=broad-except
    if not isinstance(e, KeyboardInterrupt):
      raise
    e = signals.as_interrupted(e)
    cli.exit_interrupted(f"interrupted ({e.name}): fine-tuning runs finished so far are "
                         f"complete workdirs under {_WORKDIR.value}/finetune (an "
                         "interrupted one resumes from its checkpoint); run the same "
                         "command again to go on", e.exit_code)


if __name__ == "__main__":
  cli.run(_run)
