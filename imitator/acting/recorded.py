"""Imitating recorded choices of real agents (`learners.recorded_choices`).

Each subject's first `observed` fraction of trials is what the imitators watch; the
later trials are scored. The meta-trained recurrent imitator reads the whole history
(it never sees the subject's hyperparams or any policy, only choices and outcomes); the
field's standard reference, the per-subject maximum-likelihood fit of the value learner
(`mle`), is fitted on the watched trials; both are scored by the NLL of each later
choice under the policy before it, and by the normalized likelihood exp(-mean NLL) per
subject (CIs over subjects; differences paired).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from imitator import metrics
from imitator.acting import agents as agents_lib
from imitator.acting import mle
from learners import recorded_choices


def split(choices: recorded_choices.Choices, observed: float):
  """(watched, scored) masks [S, T]: the first floor(observed * n_s) recorded trials of
  each subject, and the rest."""
  if not 0.0 < observed < 1.0:
    raise ValueError(f"observed={observed!r}: the watched fraction of each subject's "
                     "trials must be in (0, 1).")
  n = choices.mask.sum(1)
  cut = np.floor(observed * n).astype(int)
  t = np.arange(choices.mask.shape[1])[None]
  watched = choices.mask & (t < cut[:, None])
  scored = choices.mask & ~watched
  if not scored.any(1).all() or not watched.any(1).all():
    short = [str(s) for s, w, c in zip(choices.subject, watched.any(1), scored.any(1))
             if not (w and c)]
    raise ValueError(f"subjects {short[:5]} have too few trials to watch and score any with "
                     f"observed={observed}.")
  return watched, scored


def evaluate(imitator: agents_lib.RecurrentImitator, metas: dict,
             choices: recorded_choices.Choices, observed: float = 0.5, key=None,
             mle_steps: int = 300, mle_restarts: int = 8) -> dict:
  """Per-subject figures of each imitator (metas: name -> meta-params) and of the
  per-subject fit, on the scored trials: {"subjects", "rows"}."""
  if int(choices.choice.max()) >= imitator.arms:
    raise ValueError(f"recorded choices use {int(choices.choice.max()) + 1} arms; the "
                     f"imitator was meta-trained on {imitator.arms}.")
  watched, scored = split(choices, observed)
  c, r = jnp.asarray(choices.choice), jnp.asarray(choices.reward)
  score = jnp.asarray(scored)
  n_scored = np.asarray(scored.sum(1), np.float64)

  def mean_nll(lp):
    nll = metrics.choice_nll(lp, jnp.maximum(c, 0))
    return np.asarray(jnp.sum(jnp.where(score, nll, 0.0), 1)) / n_scored

  nlls = {}
  lp_fn = jax.jit(jax.vmap(lambda m, c, r: agents_lib.log_policies(imitator, m, c, r),
                           in_axes=(None, 0, 0)))
  for name, meta in metas.items():
    nlls[name] = mean_nll(lp_fn(meta, c, r))
  fitted = mle.fit(jax.random.key(0) if key is None else key, c, r, jnp.asarray(watched),
                   imitator.arms, steps=mle_steps, restarts=mle_restarts)
  nlls["mle"] = np.asarray(jax.vmap(lambda h, c, r, s: mle.nll(h, c, r, s, imitator.arms))(
      fitted, c, r, score), np.float64)
  rows = []
  for name, nll in nlls.items():
    like = metrics.normalized_likelihood(nll)
    row = {"agent": name, "nll": float(nll.mean()), "nll_ci": list(metrics.bootstrap_ci(nll)),
           "normalized_likelihood": float(like.mean()),
           "normalized_likelihood_ci": list(metrics.bootstrap_ci(like)),
           "per_subject_normalized_likelihood": [float(v) for v in like]}
    if name != "mle":
      d = like - metrics.normalized_likelihood(nlls["mle"])
      row["minus_mle"] = float(d.mean())
      row["minus_mle_ci"] = list(metrics.bootstrap_ci(d))
    rows.append(row)
  return {"subjects": [str(s) for s in choices.subject], "observed": observed,
          "scored_trials": int(n_scored.sum()), "rows": rows}
