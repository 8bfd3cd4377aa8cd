"""The `in_context` imitator: a sequence model over the stream tokens (x_t, y_t, a_t).

Each step t contributes B observation tokens e = [x, y, a, s, 1] (after it is observed)
and B query tokens q = [x, 0, 0, 0, 0] (to predict a_t). s is 1 when a is the teacher's
behaviour and 0 on an unseen step, where a is the imitator's own prediction fed back
(autoregressive generation; `seen_flag=False`, as in runs that predate it, drops s). Every token at step t attends only to
observation tokens of earlier steps, so predicting a_t never sees (y_t, a_t); the
prediction is read from the query token. Three architectures:

- `transformer`: softmax attention with a learned sink, ALiBi recency biases and a
  sliding window of `context` steps; the streaming state is a per-layer key/value cache
  of the last `context` steps, so long horizons need bounded memory.
- `linear_transformer`: linear self-attention (von Oswald et al., 2023) with a learned
  per-head decay; its state is the fixed-size sum of decayed k v^T per layer.
- `recurrent`: a fixed-size state: a delta-rule fast-weight memory S (per head) written
  twice per step, with the teacher's behaviour and with the label, at write strengths
  a GRU controller sets from what it has seen.

`unroll` runs a block of seen steps in one parallel pass (transformers) and equals
stepwise predict/observe (tests check both agree); with unseen steps it runs stepwise,
each step's own prediction becoming its token's behaviour.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from imitator.kinds.base import Imitator, all_seen, seen_or_own

ARCHS = ("transformer", "linear_transformer", "recurrent")
_NO_STEP = -(2**30)  # step index of an empty cache slot


def alibi_slopes(n_heads: int):
  """Geometric per-head recency slopes (Press et al., 2022)."""
  return jnp.asarray([2.0 ** (-8.0 * (h + 1) / n_heads) for h in range(n_heads)])


class _HeadProjections(nnx.Module):
  """Per-head query, key, value and output maps: W_q, W_k, W_v [D, H, dh], W_o [H, dh, D]."""

  def __init__(self, d: int, heads: int, dh: int, rngs: nnx.Rngs):
    init = nnx.initializers.normal(1.0 / math.sqrt(d))
    self.wq = nnx.Param(init(rngs.params(), (d, heads, dh)))
    self.wk = nnx.Param(init(rngs.params(), (d, heads, dh)))
    self.wv = nnx.Param(init(rngs.params(), (d, heads, dh)))
    self.wo = nnx.Param(init(rngs.params(), (heads, dh, d)))

  def queries(self, h):
    """h [N, D] -> q [N, H, dh]."""
    return jnp.einsum("nd,dhk->nhk", h, self.wq[...])

  def keys_values(self, h):
    """h [..., D] -> k, v [..., H, dh]."""
    return (jnp.einsum("...d,dhk->...hk", h, self.wk[...]),
            jnp.einsum("...d,dhk->...hk", h, self.wv[...]))


class SoftmaxAttention(_HeadProjections):
  """Multi-head softmax attention to earlier steps' keys, with a learned sink and ALiBi."""

  def __init__(self, d: int, heads: int, rngs: nnx.Rngs):
    super().__init__(d, heads, d // heads, rngs)
    self.sink_k = nnx.Param(jnp.zeros((heads, d // heads)))
    self.sink_v = nnx.Param(jnp.zeros((heads, d // heads)))

  def __call__(self, h, steps, k, v, key_steps, context: int):
    """h [N, D] at `steps` [N] attends to k, v [M, H, dh] at `key_steps` [M] with
    step - context <= key_step < step; returns [N, D]."""
    q = self.queries(h)
    dh = q.shape[-1]
    dist = steps[:, None] - key_steps[None, :]
    allowed = (dist >= 1) & (dist <= context)
    slopes = alibi_slopes(q.shape[1])
    scores = jnp.einsum("nhk,mhk->hnm", q, k) / math.sqrt(dh)
    scores = scores - slopes[:, None, None] * dist[None].astype(scores.dtype)
    scores = jnp.where(allowed[None], scores, -jnp.inf)
    sink = jnp.einsum("nhk,hk->hn", q, self.sink_k[...]) / math.sqrt(dh)
    top = jnp.maximum(scores.max(-1), sink)
    w = jnp.exp(scores - top[..., None])
    w_sink = jnp.exp(sink - top)
    norm = w.sum(-1) + w_sink
    out = (jnp.einsum("hnm,mhk->nhk", w, v)
           + jnp.einsum("hn,hk->nhk", w_sink, self.sink_v[...])) / norm.T[..., None]
    return jnp.einsum("nhk,hkd->nd", out, self.wo[...])


class LinearSelfAttention(_HeadProjections):
  """out(t) = W_o sum_{s < t} gamma^(t-1-s) (W_q h_t . W_k h_s) W_v h_s, per head.

  With gamma = 1 and the weights of von Oswald et al. (2023) this is one gradient
  step of in-context linear regression (tests/test_imitators.py).
  """

  def __init__(self, d: int, heads: int, rngs: nnx.Rngs, dh: int | None = None):
    super().__init__(d, heads, dh or d // heads, rngs)
    self.decay_logit = nnx.Param(jnp.full((heads,), 4.0))  # gamma ~ 0.98 at init

  def gamma(self):
    return jax.nn.sigmoid(self.decay_logit[...])

  def __call__(self, h, steps, k, v, key_steps, memory, memory_step):
    """h [N, D] at steps [N]; in-window keys k, v [M, H, dh] at key_steps [M]; memory
    [H, dh, dh] = sum of decayed k v^T over steps <= memory_step. Returns [N, D]."""
    q = self.queries(h)
    gamma = self.gamma()
    dist = (steps[:, None] - key_steps[None, :]).astype(jnp.float32)
    allowed = dist >= 1
    decay = jnp.where(allowed[None], gamma[:, None, None] ** jnp.maximum(dist - 1, 0.0)[None],
                      0.0)
    local = jnp.einsum("hnm,nhk,mhk,mhv->nhv", decay, q, k, v)
    age = (steps - memory_step - 1).astype(jnp.float32)
    past = jnp.einsum("hn,nhk,hkv->nhv", gamma[:, None] ** age[None], q, memory)
    return jnp.einsum("nhv,hvd->nd", local + past, self.wo[...])

  def fold(self, memory, memory_step, k, v, key_steps, new_step):
    """Memory through step `new_step` after adding keys k, v [M, H, dh] at key_steps."""
    gamma = self.gamma()
    age = (new_step - key_steps).astype(jnp.float32)
    added = jnp.einsum("hm,mhk,mhv->hkv", gamma[:, None] ** age[None], k, v)
    return gamma[:, None, None] ** (new_step - memory_step) * memory + added


class Block(nnx.Module):
  def __init__(self, d, heads, mlp_ratio, linear, rngs):
    self.ln1 = nnx.LayerNorm(d, rngs=rngs)
    self.ln2 = nnx.LayerNorm(d, rngs=rngs)
    self.attn = (LinearSelfAttention(d, heads, rngs) if linear
                 else SoftmaxAttention(d, heads, rngs))
    self.mlp_in = nnx.Linear(d, mlp_ratio * d, rngs=rngs)
    self.mlp_out = nnx.Linear(mlp_ratio * d, d, rngs=rngs)

  def mlp(self, h):
    return h + self.mlp_out(jax.nn.gelu(self.mlp_in(self.ln2(h))))


class SequenceModel(nnx.Module):
  def __init__(self, features, out_dim, d, heads, layers, mlp_ratio, linear, rngs):
    self.embed = nnx.Linear(features, d, rngs=rngs)
    self.blocks = nnx.List([Block(d, heads, mlp_ratio, linear, rngs) for _ in range(layers)])
    self.ln = nnx.LayerNorm(d, rngs=rngs)
    self.readout = nnx.Linear(d, out_dim, rngs=rngs)


class DeltaMemory(nnx.Module):
  """Recurrent imitator core: fast weights S [H, dv, dk] and a GRU controller."""

  def __init__(self, x_dim, out_dim, heads, dk, dv, hidden, rngs, flag: int = 0):
    self.key_lin = nnx.Linear(x_dim, heads * dk // 2, rngs=rngs)
    self.key_tanh = nnx.Linear(x_dim, heads * dk - heads * dk // 2, rngs=rngs)
    self.val_a = nnx.Linear(out_dim, heads * dv, rngs=rngs)
    self.val_y = nnx.Linear(out_dim, heads * dv, rngs=rngs)
    self.gru = nnx.GRUCell(x_dim + 3 * out_dim + 1 + flag, hidden, rngs=rngs)
    self.beta = nnx.Linear(hidden, 2 * heads, rngs=rngs)
    self.readout = nnx.Linear(heads * dv + hidden, out_dim, rngs=rngs)
    self.read_mem = nnx.Linear(heads * dv, out_dim, rngs=rngs)
    self.heads, self.dk, self.dv = heads, dk, dv

  def keys(self, x):
    """x [n, dx] (NTK-scaled) -> unit-norm keys [n, H, dk]. Unit keys keep the delta
    rule a contraction for any write strength in (0, 1), whatever the input scale."""
    k = jnp.concatenate([self.key_lin(x), jnp.tanh(self.key_tanh(x))], -1)
    k = k.reshape(x.shape[0], self.heads, self.dk)
    return k * jax.lax.rsqrt(jnp.sum(k * k, -1, keepdims=True) + 1e-12)


@dataclasses.dataclass(frozen=True, eq=False)
class InContextImitator(Imitator):
  arch: str = "transformer"
  d_model: int = 64
  n_heads: int = 4
  n_layers: int = 2
  mlp_ratio: int = 2
  context: int = 128  # steps of attention window (transformer)
  batch: int = 1  # examples per stream step: sizes the transformer's key/value cache
  d_key: int = 32  # recurrent
  d_value: int = 16
  hidden: int = 64
  seen_flag: bool = True  # tokens say whether a was the teacher's (see the docstring)

  def __post_init__(self):
    if self.arch not in ARCHS:
      raise ValueError(f"imitator.in_context.arch={self.arch!r}; allowed: {list(ARCHS)}.")
    if self.arch != "recurrent" and self.d_model % self.n_heads:
      raise ValueError(f"imitator.in_context.d_model={self.d_model} must be divisible by "
                       f"n_heads={self.n_heads}.")
    # Abstract: only the graphdef is kept, so no weights are drawn.
    object.__setattr__(self, "_graph",
                       nnx.graphdef(nnx.eval_shape(lambda: self._module(nnx.Rngs(0)))))

  def _module(self, rngs):
    flag = int(self.seen_flag)
    if self.arch == "recurrent":
      return DeltaMemory(self.in_dim, self.out_dim, self.n_heads, self.d_key,
                         self.d_value, self.hidden, rngs, flag)
    return SequenceModel(self.in_dim + 2 * self.out_dim + 1 + flag, self.out_dim,
                         self.d_model, self.n_heads, self.n_layers, self.mlp_ratio,
                         self.arch == "linear_transformer", rngs)

  def init_meta(self, key):
    return nnx.to_pure_dict(nnx.split(self._module(nnx.Rngs(key)))[1])

  def _net(self, meta):
    return nnx.merge(self._graph, meta)

  def _flat(self, x):
    return x.reshape(x.shape[0], -1) / math.sqrt(self.in_dim)

  def _flag(self, seen, n):
    """The seen feature [n, 1] (or [n, 0] without `seen_flag`) of seen [] or [n]."""
    s = jnp.broadcast_to(jnp.asarray(seen, jnp.float32).reshape(-1), (n,))[:, None]
    return s if self.seen_flag else s[:, :0]

  def _tokens(self, x, y=None, a=None, seen=True):
    """Token features [n, dx + 2 out + 2] (+1 without the flag): observations, or
    queries when y is None."""
    xf = self._flat(x)
    n = x.shape[0]
    if y is None:
      rest = jnp.zeros((n, 2 * self.out_dim + 1 + int(self.seen_flag)), xf.dtype)
    else:
      rest = jnp.concatenate([self.target_features(y), a, self._flag(seen, n),
                              jnp.ones((n, 1))], -1)
    return jnp.concatenate([xf, rest], -1)

  # ----------------------------------------------------------------- state

  def init(self, meta, key):
    t = jnp.zeros((), jnp.int32)
    if self.arch == "recurrent":
      return {"S": jnp.zeros((self.n_heads, self.d_value, self.d_key)),
              "h": jnp.zeros((self.hidden,)), "t": t}
    dh = self.d_model // self.n_heads
    if self.arch == "linear_transformer":
      return {"memory": jnp.zeros((self.n_layers, self.n_heads, dh, dh)), "t": t}
    n = self.context * self.batch
    shape = (self.n_layers, n, self.n_heads, dh)
    return {"k": jnp.zeros(shape), "v": jnp.zeros(shape),
            "steps": jnp.full((n,), _NO_STEP, jnp.int32), "t": t}

  # ----------------------------------------------------------------- transformers

  def _layers(self, net, state, h_e, e_steps, h_q, q_steps, fresh=False):
    """Runs all blocks. h_e [M, D] are observation tokens at e_steps [M] (may be empty),
    h_q [N, D] queries; `fresh`: the cache is empty and is skipped. Returns (h_q,
    per-layer (k, v) of the observation tokens)."""
    linear = self.arch == "linear_transformer"
    new_kv = []
    for l, block in enumerate(net.blocks):
      xe, xq = block.ln1(h_e), block.ln1(h_q)
      k_new, v_new = block.attn.keys_values(xe)
      new_kv.append((k_new, v_new))
      both = jnp.concatenate([xe, xq], 0)
      steps = jnp.concatenate([e_steps, q_steps], 0)
      if linear:
        out = block.attn(both, steps, k_new, v_new, e_steps, state["memory"][l],
                         state["t"] - 1)
      elif fresh:
        out = block.attn(both, steps, k_new, v_new, e_steps, self.context)
      else:
        k = jnp.concatenate([state["k"][l], k_new], 0)
        v = jnp.concatenate([state["v"][l], v_new], 0)
        ks = jnp.concatenate([state["steps"], e_steps], 0)
        out = block.attn(both, steps, k, v, ks, self.context)
      m = h_e.shape[0]
      h_e = block.mlp(h_e + out[:m])
      h_q = block.mlp(h_q + out[m:])
    return h_q, new_kv

  def _advance(self, net, state, new_kv, e_steps, last_step):
    """State after observing tokens whose per-layer keys are new_kv."""
    if self.arch == "linear_transformer":
      memory = jnp.stack([
          block.attn.fold(state["memory"][l], state["t"] - 1, k, v, e_steps, last_step)
          for l, (block, (k, v)) in enumerate(zip(net.blocks, new_kv))])
      return {"memory": memory, "t": last_step + 1}
    n = state["steps"].shape[0]
    k = jnp.stack([jnp.concatenate([state["k"][l], kv[0]], 0)[-n:]
                   for l, kv in enumerate(new_kv)])
    v = jnp.stack([jnp.concatenate([state["v"][l], kv[1]], 0)[-n:]
                   for l, kv in enumerate(new_kv)])
    steps = jnp.concatenate([state["steps"], e_steps], 0)[-n:]
    return dict(state, k=k, v=v, steps=steps, t=last_step + 1)

  def _parallel_pass(self, meta, state, xs, ys, as_, fresh=False):
    """Parallel pass over L steps: (state after them, a_hat [L, B, out])."""
    net = self._net(meta)
    L, B = xs.shape[:2]
    flat = lambda a: a.reshape((L * B,) + a.shape[2:])
    steps = state["t"] + jnp.repeat(jnp.arange(L, dtype=jnp.int32), B)
    h_e = net.embed(self._tokens(flat(xs), flat(ys), flat(as_)))
    h_q = net.embed(self._tokens(flat(xs)))
    h_q, new_kv = self._layers(net, state, h_e, steps, h_q, steps, fresh)
    out = net.readout(net.ln(h_q))
    new_state = self._advance(net, state, new_kv, steps, state["t"] + L - 1)
    return new_state, self.behaviour(out).reshape(L, B, self.out_dim)

  # ----------------------------------------------------------------- recurrent

  def _read(self, net, state, x):
    k = net.keys(self._flat(x))
    mem = jnp.einsum("hvk,nhk->nhv", state["S"], k).reshape(x.shape[0], -1)
    return mem, k

  def _recurrent_predict(self, meta, state, x):
    net = self._net(meta)
    mem, _ = self._read(net, state, x)
    ctx = jnp.broadcast_to(state["h"], (x.shape[0], self.hidden))
    return self.behaviour(net.readout(jnp.concatenate([mem, ctx], -1)))

  def _recurrent_observe(self, meta, state, x, y, a, seen):
    net = self._net(meta)
    mem, k = self._read(net, state, x)
    guess = self.behaviour(net.read_mem(mem))
    yf = self.target_features(y)
    xf = self._flat(x)
    feats = jnp.concatenate([xf, yf, a, a - guess,
                             jnp.log1p(jnp.sum(xf * xf, -1))[:, None],
                             self._flag(seen, x.shape[0])], -1).mean(0)
    h, _ = net.gru(state["h"], feats)
    beta = jax.nn.sigmoid(net.beta(h)).reshape(2, self.n_heads)
    S = state["S"]
    n = x.shape[0]
    for write, values in ((0, net.val_a(a)), (1, net.val_y(yf))):
      v = values.reshape(n, self.n_heads, self.d_value)
      err = v - jnp.einsum("hvk,nhk->nhv", S, k)
      S = S + beta[write][:, None, None] * jnp.einsum("nhv,nhk->hvk", err, k) / n
    return {"S": S, "h": h, "t": state["t"] + 1}

  # ----------------------------------------------------------------- protocol

  def predict(self, meta, state, x):
    if self.arch == "recurrent":
      return self._recurrent_predict(meta, state, x)
    net = self._net(meta)
    n = x.shape[0]
    h_q = net.embed(self._tokens(x))
    empty = jnp.zeros((0, h_q.shape[-1]))
    q_steps = jnp.full((n,), state["t"], jnp.int32)
    h_q, _ = self._layers(net, state, empty, jnp.zeros((0,), jnp.int32), h_q, q_steps)
    return self.behaviour(net.readout(net.ln(h_q)))

  def _observe_tokens(self, meta, state, x, y, a, seen):
    """State after one step's observation tokens (a: the teacher's or the own behaviour)."""
    if self.arch == "recurrent":
      return self._recurrent_observe(meta, state, x, y, a, seen)
    net = self._net(meta)
    steps = jnp.full((x.shape[0],), state["t"], jnp.int32)
    h_e = net.embed(self._tokens(x, y, a, seen))
    empty = jnp.zeros((0, h_e.shape[-1]))
    _, new_kv = self._layers(net, state, h_e, steps, empty, jnp.zeros((0,), jnp.int32))
    return self._advance(net, state, new_kv, steps, state["t"])

  def observe(self, meta, state, x, y, a, seen=True):
    a = seen_or_own(seen, a, self.predict(meta, state, x))
    return self._observe_tokens(meta, state, x, y, a, seen)

  def unroll(self, meta, state, xs, ys, as_, fresh: bool = False, seen=None):
    if self.arch == "recurrent" or seen is not None:
      # Stepwise: an unseen step's token needs the prediction made at that step.
      def step(state, inputs):
        x, y, a, s = inputs
        a_hat = self.predict(meta, state, x)
        return self._observe_tokens(meta, state, x, y, seen_or_own(s, a, a_hat), s), a_hat

      if self.remat:
        step = jax.checkpoint(step)
      return jax.lax.scan(step, state, (xs, ys, as_, all_seen(xs) if seen is None else seen))
    fn = functools.partial(self._parallel_pass, fresh=fresh)
    if self.remat:
      fn = jax.checkpoint(fn)
    return fn(meta, state, xs, ys, as_)
