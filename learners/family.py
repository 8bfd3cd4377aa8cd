"""The parametrized family of continual learners: priors over hyperparams.

Hyperparams are a dict of arrays, one entry per field of `FIELDS` (scalars for one
member, `[n]` for a population). Discrete choices are integer codes into the name
tuples of `learners.networks` and `learners.optimizers`, so a mixed population is one
`vmap`. A `Family` is static (hashable): the network sizes, the discrete choices it
supports, the regularizers it may switch on, and the priors of the continuous fields.
Families are named presets (`FAMILIES`) adjusted by config (`from_config`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from learners import networks, optimizers, rules

REGULARIZERS = ("l2", "ewc", "replay", "shrink_perturb")
TASKS = ("regression", "classification")

# Field name -> what it means; the order is the order of `describe` and of dumps.
FIELDS = {
    "network": "network kind, a code into learners.networks.NETWORKS",
    "activation": "hidden activation, a code into learners.networks.ACTIVATIONS",
    "optimizer": "optimizer, a code into learners.optimizers.OPTIMIZERS",
    "learning_rate": "optimizer step size (prior depends on the optimizer)",
    "momentum": "momentum coefficient (momentum) and b1 (adam)",
    "beta2": "second-moment decay (adam b2, rmsprop decay)",
    "weight_decay": "L2 weight decay coupled to the gradient",
    "l2_strength": "strength of the L2 penalty pulling weights to the anchor",
    "anchor_rate": "anchor <- anchor + rate * (weights - anchor); 0 keeps the initial weights",
    "ewc_strength": "online EWC penalty strength",
    "ewc_decay": "online EWC Fisher decay: F <- decay * F + (1 - decay) * g^2",
    "replay_ratio": "weight of the loss on a replayed batch from the reservoir buffer",
    "shrink": "shrink-and-perturb: weights <- (1 - shrink) * weights + perturb * noise",
    "perturb": "shrink-and-perturb noise std",
    "inner_steps": "gradient steps per observation",
    "temperature": "softmax temperature of the classification head",
    "init_scale": "std of the initial weights (NTK parametrization)",
}
# The fields of a family with members beyond gradient descent (`learners.rules`) only:
# families of networks alone keep exactly FIELDS, their draws and their checkpoints.
RULE_FIELDS = {
    "rule": "how the member learns, a code into learners.rules.RULES",
    "kalman_drift": "kalman: weight drift variance q per example (old evidence fades)",
    "kalman_noise": "kalman: observation noise variance r",
    "neighbours": "knn: how many nearest stored examples are averaged",
    "pa_aggressiveness": "passive_aggressive: the step cap C of PA-I",
    "pa_epsilon": "passive_aggressive: the insensitive zone of the loss",
    "prototype_rate": "prototype: step of the nearest center toward the input",
    "value_rate": "prototype: step of the nearest center's value toward the target",
}
ALL_FIELDS = {**FIELDS, **RULE_FIELDS}
DISCRETE = ("network", "activation", "optimizer", "inner_steps", "rule", "neighbours")
CONTINUOUS = tuple(f for f in FIELDS if f not in DISCRETE)
RULE_CONTINUOUS = tuple(f for f in RULE_FIELDS if f not in DISCRETE)
# The global code tables: a coded field's value indexes its table (not a family's support).
CODE_TABLES = {"network": networks.NETWORKS, "activation": networks.ACTIVATIONS,
               "optimizer": optimizers.OPTIMIZERS, "rule": rules.RULES}

# Every range spans a factor of 30, so `lr_scale=1/30` moves the prior just below itself.
LEARNING_RATES = {"sgd": (0.01, 0.3), "momentum": (0.003, 0.09),
                  "adam": (0.001, 0.03), "rmsprop": (0.001, 0.03)}
# Which regularizer switches a field on; such a field is exactly 0 when it is off.
_REGULARIZER_OF = {"l2_strength": "l2", "ewc_strength": "ewc", "ewc_decay": "ewc",
                   "replay_ratio": "replay", "shrink": "shrink_perturb",
                   "perturb": "shrink_perturb"}
# Which rule reads a rule field; its prior is fixed at 0 in a family without that rule.
_RULE_OF = {"kalman_drift": "kalman", "kalman_noise": "kalman",
            "pa_aggressiveness": "passive_aggressive", "pa_epsilon": "passive_aggressive",
            "prototype_rate": "prototype", "value_rate": "prototype"}


PRIOR_KINDS = ("uniform", "log_uniform", "fixed")


@dataclasses.dataclass(frozen=True)
class Prior:
  """A 1-d prior: `log_uniform` or `uniform` on [low, high], or `fixed` at low.

  With `p_off > 0` the value is exactly 0 with that probability (a component that is off).
  """

  kind: str
  low: float
  high: float = 0.0
  p_off: float = 0.0

  def check(self, where: str) -> None:
    if self.kind not in PRIOR_KINDS:
      raise ValueError(f"{where}: kind {self.kind!r}; allowed: {list(PRIOR_KINDS)}.")
    if self.kind != "fixed" and not self.low <= self.high:
      raise ValueError(f"{where}: low={self.low} must be <= high={self.high}.")
    if self.kind == "log_uniform" and self.low <= 0:
      raise ValueError(f"{where}: log_uniform needs low > 0, got {self.low}.")
    if not 0.0 <= self.p_off < 1.0:
      raise ValueError(f"{where}: p_off={self.p_off} must be in [0, 1).")

  @classmethod
  def parse(cls, text: str) -> "Prior":
    """'uniform(0, 0.2)', 'log_uniform(1e-3, 1e-1, p_off=0.5)' or 'fixed(1.0)'."""
    m = re.fullmatch(r"\s*(\w+)\s*\((.*)\)\s*", text)
    if not m:
      raise ValueError(f"prior {text!r} must look like uniform(low, high), "
                       "log_uniform(low, high[, p_off=p]) or fixed(value).")
    kind, args = m.group(1), [a.strip() for a in m.group(2).split(",") if a.strip()]
    try:
      p_off = [float(a.split("=")[1]) for a in args if a.startswith("p_off")]
      nums = [float(a) for a in args if not a.startswith("p_off")]
    except (ValueError, IndexError):
      raise ValueError(f"prior {text!r}: arguments must be numbers.") from None
    if kind not in PRIOR_KINDS or len(nums) != (1 if kind == "fixed" else 2):
      raise ValueError(f"prior {text!r}: use uniform(low, high), log_uniform(low, high) "
                       "or fixed(value).")
    return cls(kind, nums[0], nums[-1] if kind != "fixed" else 0.0,
               p_off[0] if p_off else 0.0)

  def sample(self, key, n):
    k_on, k_v = jax.random.split(key)
    u = jax.random.uniform(k_v, (n,))
    if self.kind == "fixed":
      v = jnp.full((n,), self.low)
    elif self.kind == "uniform":
      v = self.low + u * (self.high - self.low)
    else:
      v = jnp.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
    if self.p_off:
      v = jnp.where(jax.random.uniform(k_on, (n,)) < self.p_off, 0.0, v)
    return v.astype(jnp.float32)

  def allows(self, value: float) -> bool:
    if self.p_off and value == 0.0:
      return True
    high = self.low if self.kind == "fixed" else self.high
    tol = 1e-6 * max(abs(self.low), abs(high), 1e-12)
    return self.low - tol <= value <= high + tol

  def text(self) -> str:
    if self.kind == "fixed":
      return f"{self.low:g}"
    off = f" or 0 (off w.p. {self.p_off:g})" if self.p_off else ""
    return f"[{self.low:g}, {self.high:g}] ({self.kind}){off}"


DEFAULT_PRIORS = {
    "momentum": Prior("uniform", 0.5, 0.95),
    "beta2": Prior("uniform", 0.9, 0.999),
    "weight_decay": Prior("log_uniform", 1e-5, 1e-3, p_off=0.5),
    "l2_strength": Prior("log_uniform", 1e-3, 1e-1, p_off=0.5),
    "anchor_rate": Prior("log_uniform", 1e-4, 1e-2, p_off=0.5),
    "ewc_strength": Prior("log_uniform", 0.01, 1.0, p_off=0.5),
    "ewc_decay": Prior("uniform", 0.9, 0.999),
    "replay_ratio": Prior("uniform", 0.1, 0.7, p_off=0.5),
    "shrink": Prior("log_uniform", 1e-5, 1e-3),
    "perturb": Prior("log_uniform", 1e-4, 1e-2),
    "temperature": Prior("log_uniform", 0.5, 2.0),
    "init_scale": Prior("uniform", 0.5, 1.5),
    "kalman_drift": Prior("log_uniform", 1e-5, 1e-2),
    "kalman_noise": Prior("log_uniform", 0.01, 1.0),
    "pa_aggressiveness": Prior("log_uniform", 0.03, 1.0),
    "pa_epsilon": Prior("uniform", 0.0, 0.2),
    "prototype_rate": Prior("log_uniform", 0.01, 0.3),
    "value_rate": Prior("log_uniform", 0.03, 1.0),
}


@dataclasses.dataclass(frozen=True)
class Family:
  """Static description of a family; `task`, `x_shape` and `out_dim` come from the stream."""

  name: str
  task: str
  x_shape: tuple
  out_dim: int
  width: int = 32
  depth: int = 1
  networks: tuple = ("mlp",)
  activations: tuple = ("tanh",)
  optimizers: tuple = ("sgd",)
  regularizers: tuple = ()
  replay_size: int = 64
  max_inner_steps: int = 1
  lr_scale: float = 1.0
  priors: tuple = ()  # ((field, Prior), ...) replacing DEFAULT_PRIORS entries
  rules: tuple = ("gradient",)  # how members may learn: learners.rules.RULES
  window: int = 64  # knn: stored examples
  max_neighbours: int = 8  # knn: neighbours are drawn from 1..max_neighbours
  prototypes: int = 16  # prototype: centers

  def __post_init__(self):
    _choices(self.name, "rules", self.rules, rules.RULES)
    _choices(self.name, "task", (self.task,), TASKS)
    _choices(self.name, "networks", self.networks, networks.NETWORKS)
    _choices(self.name, "activations", self.activations, networks.ACTIVATIONS)
    _choices(self.name, "optimizers", self.optimizers, optimizers.OPTIMIZERS)
    _choices(self.name, "regularizers", self.regularizers, REGULARIZERS, empty_ok=True)
    for field, low in (("width", 1), ("depth", 1), ("replay_size", 1),
                       ("max_inner_steps", 1), ("out_dim", 1), ("window", 1),
                       ("max_neighbours", 1), ("prototypes", 1)):
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"family {self.name!r}: {field}={value!r} must be an integer "
                         f">= {low}.")
    if not (isinstance(self.lr_scale, (int, float)) and self.lr_scale > 0):
      raise ValueError(f"family {self.name!r}: lr_scale={self.lr_scale!r} must be > 0.")
    for field, prior in self.priors:
      if field not in DEFAULT_PRIORS:
        raise ValueError(f"family {self.name!r}: no prior to set for {field!r}; fields "
                         f"with priors: {sorted(DEFAULT_PRIORS)} (learning rates: lr_scale).")
      prior.check(f"family {self.name!r} prior of {field}")

  # ------------------------------------------------------------------- structure

  @property
  def in_dim(self) -> int:
    return int(np.prod(self.x_shape))

  @property
  def beyond_gradient(self) -> bool:
    """Whether some members learn by a non-gradient rule (then hparams carry RULE_FIELDS)."""
    return self.rules != ("gradient",)

  @property
  def fields(self) -> tuple:
    """The hyperparam fields of this family's members, in dump order."""
    return tuple(ALL_FIELDS if self.beyond_gradient else FIELDS)

  @property
  def continuous(self) -> tuple:
    return CONTINUOUS + (RULE_CONTINUOUS if self.beyond_gradient else ())

  @property
  def uses_anchor(self) -> bool:
    return "l2" in self.regularizers or "ewc" in self.regularizers

  def prior(self, field: str) -> Prior:
    """The prior of a continuous field (learning_rate: see `learning_rate_range`)."""
    reg = _REGULARIZER_OF.get(field)
    if reg is not None and reg not in self.regularizers:
      return Prior("fixed", 0.0)
    if field in _RULE_OF and _RULE_OF[field] not in self.rules:
      return Prior("fixed", 0.0)
    if field == "anchor_rate" and not self.uses_anchor:
      return Prior("fixed", 0.0)
    if field == "temperature" and self.task == "regression":
      return Prior("fixed", 1.0)
    prior = dict(self.priors).get(field, DEFAULT_PRIORS[field])
    if reg == "shrink_perturb":
      # Both parts come on together; off is the member with shrink = perturb = 0.
      prior = dataclasses.replace(prior, p_off=0.5)
    return prior

  def learning_rate_range(self, optimizer: str) -> tuple[float, float]:
    low, high = LEARNING_RATES[optimizer]
    return low * self.lr_scale, high * self.lr_scale

  # ------------------------------------------------------------------- sampling

  def sample(self, key, n: int, fixed: Mapping[str, Any] | None = None):
    """n members' hyperparams {field: [n]}; jittable (n static). `fixed` {field: value}
    (codes for choices) replaces draws, and the learning rate is drawn from the range of
    a fixed optimizer."""
    fixed = dict(fixed or {})
    keys = dict(zip(FIELDS, jax.random.split(key, len(FIELDS))))
    hp = {}
    for field, support in (("network", self.networks), ("activation", self.activations),
                           ("optimizer", self.optimizers)):
      codes = jnp.asarray([CODE_TABLES[field].index(s) for s in support], jnp.int32)
      hp[field] = codes[jax.random.randint(keys[field], (n,), 0, len(support))]
    hp["inner_steps"] = jax.random.randint(
        keys["inner_steps"], (n,), 1, self.max_inner_steps + 1).astype(jnp.int32)
    for field in DISCRETE:
      if field in fixed and field in FIELDS:  # before the learning rate's range is read
        hp[field] = jnp.full((n,), fixed[field], jnp.int32)
    lows, highs = (jnp.asarray([math.log(self.learning_rate_range(o)[i])
                                for o in optimizers.OPTIMIZERS]) for i in (0, 1))
    u = jax.random.uniform(keys["learning_rate"], (n,))
    opt = hp["optimizer"]
    hp["learning_rate"] = jnp.exp(lows[opt] + u * (highs[opt] - lows[opt]))
    for field in CONTINUOUS:
      if field != "learning_rate":
        hp[field] = self.prior(field).sample(keys[field], n)
    if "shrink_perturb" in self.regularizers:
      # One switch turns both parts on: a member shrinks and perturbs, or does neither.
      always_on = dataclasses.replace(self.prior("perturb"), p_off=0.0)
      hp["perturb"] = jnp.where(hp["shrink"] > 0, always_on.sample(keys["perturb"], n), 0.0)
    if self.beyond_gradient:
      # Keys of their own: the fields above are drawn as in a family of networks alone.
      rule_keys = dict(zip(RULE_FIELDS, jax.random.split(jax.random.fold_in(key, 1),
                                                         len(RULE_FIELDS))))
      codes = jnp.asarray([rules.RULES.index(r) for r in self.rules], jnp.int32)
      hp["rule"] = codes[jax.random.randint(rule_keys["rule"], (n,), 0, len(self.rules))]
      hp["neighbours"] = jax.random.randint(
          rule_keys["neighbours"], (n,), 1, self.max_neighbours + 1).astype(jnp.int32)
      for field in RULE_CONTINUOUS:
        hp[field] = self.prior(field).sample(rule_keys[field], n)
    for field, value in fixed.items():
      if field not in self.fields:
        raise ValueError(f"family {self.name!r} has no hyperparam {field!r}; its fields: "
                         f"{list(self.fields)}.")
      if field not in DISCRETE:
        hp[field] = jnp.full((n,), value, jnp.float32)
      elif field in RULE_FIELDS:
        hp[field] = jnp.full((n,), value, jnp.int32)
    return {f: hp[f] for f in self.fields}

  # ------------------------------------------------------------------- unconstrained

  def _interval(self, field, optimizer_code):
    """(low, high, scale) of a continuous field's support; scale 'log', 'linear' or
    'fixed'. A component that may be off maps onto [0, high] linearly."""
    if field == "learning_rate":
      lows, highs = (jnp.asarray([self.learning_rate_range(o)[i]
                                  for o in optimizers.OPTIMIZERS]) for i in (0, 1))
      return lows[optimizer_code], highs[optimizer_code], "log"
    prior = self.prior(field)
    if prior.kind == "fixed":
      return prior.low, prior.low, "fixed"
    if prior.p_off:
      return 0.0, prior.high, "linear"
    return prior.low, prior.high, "log" if prior.kind == "log_uniform" else "linear"

  def log_scale_fields(self) -> tuple:
    """Continuous fields whose support is log-scaled (recovery errors are log-ratios)."""
    return tuple(f for f in CONTINUOUS if self._interval(f, 0)[2] == "log")

  def from_unconstrained(self, u, discrete):
    """Hyperparams from unconstrained reals u {field: [...]} (continuous fields) and the
    discrete codes {field: [...]}: each field lands inside the family's support."""
    hp = dict(discrete)
    for field in self.continuous:
      low, high, scale = self._interval(field, discrete["optimizer"])
      s = jax.nn.sigmoid(u[field])
      if scale == "fixed":
        hp[field] = jnp.full_like(s, low)
      elif scale == "log":
        hp[field] = jnp.exp(jnp.log(low) + s * (jnp.log(high) - jnp.log(low)))
      else:
        hp[field] = low + s * (high - low)
    return {f: hp[f] for f in self.fields}

  def to_unconstrained(self, hparams):
    """Inverse of `from_unconstrained` for the continuous fields (clipped inside)."""
    u = {}
    for field in self.continuous:
      low, high, scale = self._interval(field, hparams["optimizer"])
      v = jnp.asarray(hparams[field], jnp.float32)
      if scale == "fixed":
        frac = jnp.full_like(v, 0.5)
      elif scale == "log":
        frac = (jnp.log(v) - jnp.log(low)) / (jnp.log(high) - jnp.log(low))
      else:
        frac = (v - low) / (high - low)
      frac = jnp.clip(frac, 1e-6, 1 - 1e-6)
      u[field] = jnp.log(frac) - jnp.log1p(-frac)
    return u

  def member(self, hparams, i: int) -> dict[str, jax.Array]:
    return {f: v[i] for f, v in hparams.items()}

  # ------------------------------------------------------------------- checks

  def validate(self, hparams: Mapping[str, Any]) -> None:
    """Raises ValueError naming the field, the value and what the family allows."""
    missing = [f for f in self.fields if f not in hparams]
    extra = [f for f in hparams if f not in self.fields]
    if missing or extra:
      raise ValueError(f"hyperparams of family {self.name!r} must have exactly the fields "
                       f"{list(self.fields)}; missing {missing}, unknown {extra}.")
    values = {f: np.asarray(hparams[f]).reshape(-1) for f in self.fields}
    sizes = {v.size for v in values.values()}
    if len(sizes) != 1:
      raise ValueError(f"hyperparam fields have different sizes {sorted(sizes)}.")
    for i in range(sizes.pop()):
      self._validate_member({f: v[i] for f, v in values.items()})

  def _validate_member(self, hp):
    where = f"family {self.name!r}"
    coded = ("network", "activation", "optimizer") + (("rule",) if self.beyond_gradient
                                                      else ())
    for field in coded:
      names, support = CODE_TABLES[field], getattr(self, field + "s")
      code = hp[field]
      if code != int(code) or not 0 <= int(code) < len(names):
        raise ValueError(f"hyperparam {field}={code.item()!r} is not a valid code; "
                         f"codes are 0..{len(names) - 1} for {list(names)}.")
      if names[int(code)] not in support:
        raise ValueError(f"hyperparam {field}={names[int(code)]!r} is outside {where}: "
                         f"allowed {list(support)} (widen it with "
                         f"--config.family.{field}s or pick another family.name).")
    steps = hp["inner_steps"]
    if steps != int(steps) or not 1 <= steps <= self.max_inner_steps:
      raise ValueError(f"hyperparam inner_steps={steps.item()!r} is outside {where}: allowed "
                       f"integers 1..{self.max_inner_steps}.")
    if self.beyond_gradient:
      k = hp["neighbours"]
      if k != int(k) or not 1 <= k <= self.max_neighbours:
        raise ValueError(f"hyperparam neighbours={k.item()!r} is outside {where}: allowed "
                         f"integers 1..{self.max_neighbours}.")
    opt = optimizers.OPTIMIZERS[int(hp["optimizer"])]
    low, high = self.learning_rate_range(opt)
    lr = float(hp["learning_rate"])
    if not (math.isfinite(lr) and low * (1 - 1e-6) <= lr <= high * (1 + 1e-6)):
      raise ValueError(f"hyperparam learning_rate={lr!r} is outside {where}: "
                       f"for optimizer {opt!r} allowed [{low:g}, {high:g}].")
    for field in self.continuous:
      if field == "learning_rate":
        continue
      value, prior = float(hp[field]), self.prior(field)
      if not (math.isfinite(value) and prior.allows(value)):
        raise ValueError(f"hyperparam {field}={value!r} is outside {where}: "
                         f"allowed {prior.text()}.")

  def codes(self, overrides: Mapping[str, Any]) -> dict:
    """{field: value} with choice names turned into codes; unknown names are errors."""
    out = {}
    for field, value in overrides.items():
      if field not in self.fields:
        raise ValueError(f"unknown hyperparam {field!r} for family {self.name!r}; fields "
                         f"are {list(self.fields)}.")
      if field in CODE_TABLES and isinstance(value, str):
        names = CODE_TABLES[field]
        if value not in names:
          raise ValueError(f"unknown {field} {value!r}; allowed: {list(names)} "
                           f"(family {self.name!r} supports {list(getattr(self, field + 's'))}).")
        value = names.index(value)
      out[field] = value
    return out

  def with_overrides(self, hparams, overrides: Mapping[str, Any]):
    """Sets fields of every member from {field: value} (names accepted for choices) and
    validates the result."""
    out = dict(hparams)
    for field, value in self.codes(overrides).items():
      dtype = jnp.int32 if field in DISCRETE else jnp.float32
      out[field] = jnp.full_like(out[field], value, dtype=dtype)
    self.validate(out)
    return out

  def describe(self, hparams) -> str:
    """One member's hyperparams as readable text."""
    hp = {f: np.asarray(v).item() for f, v in hparams.items()}
    head = (f"softmax(T={hp['temperature']:.3g})" if self.task == "classification"
            else "regression head")
    rule = rules.RULES[int(hp["rule"])] if self.beyond_gradient else "gradient"
    if rule != "gradient":
      return " | ".join([_describe_rule(self, rule, hp), head])
    net = networks.NETWORKS[int(hp["network"])]
    act = networks.ACTIVATIONS[int(hp["activation"])]
    opt = optimizers.OPTIMIZERS[int(hp["optimizer"])]
    parts = [f"{net}(in={self.in_dim}, out={self.out_dim})" if net == "linear" else
             f"mlp(width={self.width}, depth={self.depth}, {act})"]
    opt_args = [f"lr={hp['learning_rate']:.3g}"]
    if opt in ("momentum", "adam"):
      opt_args.append(f"{'momentum' if opt == 'momentum' else 'b1'}={hp['momentum']:.3g}")
    if opt in ("adam", "rmsprop"):
      opt_args.append(f"{'b2' if opt == 'adam' else 'decay'}={hp['beta2']:.4g}")
    parts.append(f"{opt}({', '.join(opt_args)})")
    if hp["weight_decay"]:
      parts.append(f"weight_decay={hp['weight_decay']:.3g}")
    anchor = ("initial weights" if hp["anchor_rate"] == 0 else
              f"EMA anchor rate {hp['anchor_rate']:.3g}")
    if hp["l2_strength"]:
      parts.append(f"l2-to-anchor(strength={hp['l2_strength']:.3g}, {anchor})")
    if hp["ewc_strength"]:
      parts.append(f"online-ewc(strength={hp['ewc_strength']:.3g}, "
                   f"decay={hp['ewc_decay']:.4g}, {anchor})")
    if hp["replay_ratio"]:
      parts.append(f"replay(ratio={hp['replay_ratio']:.3g}, size={self.replay_size})")
    if hp["shrink"] or hp["perturb"]:
      parts.append(f"shrink-perturb(shrink={hp['shrink']:.3g}, perturb={hp['perturb']:.3g})")
    parts.append(f"{int(hp['inner_steps'])} inner step(s)")
    parts.append(head)
    parts.append(f"init_scale={hp['init_scale']:.3g}")
    return " | ".join(parts)


