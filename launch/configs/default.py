"""The main job: meta-train a `gradient` imitator of online learners drawn from the
`small_mixed` family (linear or tanh-MLP networks, SGD or Adam, L2 pull to an anchor,
random initial weights, each teacher with its own hidden hyperparams) that keep learning
on a linear-regression stream whose task switches every 32 steps. The imitator tracks
the teacher's outputs with a Kalman filter over its weights and infers the teacher's
step size with hypergradient steps that settle (shrink as T_train / t) after T_train.
The last third of meta-training also scores episodes of 2 x T_train steps in which half
the teachers are seen for their first 16..64 steps only, the imitator running alone
after that (train.free_running).

    python -m launch.train                                  # this config, fresh runs/ dir
    python -m launch.train --config=launch/configs/default.py --workdir=runs/default
    python -m launch.train --config=launch/configs/default.py:smoke --workdir=/tmp/smoke

`:smoke` shrinks everything to seconds (tests). Every field can be overridden, e.g.
`--config.train.steps=2000 --config.family.name=sgd_linear`.
"""

from ml_collections import config_dict

from learners import config as learner_config


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  config = config_dict.ConfigDict()
  config.seed = 0

  # Where teachers come from: stream, family (a preset plus overrides), fixed fields.
  config.stream = learner_config.stream_config(
      kind="linear_regression", dim=8, horizon=64, batch=1, task_switch_every=32,
      noise=0.1)
  config.family = learner_config.family_config("small_mixed")
  config.teacher = learner_config.teacher_config()

  # The imitator: `kind` picks one block.
  config.imitator = config_dict.ConfigDict()
  config.imitator.kind = "gradient"
  config.imitator.gradient = dict(
      network=config_dict.placeholder(str),  # None: the family's network and sizes
      width=config_dict.placeholder(int), depth=config_dict.placeholder(int),
      activation=config_dict.placeholder(str),
      step_size="per_parameter", inner_steps=1, init_lr=0.05, init_track=0.5,
      adapt_steps=True, init_hyper_step=0.1,
      # steps after which the inferred step size settles (1/t); 0: never, None: the
      # training horizon (far better beyond 16 x T_train: BUILD_NOTES)
      adapt_settle_after=config_dict.placeholder(int),
      update_net=False, update_net_width=16,
      # "kalman": a carried weight covariance per output unit (identifies random
      # initial weights within T_train: BUILD_NOTES); "affine": a scalar track rate
      tracker="kalman")
  config.imitator.in_context = dict(
      arch="transformer", d_model=64, n_heads=4, n_layers=2, mlp_ratio=2,
      context=config_dict.placeholder(int),  # None: the training horizon
      d_key=32, d_value=16, hidden=64,
      seen_flag=True)  # tokens say whether a_t was the teacher's or the imitator's own
  config.imitator.system_id = dict(mode="both", encoder_hidden=32, max_particles=64,
                                   init_track=0.5, init_refine=0.05, init_temp=1.0,
                                   init_forget=0.01, refine_every=4,
                                   refine_settle_after=0, tracker="affine",
                                   init_process_noise=1e-2, split_groups=True,
                                   meta_grad="full")

  # Baselines trained beside the imitator on the same teachers.
  config.baselines = dict(
      network=config_dict.placeholder(str), width=config_dict.placeholder(int),
      depth=config_dict.placeholder(int), activation=config_dict.placeholder(str),
      freeze_after=16, init_track=0.5, tracker="kalman")

  config.train = dict(
      steps=600, teachers=16, learning_rate=1e-2, warmup_steps=20, grad_clip=1.0,
      truncation=0,  # window of truncated backpropagation in steps; 0 = whole horizon
      remat=False, curriculum="",  # e.g. "32@200,64@400": horizon 32 until step 200, ...
      log_every=100, eval_every=200, checkpoint_every=200, keep_checkpoints=3,
      # Non-finite guard: after `nonfinite_patience` skipped steps in a row, go back to
      # the last checkpoint with the meta step size x rollback_lr_factor; stop after
      # max_rollbacks such returns.
      nonfinite_patience=10, max_rollbacks=3, rollback_lr_factor=0.5,
      tensorboard=False,  # also write the logged metrics to workdir/tensorboard
      distributed=False,
      # Episodes scored alone (scheduled-sampling style): from `start_fraction` of the
      # steps on, a `fraction` of each step's teachers is shown for its first K steps
      # only, K uniform in [observe_min, observe_max], and the imitator is scored on
      # every step, seen or alone; those steps' episodes are `horizon` steps (0: the
      # stream's), the other teachers' teacher-forced.
      free_running=dict(fraction=0.5, observe_min=16, observe_max=64, horizon=128,
                        start_fraction=2 / 3),
      # Fine-tuning after imitation (launch.finetune): start from `source`'s best
      # meta-params and train the imitator on D(a, a_hat) + weight * D(b, a_hat), b the
      # labels ('outcome') or the overseer's trusted learner ('process');
      # imitator.training.finetune.
      finetune=dict(source="", extra="none", weight=0.0))

  config.eval = dict(seed=10_000, val_teachers=32, teachers=128,
                     chunk=0)  # evaluation unrolls this many steps per call; 0 = whole horizon

  if "smoke" in parse_arg(arg, ("smoke",)):
    shrink_to_smoke(config)
  return config


def parse_arg(arg: str | None, allowed: tuple) -> set:
  """The comma-separated words of a config argument (`FILE.py:a,b`), checked."""
  words = {w.strip() for w in (arg or "").split(",") if w.strip()}
  unknown = sorted(words - set(allowed))
  if unknown:
    raise ValueError(f"unknown config argument(s) {unknown}; allowed: {list(allowed)}.")
  return words


def shrink_to_smoke(config: config_dict.ConfigDict) -> None:
  """Seconds-long version of a config, for tests: short streams, many cheap steps (the
  time goes to compilation)."""
  config.stream.horizon = 32
  config.stream.task_switch_every = 16
  config.train.steps = 300
  config.train.teachers = 16
  config.train.log_every = 50
  config.train.eval_every = 150
  config.train.checkpoint_every = 150
  config.train.warmup_steps = 20
  config.eval.val_teachers = 32
  config.eval.teachers = 64
  config.train.free_running.fraction = 0.0  # teacher-forced: free-running has own tests
  config.train.truncation = 0  # a window longer than the smoke horizon is no window
