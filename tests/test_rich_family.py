"""The rich family: `system_id` set to a teacher's member and weights is that teacher,
for every optimizer and regularizer."""

import jax
import numpy as np
import pytest

from imitator.kinds.system_id import SystemIdImitator
from learners import family as family_lib
from learners import learner, optimizers, rollout, streams

HORIZON = 200
# Each regularizer switched on, inside its prior's support (system_id represents
# hyperparams within the family's support only: a value outside is clipped onto it).
ON = {"l2": {"l2_strength": 0.05, "anchor_rate": 0.005},
      "ewc": {"ewc_strength": 0.5, "ewc_decay": 0.95},
      "replay": {"replay_ratio": 0.5},
      # perturb = 0: the imitator replaces the teacher's noise draws, which it cannot
      # see, by their mean, so only the noise-free member is reproducible step for step.
      "shrink_perturb": {"shrink": 5e-4, "perturb": 0.0}}
# Every optimizer and every regularizer in four cases (one in the default run), and
# the other twelve pairs with --runslow.
DIAGONAL = tuple(zip(optimizers.OPTIMIZERS, family_lib.REGULARIZERS))
ALL_PAIRS = tuple((o, r) for o in optimizers.OPTIMIZERS for r in family_lib.REGULARIZERS
                  if (o, r) not in DIAGONAL)


def _check_system_id_is_the_teacher(optimizer, regularizer):
  fam = family_lib.from_config(
      {"name": "mixed", "networks": "mlp", "activations": "tanh", "optimizers": optimizer,
       "regularizers": regularizer, "max_inner_steps": 1, "width": 8},
      "regression", (5,), 1)
  fixed = fam.codes({"optimizer": optimizer, "weight_decay": 1e-4, **ON[regularizer]})
  hp = fam.member(fam.sample(jax.random.key(3), 1, fixed=fixed), 0)
  stream = streams.synthetic_stream(
      streams.StreamSpec(kind="linear_regression", horizon=HORIZON, dim=5, batch=2,
                         task_switch_every=50), jax.random.key(4))
  im = SystemIdImitator(task=fam.task, x_shape=fam.x_shape, out_dim=fam.out_dim,
                        family=fam, mode="refine", batch=2)
  assert im.particles == 1
  state_key = jax.random.key(9)
  # The one particle's learner runs on the key system_id hands it (one group, one
  # particle), so a replaying teacher on that key replays the same slots.
  particle_key = jax.random.split(jax.random.split(state_key, 1)[0], 1)[0]
  traj = jax.jit(rollout.rollout, static_argnums=0)(fam, hp, particle_key, stream)
  meta = im.meta_for_teacher(hp, learner.init(fam, hp, particle_key).params)
  _, a_hat = jax.jit(im.unroll)(meta, im.init(meta, state_key), stream.x, stream.y,
                                traj.behaviour)
  np.testing.assert_allclose(a_hat, traj.behaviour, atol=2e-5, rtol=2e-5)
  # The regularizer matters: the same teacher without it behaves differently.
  off = dict(hp, **{f: np.float32(0.0) for f in ON[regularizer]})
  plain = jax.jit(rollout.rollout, static_argnums=0)(fam, off, particle_key, stream)
  assert float(np.abs(plain.behaviour - traj.behaviour).max()) > 1e-3


@pytest.mark.parametrize("optimizer,regularizer", [
    p if p == ("adam", "replay") else pytest.param(*p, marks=pytest.mark.slow)
    for p in DIAGONAL])
def test_system_id_given_member_and_weights_is_the_teacher(optimizer, regularizer):
  _check_system_id_is_the_teacher(optimizer, regularizer)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer,regularizer", ALL_PAIRS)
def test_system_id_is_the_teacher_for_every_pair(optimizer, regularizer):
  _check_system_id_is_the_teacher(optimizer, regularizer)



@pytest.mark.slow
def test_small_meta_training_on_mixed_beats_context_only(tmp_path):
  """`launch/configs/mixed.py:smoke` (gradient imitator, Kalman tracking): on 64
  held-out teachers of the whole family its NIE at 16 x T_train is below its
  `context_only` baseline's, the paired bootstrap interval of the ratio below 1
  (measured 0.634 [0.542, 0.731])."""
  from imitator.evaluation import battery, evaluate
  from imitator.training import experiment, train
  from launch.configs import mixed
  config = mixed.get_config("smoke")
  workdir = str(tmp_path / "mixed")
  train.train_and_evaluate(config, workdir)
  exp = experiment.Experiment(config)
  battery = battery.run_battery(exp, evaluate.restore_meta(exp, workdir), ["none"],
                                 multiples=(16,))
  (ratio,) = [c for c in battery["comparisons"] if c["versus"] == "context_only"]
  assert ratio["n_teachers"] >= 64
  assert ratio["nie_ratio_ci"][1] < 1.0, ratio


def test_mixed_config_with_an_architecture_is_in_context_trained_as_in_context_py():
  from launch.configs import in_context, mixed
  got, ref = mixed.get_config("transformer"), in_context.get_config("transformer")
  assert (got.family.name, got.imitator.kind, got.imitator.in_context.arch) == (
      "mixed", "in_context", "transformer")
  for field in ("steps", "truncation", "free_running"):
    assert got.train[field] == ref.train[field], field
  assert got.imitator.in_context == ref.imitator.in_context
  assert mixed.get_config().imitator.kind == "gradient"
  with pytest.raises(ValueError, match="pick one architecture"):
    mixed.get_config("recurrent,transformer")