def _describe_rule(family: Family, rule: str, hp) -> str:
  if rule == "kalman":
    return (f"kalman(in={family.in_dim}, prior std={hp['init_scale']:.3g}, "
            f"drift={hp['kalman_drift']:.3g}, noise={hp['kalman_noise']:.3g})")
  if rule == "knn":
    return f"knn(neighbours={int(hp['neighbours'])}, window={family.window})"
  if rule == "passive_aggressive":
    return (f"passive_aggressive(C={hp['pa_aggressiveness']:.3g}, "
            f"epsilon={hp['pa_epsilon']:.3g})")
  return (f"prototype(centers={family.prototypes}, rate={hp['prototype_rate']:.3g}, "
          f"value_rate={hp['value_rate']:.3g})")


def _choices(family, field, values, allowed, empty_ok=False):
  if not values and not empty_ok:
    raise ValueError(f"family {family!r}: {field} must name at least one of {list(allowed)}.")
  for v in values:
    if v not in allowed:
      raise ValueError(f"family {family!r}: unknown {field[:-1] if field.endswith('s') else field}"
                       f" {v!r}; allowed: {list(allowed)}.")


# Named presets; a config picks one by `family.name` and may override any field.
FAMILIES: dict[str, dict[str, Any]] = {
    # Online linear learners start near zero, as LMS does.
    "sgd_linear": dict(networks=("linear",), optimizers=("sgd",),
                       priors=(("init_scale", Prior("uniform", 0.0, 0.1)),)),
    "optimizers_linear": dict(networks=("linear",), optimizers=optimizers.OPTIMIZERS,
                              priors=(("init_scale", Prior("uniform", 0.0, 0.1)),)),
    "sgd_mlp": dict(networks=("mlp",), activations=("tanh",), optimizers=("sgd",)),
    "adam_mlp": dict(networks=("mlp",), activations=("tanh", "relu"), optimizers=("adam",)),
    "optimizers_mlp": dict(networks=("mlp",), activations=("tanh",),
                           optimizers=optimizers.OPTIMIZERS),
    "continual_mlp": dict(networks=("mlp",), activations=("tanh",), optimizers=("sgd",),
                          regularizers=REGULARIZERS),
    # The main job's: two networks x two optimizers x one regularizer, random init.
    "small_mixed": dict(networks=networks.NETWORKS, activations=("tanh",),
                        optimizers=("sgd", "adam"), regularizers=("l2",)),
    "mixed": dict(networks=networks.NETWORKS, activations=("relu", "tanh", "gelu"),
                  optimizers=optimizers.OPTIMIZERS, regularizers=REGULARIZERS,
                  max_inner_steps=2),
    # The main job's networks beside a Kalman learner, a memory, passive-aggressive and
    # competitive learning, each a fifth of the teachers (learners.rules).
    "beyond_gradient": dict(networks=networks.NETWORKS, activations=("tanh",),
                            optimizers=("sgd", "adam"), regularizers=("l2",),
                            rules=rules.RULES),
}


