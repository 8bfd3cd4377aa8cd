"""The outside battery (issue 25.4): scikit-learn `partial_fit` learners with random
hyperparameters, recorded as teachers (`learners.recorded`) and never meta-trained on.

Each learner name draws its estimator's hyperparameters from a numpy Generator, in
ranges where the learner stays finite on the project's standardized streams:

- regression: `sgd` (SGDRegressor: its own schedules constant / invscaling / adaptive /
  optimal, penalties l2 / l1 / elasticnet, loss, alpha and eta0), `pa`
  (PassiveAggressiveRegressor: C, epsilon), `mlp` (MLPRegressor, Adam: hidden size,
  learning_rate_init, alpha);
- classification: `sgd` (SGDClassifier with a loss that has probabilities, log_loss or
  modified_huber), `perceptron` (Perceptron: decision scores through a softmax),
  `nb` (GaussianNB: var_smoothing).

`draw(name, task, rng)` gives the hyperparameters, `make` the `recorded.Sklearn`
learner; `battery` builds P teachers per name with their same-kind chance learners (the
same name, hyperparameters drawn again from another Generator of the same seed), and
`record_battery` records them on streams. Everything is reproducible from the seed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import warnings

import numpy as np

from learners import recorded

# name -> sklearn class name, per task (the class name is the teacher's `kind`).
LEARNERS = {
    "regression": {"sgd": "SGDRegressor", "pa": "PassiveAggressiveRegressor",
                   "mlp": "MLPRegressor"},
    "classification": {"sgd": "SGDClassifier", "perceptron": "Perceptron",
                       "nb": "GaussianNB"},
}
ALL_NAMES = tuple(sorted({n for names in LEARNERS.values() for n in names}))


def _log_uniform(rng, lo, hi) -> float:
  return float(10 ** rng.uniform(np.log10(lo), np.log10(hi)))


def _choice(rng, options):
  return options[int(rng.integers(len(options)))]


def _seed(rng) -> int:
  return int(rng.integers(2 ** 31 - 1))


def _sgd_regressor(rng) -> dict:
  schedule = _choice(rng, ("constant", "invscaling", "adaptive", "optimal"))
  hp = {"learning_rate": schedule, "penalty": _choice(rng, ("l2", "l1", "elasticnet")),
        "l1_ratio": float(rng.uniform(0.05, 0.95))}
  if schedule == "optimal":
    # eta_t = 1 / (alpha (t0 + t)) starts at alpha^-1/4 and decays slowly for small
    # alpha: with the squared loss it diverges; the huber loss bounds the gradient
    # (epsilon), and alpha >= 1e-2 the steps (below, errors ~40x the targets' variance).
    hp.update(loss="huber", epsilon=float(rng.uniform(0.05, 0.5)),
              alpha=_log_uniform(rng, 1e-2, 1e-1))
  else:
    hp.update(loss=_choice(rng, ("squared_error", "huber", "epsilon_insensitive")),
              epsilon=float(rng.uniform(0.01, 0.3)), alpha=_log_uniform(rng, 1e-6, 1e-2),
              eta0=_log_uniform(rng, 1e-3, 1e-1))
    if schedule == "invscaling":
      hp["power_t"] = float(rng.uniform(0.1, 0.5))
  hp["random_state"] = _seed(rng)
  return hp


def _passive_aggressive(rng) -> dict:
  return {"C": _log_uniform(rng, 1e-3, 1.0), "epsilon": float(rng.uniform(0.0, 0.3)),
          "loss": _choice(rng, ("epsilon_insensitive", "squared_epsilon_insensitive")),
          "random_state": _seed(rng)}


def _mlp(rng, classification=False) -> dict:
  del classification
  return {"hidden_layer_sizes": (round(_log_uniform(rng, 8, 64)),),
          "activation": _choice(rng, ("relu", "tanh")),
          "learning_rate_init": _log_uniform(rng, 1e-4, 1e-2),
          "alpha": _log_uniform(rng, 1e-6, 1e-2), "random_state": _seed(rng)}


def _sgd_classifier(rng) -> dict:
  hp = {"loss": _choice(rng, ("log_loss", "modified_huber")),
        "learning_rate": _choice(rng, ("constant", "invscaling", "adaptive", "optimal")),
        "penalty": _choice(rng, ("l2", "l1", "elasticnet")),
        "l1_ratio": float(rng.uniform(0.05, 0.95)),
        "alpha": _log_uniform(rng, 1e-5, 1e-2), "eta0": _log_uniform(rng, 1e-3, 1e-1)}
  if hp["learning_rate"] == "invscaling":
    hp["power_t"] = float(rng.uniform(0.1, 0.5))
  hp["random_state"] = _seed(rng)
  return hp


def _perceptron(rng) -> dict:
  return {"penalty": _choice(rng, (None, "l2", "l1", "elasticnet")),
          "l1_ratio": float(rng.uniform(0.05, 0.95)),
          "alpha": _log_uniform(rng, 1e-6, 1e-3), "eta0": _log_uniform(rng, 1e-2, 1.0),
          "random_state": _seed(rng)}


def _gaussian_nb(rng) -> dict:
  return {"var_smoothing": _log_uniform(rng, 1e-9, 1e-1)}


_DRAW = {
    ("regression", "sgd"): _sgd_regressor,
    ("regression", "pa"): _passive_aggressive,
    ("regression", "mlp"): _mlp,
    ("classification", "sgd"): _sgd_classifier,
    ("classification", "perceptron"): _perceptron,
    ("classification", "nb"): _gaussian_nb,
}


def check_names(names, task: str | None = None) -> tuple:
  """`names` (e.g. from --learners) as a tuple; ValueError naming the first unknown or
  repeated one and the allowed values (of `task` when given, else of every task)."""
  if task:
    allowed, shown = tuple(LEARNERS[task]), f"{list(LEARNERS[task])} (task {task})"
  else:
    allowed = ALL_NAMES
    shown = "; ".join(f"{list(v)} (task {k})" for k, v in LEARNERS.items())
  names = tuple(n.strip() for n in names if n.strip())
  for i, n in enumerate(names):
    if n not in allowed:
      raise ValueError(f"--learners: unknown learner {n!r}; allowed: {shown}.")
    if n in names[:i]:
      raise ValueError(f"--learners: {n!r} is given twice; allowed: {shown}, each once.")
  if not names:
    raise ValueError(f"--learners names no learner; allowed: {shown}.")
  return names


def draw(name: str, task: str, rng: np.random.Generator) -> dict:
  """Random hyperparameters of learner `name` of `task` (keyword arguments of its
  scikit-learn estimator)."""
  check_names([name], task)
  return _DRAW[(task, name)](rng)


def estimator(name: str, task: str, hp: dict):
  """The scikit-learn estimator of `name` with hyperparameters `hp` (an int
  `random_state` seeds the estimator's own numpy RandomState: sklearn would build a new
  one from an int at every partial_fit and OvR class, a third of a classifier's step)."""
  from sklearn import linear_model, naive_bayes, neural_network
  cls = LEARNERS[task][name]
  module = {"MLPRegressor": neural_network, "GaussianNB": naive_bayes}.get(cls,
                                                                        linear_model)
  hp = dict(hp)
  if "random_state" in hp:  # one RandomState, not an int sklearn seeds one from per call
    hp["random_state"] = np.random.RandomState(hp["random_state"])
  with quiet():  # PassiveAggressiveRegressor is deprecated from scikit-learn 1.8
    return getattr(module, cls)(**hp)


class Outside(recorded.Sklearn):
  """`recorded.Sklearn` with its drawn hyperparameters (`hparams`) and the warnings
  scikit-learn gives on one-step updates (convergence, deprecations) silenced."""

  def __init__(self, name: str, task: str, hp: dict, n_classes: int = 0,
               out_dim: int = 1):
    super().__init__(estimator(name, task, hp), task, n_classes, out_dim)
    self.name, self.hparams = name, dict(hp)

  def predict(self, x):
    with quiet():
      return super().predict(x)

  def learn(self, x, y):
    with quiet():
      super().learn(x, y)


@contextlib.contextmanager
def quiet():
  """Silences what scikit-learn says about single partial_fit steps: ConvergenceWarning
  (one iteration is never converged), FutureWarning/DeprecationWarning (e.g. a
  deprecated estimator) and overflow in its numpy arithmetic."""
  from sklearn.exceptions import ConvergenceWarning
  with warnings.catch_warnings(), np.errstate(over="ignore", invalid="ignore",
                                              divide="ignore", under="ignore"):
    for category in (ConvergenceWarning, FutureWarning, DeprecationWarning,
                     RuntimeWarning):
      warnings.simplefilter("ignore", category)
    yield


def make(name: str, task: str, rng: np.random.Generator, n_classes: int = 0,
         out_dim: int = 1) -> Outside:
  """A fresh learner `name` with hyperparameters drawn from `rng`."""
  return Outside(name, task, draw(name, task, rng), n_classes, out_dim)


def generators(seed: int, name: str, index: int):
  """(teacher, chance) Generators of teacher `index` of learner `name`: independent
  streams of the seed (the chance learner's hyperparameters are another draw)."""
  tag = ALL_NAMES.index(name)
  return (np.random.default_rng([seed, tag, index, 0]),
          np.random.default_rng([seed, tag, index, 1]))


def battery(names, task: str, per_name: int, seed: int = 0, n_classes: int = 0,
            out_dim: int = 1):
  """(teachers, chance): `per_name` fresh learners of each name in `names`, in that
  order, and for each a same-kind chance learner (the same name, other hyperparameters)."""
  names = check_names(names, task)
  teachers, chance = [], []
  for name in names:
    for i in range(per_name):
      rt, rc = generators(seed, name, i)
      teachers.append(make(name, task, rt, n_classes, out_dim))
      chance.append(make(name, task, rc, n_classes, out_dim))
  return teachers, chance


def _run_one(job) -> np.ndarray:
  """Behaviour [T, B, out] of one fresh learner on one stream (a worker's job)."""
  name, task, hp, n_classes, out_dim, x, y = job
  return recorded.run(Outside(name, task, hp, n_classes, out_dim), x, y)


def record_battery(names, task: str, x, y, seed: int = 0, n_classes: int = 0,
                   out_dim: int = 1, workers: int = 1) -> recorded.Recorded:
  """The outside battery recorded on streams x [P, T, B, ...], y [P, T, B(, k)]: P /
  len(names) teachers of each name (P must be a multiple), teacher i on stream i, with
  their same-kind chance learners on the same streams; what `recorded.record` gives on
  `battery(...)`. `workers` > 1 runs the learners in that many spawned processes
  (scikit-learn's per-call overhead is Python; the results are the same)."""
  names = check_names(names, task)
  x, y = np.asarray(x), np.asarray(y)
  if len(x) % len(names):
    raise ValueError(f"{len(x)} streams for {len(names)} learners {list(names)}: a "
                     "multiple is needed (the same number of teachers of each).")
  teachers, chance = battery(names, task, len(x) // len(names), seed, n_classes, out_dim)
  if workers <= 1:
    return recorded.record(teachers, x, y, task, chance=chance)
  P = len(x)
  jobs = [(m.name, task, m.hparams, n_classes, out_dim, x[i % P], y[i % P])
          for i, m in enumerate(teachers + chance)]
  with concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context("spawn")) as pool:
    behaviour = list(pool.map(_run_one, jobs))
  return recorded.validate(recorded.Recorded(
      x=x, y=y, a=np.stack(behaviour[:P]), kind=np.asarray([m.kind for m in teachers]),
      task=task, chance_a=np.stack(behaviour[P:])))
