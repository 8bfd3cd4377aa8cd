"""Integer-coded discrete choices, dispatched with `lax.switch` over a static support.

A hyperparam such as `optimizer` holds a global code (its index in a tuple of names such
as `optimizers.OPTIMIZERS`). A family supports a subset of names; only those branches
are traced, and a family with one choice pays no switch at all. Under `vmap` with
per-member codes, `lax.switch` runs the supported branches and selects, so a mixed
population rolls out in one call.
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp


def switch(code: jax.Array, names: Sequence[str], support: Sequence[str],
           branches: dict[str, Callable], *operands):
  """Calls `branches[names[code]](*operands)`; `code` must name a member of `support`."""
  if len(support) == 1:
    return branches[support[0]](*operands)
  position = jnp.asarray([support.index(n) if n in support else 0 for n in names])
  return jax.lax.switch(position[code], [branches[n] for n in support], *operands)
