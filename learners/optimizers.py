"""The family's optimizers: optax transformations with injected, traced hyperparams.

Each member carries the state of every optimizer its family supports (a superset keyed
by name); `update` runs the member's optimizer, chosen by its integer code, and leaves
the other states untouched. Hyperparams enter through `optax.inject_hyperparams`, so
they are traced arrays: a population with different learning rates is one `vmap`, and
rollouts are differentiable with respect to them.
"""

import jax.numpy as jnp
import optax

from learners import dispatch

OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop")
EPS = 1e-8  # adam and rmsprop denominators (optax's default)
# Inside adam's square root: keeps gradients through the update finite where the second
# moment is 0 (optax's advice for meta-gradients through Adam); rmsprop has eps there.
EPS_ROOT = 1e-16


def _make(name):
  def make(learning_rate, weight_decay, momentum, beta2):
    if name == "sgd":
      base = optax.sgd(learning_rate)
    elif name == "momentum":
      base = optax.sgd(learning_rate, momentum=momentum)
    elif name == "adam":
      base = optax.adam(learning_rate, b1=momentum, b2=beta2, eps=EPS, eps_root=EPS_ROOT)
    else:
      base = optax.rmsprop(learning_rate, decay=beta2, eps=EPS)
    # L2 weight decay coupled to the gradient: g + weight_decay * params.
    return optax.chain(optax.add_decayed_weights(weight_decay), base)

  return optax.inject_hyperparams(make)


_FACTORIES = {name: _make(name) for name in OPTIMIZERS}


def _injected(hparams):
  return {k: jnp.asarray(hparams[k])
          for k in ("learning_rate", "weight_decay", "momentum", "beta2")}


def transform(name: str, hparams) -> optax.GradientTransformation:
  """The optax transformation of optimizer `name` with a member's hyperparams."""
  return _FACTORIES[name](**_injected(hparams))


def init(support, hparams, params):
  """Superset state {name: optax state} for every optimizer in `support`."""
  return {name: transform(name, hparams).init(params) for name in support}


def update(support, hparams, grads, states, params):
  """(updates, states) from the optimizer coded by hparams['optimizer']."""

  def branch(name):
    def run(grads, states, params):
      # Refresh the injected values: hyperparams may change between steps (system_id
      # refines its estimates), and gradients reach them through this step.
      state = states[name]
      fresh = {k: v.astype(state.hyperparams[k].dtype) for k, v in _injected(hparams).items()}
      state = state._replace(hyperparams={**state.hyperparams, **fresh})
      updates, new = transform(name, hparams).update(grads, state, params)
      return updates, {**states, name: new}
    return run

  branches = {name: branch(name) for name in support}
  return dispatch.switch(hparams["optimizer"], OPTIMIZERS, support, branches,
                         grads, states, params)
