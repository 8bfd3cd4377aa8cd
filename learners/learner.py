"""One member of the family as an online learner: its state, behaviour and update.

`step(family, hparams, state, x, y)` first answers `x` (the behaviour a_t, taken before
learning), then learns from (x, y). One observation runs `inner_steps` gradient steps
(a static maximum, masked) of the member's optimizer on

    (1 - r) * loss(x, y) + r * loss(replayed batch)  + penalties (L2 to anchor, EWC),

then updates the Fisher estimate (from the batch gradient at the pre-update weights),
the anchor, the replay reservoir, and applies shrink-and-perturb. Its only random
numbers are the `Draws` of `draws` (replayed slots, reservoir slots, perturbation
noise), from the member's key folded with the step number; `step(..., return_draws=True)`
also returns them, so a dump can record every one.

In a family whose members may learn by non-gradient rules (`learners.rules`), `step`
picks the member's rule by its code with `lax.switch`, so a mixed population is still
one `vmap`; each rule writes only its own part of the state.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from learners import dispatch, networks, optimizers, regularizers, rules
from learners.family import Family


class LearnerState(NamedTuple):
  params: Any
  opt_state: Any
  anchor: Any  # None unless the family has l2 or ewc
  fisher: Any  # None unless the family has ewc
  replay: Any  # regularizers.Replay, or None unless the family has replay
  key: jax.Array
  step: jax.Array
  rules: Any = None  # {rule: state} of the family's non-gradient rules, or None


def y_spec(family: Family):
  """Per-example target shape and dtype."""
  if family.task == "classification":
    return (), jnp.int32
  return (family.out_dim,), jnp.float32


def init(family: Family, hparams, key, params=None) -> LearnerState:
  """Initial state; weights drawn from `key` unless `params` gives them."""
  k_params, k_run = jax.random.split(key)
  rule_states = None
  if family.beyond_gradient:
    rule_states = rules.init(family, hparams, jax.random.fold_in(key, 2))
  if params is None:
    params = networks.init(k_params, family.in_dim, family.out_dim, family.width,
                           family.depth, family.networks, scale=hparams["init_scale"])
  regs = family.regularizers
  replay = None
  if "replay" in regs:
    replay = regularizers.replay_init(family.replay_size, family.x_shape, *y_spec(family))
  return LearnerState(
      params=params,
      opt_state=optimizers.init(family.optimizers, hparams, params),
      anchor=params if family.uses_anchor else None,
      fisher=jax.tree.map(jnp.zeros_like, params) if "ewc" in regs else None,
      replay=replay,
      key=k_run,
      step=jnp.zeros((), jnp.int32),
      rules=rule_states,
  )


def outputs(family: Family, hparams, params, x):
  """Raw outputs [B, out]: regression values or logits."""
  return networks.apply(params, x, hparams["network"], hparams["activation"],
                        family.networks, family.activations)


def head(family: Family, hparams, out):
  """Behaviour from raw outputs: values, or softmax(logits / temperature) [B, C]."""
  if family.task == "classification":
    return jax.nn.softmax(out / hparams["temperature"], axis=-1)
  return out


def loss_from_outputs(family: Family, hparams, out, y):
  """Mean over the batch of 0.5 * ||out - y||^2, or of the cross-entropy of the head."""
  if family.task == "classification":
    return optax.losses.softmax_cross_entropy_with_integer_labels(
        out / hparams["temperature"], y).mean()
  return 0.5 * jnp.sum((out - y) ** 2, axis=-1).mean()


def data_loss(family: Family, hparams, params, x, y):
  """(loss, raw outputs) of params on a batch."""
  out = outputs(family, hparams, params, x)
  return loss_from_outputs(family, hparams, out, y), out


def state_outputs(family: Family, hparams, state: LearnerState, x):
  """Raw outputs [B, out] of the member's state on x, whatever its rule."""
  if not family.beyond_gradient:
    return outputs(family, hparams, state.params, x)
  return _by_rule(family, hparams, state,
                  lambda s: outputs(family, hparams, s.params, x),
                  lambda r, s: rules.outputs(family, hparams, r, s.rules[r], x))


def _by_rule(family: Family, hparams, state, gradient, rule_fn):
  """`gradient(state)` or `rule_fn(rule, state)` as the member's rule says (lax.switch
  over the family's rules)."""
  branches = {r: functools.partial(rule_fn, r) for r in family.rules if r != "gradient"}
  branches["gradient"] = gradient
  return dispatch.switch(hparams["rule"], rules.RULES, family.rules, branches, state)


def behave(family: Family, hparams, state: LearnerState, x):
  """The behaviour on x [B, ...] without learning: [B, out]."""
  return head(family, hparams, state_outputs(family, hparams, state, x))


class Draws(NamedTuple):
  """The random numbers of one update on a batch of B examples (None where the family
  draws none): replay_slots [B] int32, the buffer slots of the replayed batch (0 while
  the buffer is empty); insert_slots [B] int32, the reservoir slot of each example
  (replay_size: not stored); noise, shrink-and-perturb's N(0, 1) noise shaped like the
  params (every network kind of the superset)."""

  replay_slots: Any = None
  insert_slots: Any = None
  noise: Any = None


