"""Functional networks of the teacher family: linear maps and MLPs as pytrees of arrays.

Layers use the NTK parametrization, h = W x / sqrt(fan_in) + b with W ~ N(0, scale^2):
the step size that keeps an online learner stable is then the same for every input
dimension and width, so one learning-rate prior serves every stream and network size.
"""

import jax
import jax.numpy as jnp

from learners import dispatch

ACTIVATIONS = ("relu", "tanh", "gelu", "softplus")
NETWORKS = ("linear", "mlp")

_ACTIVATION_FNS = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "softplus": jax.nn.softplus,
}


def init_mlp(key, in_dim: int, out_dim: int, width: int, depth: int, scale=1.0):
  """Params {'dense_i': {'w': [fan_in, fan_out], 'b': [fan_out]}}; depth=0 is linear."""
  sizes = [in_dim] + [width] * depth + [out_dim]
  keys = jax.random.split(key, len(sizes) - 1)
  return {
      f"dense_{i}": {
          "w": scale * jax.random.normal(k, (fan_in, fan_out)),
          "b": jnp.zeros((fan_out,)),
      }
      for i, (k, fan_in, fan_out) in enumerate(zip(keys, sizes[:-1], sizes[1:]))
  }


def zero_readout(params):
  """The same params with the last layer zeroed: outputs start at 0, the prior mean of
  a teacher's outputs, while hidden layers keep their random features."""
  last = f"dense_{len(params) - 1}"
  return {**params, last: jax.tree.map(jnp.zeros_like, params[last])}


def apply_mlp(params, x, activation, support=ACTIVATIONS):
  """x [B, ...] -> outputs [B, out]; `activation` is a code into ACTIVATIONS."""
  h = x.reshape(x.shape[0], -1)
  n = len(params)
  for i in range(n):
    layer = params[f"dense_{i}"]
    h = h @ layer["w"] / jnp.sqrt(layer["w"].shape[0]).astype(h.dtype) + layer["b"]
    if i < n - 1:
      h = dispatch.switch(activation, ACTIVATIONS, support, _ACTIVATION_FNS, h)
  return h


def init(key, in_dim: int, out_dim: int, width: int, depth: int, support, scale=1.0):
  """Superset params {'linear': ..., 'mlp': ...} holding each network kind in `support`."""
  k_lin, k_mlp = jax.random.split(key)
  params = {}
  if "linear" in support:
    params["linear"] = init_mlp(k_lin, in_dim, out_dim, 0, 0, scale)
  if "mlp" in support:
    params["mlp"] = init_mlp(k_mlp, in_dim, out_dim, width, depth, scale)
  return params


def apply(params, x, network, activation, support, activation_support=ACTIVATIONS):
  """Outputs [B, out] of the network kind coded by `network` (a code into NETWORKS)."""
  branches = {
      "linear": lambda p, x: apply_mlp(p["linear"], x, activation, activation_support),
      "mlp": lambda p, x: apply_mlp(p["mlp"], x, activation, activation_support),
  }
  return dispatch.switch(network, NETWORKS, support, branches, params, x)
