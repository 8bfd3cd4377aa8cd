"""Reference learners beside the imitators: what a teacher's own hyperparams (and
weights) give without any imitation.

`known_hparams`: the family's learner with the teacher's hyperparams, weights from an
independent key with the readout zeroed, its own draws (an upper reference for
identifying the member). `twin`: the teacher's hyperparams and initial weights, its own
random draws for replay, reservoir and shrink-and-perturb (how far the teacher's own
randomness alone moves its behaviour). Each predicts before it updates, on the labels
only. References may read a teacher's hyperparams and init key; imitators never do.
"""

from __future__ import annotations

import functools

import jax

from learners import learner, networks

KNOWN_HPARAMS, TWIN = "known_hparams", "twin"
NAMES = (KNOWN_HPARAMS, TWIN)  # the reference learners run here
# Every row of a report beside the trained imitator: the baselines trained with it, the
# references (the trained kind at its initial meta-params, and the learners above), and
# the teacher itself.
BASELINES = ("frozen", "context_only")
UNTRAINED = "untrained"
REFERENCES = (UNTRAINED, KNOWN_HPARAMS, TWIN)
ORACLE = "oracle"


def initial_states(family, hparams, init_key) -> dict:
  """{name: LearnerState} of one teacher's references, given its hparams {field: []}
  and init key."""
  key = jax.random.fold_in(init_key, 1)  # never the teacher's own key split
  params = {kind: networks.zero_readout(p)
            for kind, p in learner.init(family, hparams, key).params.items()}
  twin = learner.init(family, hparams, init_key)
  # `params` also sets the anchor, for families that have one.
  return {KNOWN_HPARAMS: learner.init(family, hparams, key, params=params),
          TWIN: twin._replace(key=jax.random.fold_in(twin.key, 1))}


@functools.partial(jax.jit, static_argnums=0)
def behaviours(family, hparams, init_keys, x, y) -> dict:
  """{name: behaviour [P, T, B, out]} on teachers' streams x, y [P, T, B, ...], given
  their hparams {field: [P]} and init keys [P]."""

  def run(hp, key, xs, ys):
    def follow(state):
      step = lambda s, xy: learner.step(family, hp, s, *xy)
      return jax.lax.scan(step, state, (xs, ys))[1][0]
    return {name: follow(s) for name, s in initial_states(family, hp, key).items()}

  return jax.vmap(run)(hparams, init_keys, x, y)
