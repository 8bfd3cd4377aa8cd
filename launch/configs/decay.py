"""The decay experiment (issue 13): how fast does an unpracticed behaviour decay?

    python -m launch.decay --config=launch/configs/decay.py --workdir=runs/decay
    python -m launch.decay --config=launch/configs/decay.py:smoke --workdir=/tmp/decay_smoke
    python -m launch.decay --config=launch/configs/decay.py:large --workdir=W      # accelerator
    python -m launch.decay --config=launch/configs/decay.py:imitator --workdir=W \\
        --imitator_workdir=runs/default     # the main job's imitator beside its teachers

Cells are widths x depths x regularizers x overlaps (depth >= 2 only on `deep_overlaps`
and `deep_widths`),
plus `sweep`: more strengths of one regularizer at depth 1 on `sweep_overlaps`. Each cell
is `teachers` tanh-MLP SGD learners trained on A and B alternating for `phase1` steps,
then on A alone for `phase2_multiple` x phase1 steps. `:imitator` matches the main job's
streams (regression, 8 inputs, batch 1) so the cells its `small_mixed` family covers
(width 32, depth 1, no regularizer or L2) can be imitated; every other cell is reported
as not covered.
"""

from ml_collections import config_dict

from launch.configs.default import parse_arg


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()
  c.seed = 0
  c.teachers = 64  # per cell, one vmap
  c.widths = "8,32,128,512"
  c.depths = "1,2"
  c.regularizers = "none,l2,ewc,replay,shrink_perturb"  # each at the family's default
  c.overlaps = "labeller,rotated:0,rotated:30,rotated:90,split:digits,backdoor"
  # Depth >= 2 cells run on these overlaps and widths only ("" = all of overlaps/widths):
  # a width-512 depth-2 cell alone takes minutes on 2 CPU cores (BUILD_NOTES).
  c.deep_overlaps = "labeller"
  c.deep_widths = "8,32,128"
  c.sweep = "l2:0.001,0.1,1"  # REGULARIZER:s1,s2,... extra strengths ("" = none)
  c.sweep_overlaps = "labeller"  # where the sweep runs (depth 1, every width)
  c.learning_rate = 0.3  # every teacher's SGD step; None: the family's prior
  c.data_dir = config_dict.placeholder(str)  # TFDS data_dir of split:DATASET
  c.stream = dict(task="classification", dim=8, n_classes=4, out_dim=1, batch=4,
                  phase1=64,  # N: steps of A and B alternating
                  phase2_multiple=16,  # phase 2 = this x N steps of A alone
                  probe_every=16, n_probes=32, noise=0.0)
  c.fit = dict(min_gain=0.1,  # gain at the end of phase 1, x untrained loss, to count
               max_retained=0.9,  # retained fraction at the end above which B never decays
               n_boot=200)
  words = parse_arg(arg, ("smoke", "large", "imitator"))
  if "smoke" in words:
    c.widths, c.depths = "8,16", "1"
    c.regularizers, c.sweep, c.sweep_overlaps = "none,l2", "l2:0.1", "labeller"
    c.overlaps = "labeller,backdoor"
    c.stream.update(phase1=16, probe_every=4, n_probes=16)
    c.fit.n_boot = 50
  if "large" in words:
    c.teachers = 256
    c.widths, c.depths = "8,32,128,512,2048", "1,2,3"
    c.overlaps = ("labeller,rotated:0,rotated:30,rotated:60,rotated:90,split:digits,"
                  "split:mnist1d,backdoor")
    c.deep_overlaps = c.deep_widths = ""
    c.sweep = "l2:0.0001,0.001,0.1,1,10"
    c.sweep_overlaps = c.overlaps
    c.stream.update(dim=16, phase1=128, probe_every=16, n_probes=128)
    c.fit.n_boot = 1000
  if "imitator" in words:
    c.stream.update(task="regression", dim=8, out_dim=1, batch=1, noise=0.1)
    c.overlaps = "labeller,rotated:0,rotated:30,rotated:90,backdoor"
  return c
