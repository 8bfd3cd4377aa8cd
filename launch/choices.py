"""Imitates recorded trial-by-trial choices of real agents with an acting run's imitator:

    python -m launch.choices --workdir=runs/bandits --choices=FILE.tsv --one_based

FILE: one row per trial with columns subject, trial, choice, outcome (tab- or
comma-separated, header row; `--columns=choice=response,outcome=reward` maps other
header names). Each subject's first `--observed` fraction of trials is watched, the rest
scored: per-subject normalized likelihood of the trained imitator, the untrained one and
the per-subject maximum-likelihood fit of the value learner, with CIs over subjects.
Written to WORKDIR/eval/choices-<file stem>.json and printed.
"""

import json
import os

from absl import flags

from imitator.acting import recorded, train
from imitator.runtime import workdir as workdir_lib
from launch import cli
from learners import recorded_choices

_WORKDIR = flags.DEFINE_string("workdir", None, "A run of launch/configs/bandits.py.")
_CHOICES = flags.DEFINE_string("choices", None, "The recorded choices file.")
_ONE_BASED = flags.DEFINE_boolean("one_based", None, "Whether the file's choices count "
                                  "arms from 1 (--one_based) or 0 (--noone_based).")
_OBSERVED = flags.DEFINE_float("observed", 0.5, "Fraction of each subject's trials "
                               "watched; the rest are scored.")
_COLUMNS = flags.DEFINE_list("columns", [], "ours=theirs header names, e.g. "
                             "choice=response,outcome=reward.")
flags.mark_flags_as_required(["workdir", "choices", "one_based"])


def _columns(items) -> dict:
  out = {}
  for item in items:
    ours, sep, theirs = item.partition("=")
    if not sep or ours not in recorded_choices.FIELDS or not theirs:
      raise ValueError(f"--columns item {item!r}: write ours=theirs with ours in "
                       f"{list(recorded_choices.FIELDS)}.")
    out[ours] = theirs
  return out


def main(argv):
  del argv
  # The file first: its errors come before any checkpoint is read.
  choices = recorded_choices.read(_CHOICES.value, one_based=_ONE_BASED.value,
                                  columns=_columns(_COLUMNS.value) or None)
  config, meta, untrained = train.load(_WORKDIR.value)
  im = train.imitator(config)
  result = recorded.evaluate(im, {"imitator": meta, "untrained": untrained}, choices,
                             _OBSERVED.value, mle_steps=config.eval.mle_steps,
                             mle_restarts=config.eval.mle_restarts)
  result["file"] = os.path.abspath(_CHOICES.value)
  stem = os.path.splitext(os.path.basename(_CHOICES.value))[0]
  path = os.path.join(_WORKDIR.value, "eval", f"choices-{stem}.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  workdir_lib.write_atomically(path, json.dumps(result, indent=1))
  print(f"{len(result['subjects'])} subjects, {result['scored_trials']} scored trials "
        f"(after the first {result['observed']:.0%} of each subject's):")
  for row in result["rows"]:
    lo, hi = row["normalized_likelihood_ci"]
    line = (f"  {row['agent']:>10}: normalized likelihood {row['normalized_likelihood']:.3f}"
            f" [{lo:.3f}, {hi:.3f}], NLL/choice {row['nll']:.3f}")
    if "minus_mle" in row:
      lo, hi = row["minus_mle_ci"]
      line += f"; minus the per-subject fit {row['minus_mle']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
    print(line)
  print(f"written: {path}")


if __name__ == "__main__":
  cli.run(main)