def draws(family: Family, state: LearnerState, n: int, noise: bool = True) -> Draws:
  """The draws of the update at `state` on n examples, from the member's key folded with
  state.step; `noise=False` skips the perturbation noise (None)."""
  k_sample, k_insert, k_perturb = jax.random.split(
      jax.random.fold_in(state.key, state.step), 3)
  regs = family.regularizers
  out = Draws()
  if "replay" in regs:
    out = out._replace(
        replay_slots=regularizers.replay_indices(state.replay, k_sample, n),
        insert_slots=regularizers.reservoir_slots(state.replay.count,
                                                  state.replay.x.shape[0], k_insert, n))
  if "shrink_perturb" in regs and noise:
    out = out._replace(noise=regularizers.perturbation(state.params, k_perturb))
  return out


def update(family: Family, hparams, state: LearnerState, x, y, grads=None,
           perturbation_noise: bool = True, drawn: Draws | None = None) -> LearnerState:
  """Learns from (x, y); `grads` may pass the data gradient at state.params if known,
  `drawn` the step's `draws` (drawn here if None). `perturbation_noise=False` replaces
  shrink-and-perturb's noise by its mean, 0: the best guess of an observer who cannot see
  the teacher's draws (and no random numbers to generate); given `drawn`, its noise is
  used as it is."""
  grad_fn = jax.grad(lambda p, x, y: data_loss(family, hparams, p, x, y)[0])
  if grads is None:
    grads = grad_fn(state.params, x, y)
  if drawn is None:
    drawn = draws(family, state, x.shape[0], noise=perturbation_noise)
  regs = family.regularizers

  if "replay" in regs:
    idx = drawn.replay_slots
    x_rep, y_rep = state.replay.x[idx], state.replay.y[idx]
    ratio = jnp.where(state.replay.count > 0, hparams["replay_ratio"], 0.0)

  def total_grads(params, data_grads):
    g = data_grads
    if "replay" in regs:
      g_rep = grad_fn(params, x_rep, y_rep)
      g = jax.tree.map(lambda a, b: (1.0 - ratio) * a + ratio * b, g, g_rep)
    if family.uses_anchor:
      pen = regularizers.penalty_grads(params, state.anchor, state.fisher, hparams)
      g = jax.tree.map(jnp.add, g, pen)
    return g

  params, opt_state = state.params, state.opt_state
  for i in range(family.max_inner_steps):
    data_grads = grads if i == 0 else grad_fn(params, x, y)
    updates, new_opt = optimizers.update(family.optimizers, hparams,
                                         total_grads(params, data_grads), opt_state, params)
    new_params = optax.apply_updates(params, updates)
    if i == 0:
      params, opt_state = new_params, new_opt
    else:
      keep = i < hparams["inner_steps"]
      params, opt_state = jax.tree.map(lambda n, o: jnp.where(keep, n, o),
                                       (new_params, new_opt), (params, opt_state))

  fisher = state.fisher
  if "ewc" in regs:
    fisher = regularizers.update_fisher(fisher, grads, hparams["ewc_decay"])
  anchor = state.anchor
  if family.uses_anchor:
    anchor = regularizers.update_anchor(anchor, params, hparams["anchor_rate"])
  replay = state.replay
  if "replay" in regs:
    replay = regularizers.replay_insert(replay, x, y, drawn.insert_slots)
  if "shrink_perturb" in regs:
    params = regularizers.shrink_perturb(params, hparams["shrink"], hparams["perturb"],
                                         drawn.noise)
  return LearnerState(params, opt_state, anchor, fisher, replay, state.key, state.step + 1,
                      state.rules)


def _gradient_step(family: Family, hparams, state: LearnerState, x, y):
  (loss, out), grads = jax.value_and_grad(
      lambda p: data_loss(family, hparams, p, x, y), has_aux=True)(state.params)
  drawn = draws(family, state, x.shape[0])
  state = update(family, hparams, state, x, y, grads=grads, drawn=drawn)
  return state, (out, loss, drawn)


def _rule_step(family: Family, hparams, rule: str, state: LearnerState, x, y):
  out = rules.outputs(family, hparams, rule, state.rules[rule], x)
  # The draws a network member would make (unused): every branch has one output structure.
  drawn = draws(family, state, x.shape[0])
  learned = rules.learn(family, hparams, rule, state.rules[rule], x, y)
  state = state._replace(rules={**state.rules, rule: learned}, step=state.step + 1)
  return state, (out, loss_from_outputs(family, hparams, out, y), drawn)


def step(family: Family, hparams, state: LearnerState, x, y, return_draws: bool = False):
  """Answers x, then learns from (x, y): (state, (behaviour [B, out], loss [])), with the
  update's `Draws` as a third output if asked (the same numbers either way)."""
  if family.beyond_gradient:
    state, (out, loss, drawn) = _by_rule(
        family, hparams, state, lambda s: _gradient_step(family, hparams, s, x, y),
        lambda r, s: _rule_step(family, hparams, r, s, x, y))
  else:
    state, (out, loss, drawn) = _gradient_step(family, hparams, state, x, y)
  aux = (head(family, hparams, out), loss)
  return state, (aux + (drawn,) if return_draws else aux)
