"""Imitators of continual learners, and everything that trains and evaluates them.

Subpackages, bottom to top; each imports only from those above it in this list (and
from `learners`), never from `launch` (tests/test_imports.py checks it):

- `metrics` (a module): every metric of DESIGN §6, defined once.
- `kinds`: the imitator protocol and the three kinds (gradient, in_context, system_id),
  the bounded tracking steps they share, and `registry` (kinds built from config).
- `rollout`: teachers and streams drawn inside jit (episodes), imitators unrolled beside
  them (objective: the imitation loss and evaluation's chunked unroll; co_rollout: the
  constant-memory streaming form), and the reference learners.
- `runtime`: what a run on a machine needs: the workdir's files, orbax checkpoints,
  signals, devices and hosts.
- `evaluation`: the battery of horizons and shifts, report rows and paired comparisons,
  the forgetting experiment, report.json, report.md and plots.
- `training`: the config schema, the experiment a config builds, the jitted outer step
  and the outer loop `train_and_evaluate`.
- `decay`: the decay experiment (its tasks, cells, fits, sweep and report).
- `acting`: imitators of acting teachers (choices on bandits): the recurrent imitator,
  closed-loop evaluation beside the shadow teacher, the per-subject maximum-likelihood
  reference, recorded choices, fine-tuning on reward or an overseer's learner and its
  frontier, and their own `train_and_evaluate`.
"""