def _names(value) -> tuple:
  if isinstance(value, str):
    return tuple(v.strip() for v in value.split(",") if v.strip())
  return tuple(value)


def _parse_priors(text: str) -> dict:
  """'init_scale=uniform(0, 0.1); momentum=fixed(0.9)' -> {field: Prior}."""
  out = {}
  for part in filter(None, (p.strip() for p in text.split(";"))):
    field, sep, prior = part.partition("=")
    if not sep:
      raise ValueError(f"family.priors part {part!r} must be FIELD=PRIOR, e.g. "
                       "'init_scale=uniform(0, 0.1)'.")
    out[field.strip()] = Prior.parse(prior)
  return out


def from_config(config, task: str, x_shape: tuple, out_dim: int) -> Family:
  """A Family from `config.family` ({'name': preset, any Family field: override}).

  Tuple fields accept comma-separated strings, e.g. `--config.family.optimizers=sgd,adam`;
  `priors` takes 'FIELD=PRIOR; ...', e.g. 'init_scale=uniform(0, 0.1)'.
  """
  values = dict(config.items()) if hasattr(config, "items") else dict(config)
  name = values.pop("name")
  if name not in FAMILIES:
    raise ValueError(f"family.name={name!r} is not a family; allowed: {sorted(FAMILIES)}.")
  allowed = {f.name for f in dataclasses.fields(Family)} - {"name", "task", "x_shape",
                                                            "out_dim"}
  unknown = sorted(k for k in values if k not in allowed)
  if unknown:
    raise ValueError(f"unknown family config field(s) {unknown}; allowed: {sorted(allowed)}.")
  fields = dict(FAMILIES[name])
  priors = dict(fields.pop("priors", ()))
  priors.update(_parse_priors(values.pop("priors", None) or ""))
  fields.update({k: v for k, v in values.items() if v is not None})
  for k in ("networks", "activations", "optimizers", "regularizers", "rules"):
    if k in fields:
      fields[k] = _names(fields[k])
  fields["priors"] = tuple(sorted(priors.items()))
  return Family(name=name, task=task, x_shape=tuple(x_shape), out_dim=out_dim, **fields)
