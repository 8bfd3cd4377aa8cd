"""Acting teachers on drifting two-armed bandits: the recurrent imitator meta-trained on
the acting family (Q-learning, actor-critic, Thompson sampling, UCB, epsilon-greedy),
then evaluated teacher-forced and alone in closed loop up to 1024 x T_train:

    python -m launch.train --config=launch/configs/bandits.py --workdir=runs/bandits
    python -m launch.train --config=launch/configs/bandits.py:reversal --workdir=runs/rev
    python -m launch.train --config=launch/configs/bandits.py:contextual --workdir=runs/ctx
    python -m launch.train --config=launch/configs/bandits.py:smoke --workdir=/tmp/b

`reversal`: probabilistic reversal learning (0.8 / 0.2, the better arm moves every 50
trials). `contextual`: a context before each choice, hidden per-arm tasks that switch
every 100 trials, and teachers from the `small_mixed` networks (`acting.networks`: any
`learners.family` preset) learning arm values by Q-learning through their optimizers and
regularizers (`learners.acting_networks`). `smoke`: a few steps and short horizons.
Recorded choices of real agents: `python -m launch.choices --workdir=runs/bandits
--choices=FILE [--one_based]`.
"""

import ml_collections

from learners import acting
from launch.configs import default


def get_config(arg=None):
  words = default.parse_arg(arg, ("reversal", "contextual", "smoke"))
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.acting = ml_collections.ConfigDict(dict(
      arms=2, rules=list(acting.RULES), networks="small_mixed", t_train=100,
      bandit=ml_collections.ConfigDict(dict(
          kind="drifting", drift=0.05, reversal_every=50, high=0.8, low=0.2, features=8,
          tasks=2, switch_every=100, gain=3.0))))
  if "reversal" in words:
    config.acting.bandit.kind = "reversal"
  if "contextual" in words:
    config.acting.bandit.kind = "contextual"
  config.imitator = ml_collections.ConfigDict(dict(hidden=64))
  config.train = ml_collections.ConfigDict(dict(
      steps=1500, teachers=64, learning_rate=3e-3, clip=1.0, alone_fraction=0.5,
      # alone episodes of T_train trials on the drifting bandits (200 or 400 cost
      # teacher-forced fidelity for no alone fidelity); contextual ones need 200 (with
      # 100 their alone KL doubles at 16 x): BUILD_NOTES, "Teachers that act"
      alone_horizon=200 if "contextual" in words else 100,
      log_every=100, checkpoint_every=500,
      # set by launch.finetune: the run fine-tuned, the extra term and its weight
      finetune=ml_collections.ConfigDict(dict(source="", extra="none", weight=0.0))))
  config.eval = ml_collections.ConfigDict(dict(
      teachers=128, horizons=[1, 2, 16, 1024], mle_steps=300, mle_restarts=8))
  if "smoke" in words:
    config.acting.t_train = 20
    config.train.update(steps=4, teachers=8, alone_horizon=40, log_every=2,
                        checkpoint_every=2)
    config.eval.update(teachers=8, horizons=[1, 2, 4], mle_steps=20, mle_restarts=2)
  return config
