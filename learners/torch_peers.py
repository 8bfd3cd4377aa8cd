"""PyTorch peers of the teacher rollout (`learners.rollout`), for `launch/benchmark.py`.

The learners compared are SGD teachers of the family `sgd_mlp`: an MLP with one hidden
layer of width W, tanh, NTK parametrization (h = W x / sqrt(fan_in) + b), one regression
output, loss 0.5 * (f(x) - y)^2 averaged over the B examples of a step, plain SGD (no
momentum, weight decay 0), each teacher with its own learning rate and initial weights.
At step t a teacher first outputs f(x_t) (its behaviour), then takes one SGD step on
(x_t, y_t).

Two peers of `learners.rollout.population_rollout` (one `lax.scan` over time, `vmap`
over teachers, jitted):

- `torch_loop`: what a PyTorch user writes first: one `nn.Module` and one
  `torch.optim.SGD` per teacher, a Python loop over teachers and, inside, over steps,
  autograd (`loss.backward()`, `opt.step()`, `opt.zero_grad()`). Slow, so it can stop
  after a time budget and extrapolate its rate.
- `torch_batched`: the strong peer: every teacher's weights in batched tensors [P, ...],
  `torch.bmm`/`baddbmm`, a Python loop over steps only. The default backward is written
  by hand (fused into the in-place SGD updates under `torch.no_grad()`);
  `backward="autograd"` runs autograd on the same batched graph instead. The hand-written
  one is the faster on CPU (`python -m launch.benchmark` measures both), so it is the
  default.

Both use float32 and by default leave `torch.set_num_threads` at PyTorch's default (one
intra-op OpenMP thread per core; JAX likewise keeps its default CPU thread pool); the
thread count used is returned under "threads". `num_threads=n` sets it for the call only
(restored after). Tiny batched kernels gain nothing from a second thread, and on a
machine whose cores are busy with other work PyTorch's OpenMP threads wait on each other
(BUILD_NOTES, Speed), so the benchmark should run on an otherwise idle machine (or report
num_threads=1 too).
Times exclude the numpy -> torch conversion of the inputs (JAX's are timed on arrays
already on the device) and include writing the behaviour.

`jax_problem` builds one problem with our JAX code (family, hyperparams, init keys,
streams) and the numpy inputs both peers take, so that all three start identical:

    problem = jax_problem(P=64, W=64, B=1, horizon=1000, seed=0)
    jax_rate = jax_rollout(problem)["steps_per_s"]
    torch_rate = torch_batched(**problem.torch_inputs)["steps_per_s"]

Torch is imported lazily: importing this module never needs it; calling a torch peer
without it raises an ImportError that says how to install it.
"""

from __future__ import annotations

import functools
import math
import time
from typing import NamedTuple

import jax
import numpy as np

from learners import family as family_lib
from learners import learner, rollout, streams

DIM = 8
FAMILY = "sgd_mlp"
_INSTALL_HINT = ("PyTorch is needed for the torch peers of the benchmark; install the "
                 "bench extra: pip install -e '.[bench]'")


def _torch():
  """The torch module, or an ImportError naming the bench extra."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(_INSTALL_HINT) from e
  return torch


class _threads:
  """Context: torch.set_num_threads(n) inside, the previous count restored after;
  n=None leaves PyTorch's default (one intra-op thread per core) alone."""

  def __init__(self, n):
    self.n = n

  def __enter__(self):
    torch = _torch()
    self.saved = torch.get_num_threads()
    if self.n is not None:
      torch.set_num_threads(int(self.n))
    return torch.get_num_threads()

  def __exit__(self, *exc):
    _torch().set_num_threads(self.saved)


# ----------------------------------------------------------------------------- problem


class Problem(NamedTuple):
  """One benchmark problem; unpacks as (family, hparams, init_keys, stream, torch_inputs).

  torch_inputs = {'x': [P, T, B, d], 'y': [P, T, B, 1], 'lrs': [P],
                  'init_params': {'dense_0': {'w': [P, d, W], 'b': [P, W]},
                                  'dense_1': {'w': [P, W, 1], 'b': [P, 1]}}}
  as float32 numpy arrays, the same values the JAX rollout starts from and sees.
  """

  family: family_lib.Family
  hparams: dict
  init_keys: jax.Array
  stream: streams.Stream
  torch_inputs: dict


def jax_problem(P: int, W: int, B: int, horizon: int, seed: int = 0) -> Problem:
  """P teachers of `sgd_mlp` (width W) on their own `mlp_regression` streams (d = 8).

  Hyperparams are drawn from the family's prior with weight decay fixed at 0 (the
  `sgd_mlp` prior switches it on for half the members; the peers run plain SGD), so the
  teachers differ by learning rate and initial weights (init_scale and draw). The initial
  weights are `learner.init(family, hparams_i, init_keys[i]).params['mlp']`, exactly
  those `rollout.population_rollout(family, hparams, init_keys, stream)` starts from.
  """
  family = family_lib.from_config({"name": FAMILY, "width": W}, "regression", (DIM,), 1)
  spec = streams.StreamSpec(kind="mlp_regression", dim=DIM, batch=B, horizon=horizon)

  @jax.jit  # one compile instead of hundreds of eager dispatches
  def build(key):
    k_hp, k_init, k_stream = jax.random.split(key, 3)
    hparams = family.sample(k_hp, P, fixed={"weight_decay": 0.0})
    init_keys = jax.random.split(k_init, P)
    stream = jax.vmap(lambda k: streams.synthetic_stream(spec, k))(
        jax.random.split(k_stream, P))
    params = jax.vmap(lambda hp, k: learner.init(family, hp, k).params["mlp"])(
        hparams, init_keys)
    return hparams, init_keys, stream, params

  hparams, init_keys, stream, params = build(jax.random.PRNGKey(seed))
  f32 = lambda a: np.array(a, np.float32)  # a writable copy
  torch_inputs = {
      "x": f32(stream.x),
      "y": f32(stream.y),
      "lrs": f32(hparams["learning_rate"]),
      "init_params": jax.tree.map(f32, params),
  }
  return Problem(family, hparams, init_keys, stream, torch_inputs)


def jax_rollout(problem: Problem, repeats: int = 3) -> dict:
  """Times `rollout.population_rollout` jitted on `problem` in steady state.

  {'steps_per_s': P * T / (best of `repeats` timed calls), 'compile_s': first call
  (trace + compile + one run), 'behaviour': [P, T, B, 1] numpy}.
  """
  fn = jax.jit(functools.partial(rollout.population_rollout, problem.family))
  args = (problem.hparams, problem.init_keys, problem.stream)
  start = time.perf_counter()
  traj = jax.block_until_ready(fn(*args))
  compile_s = time.perf_counter() - start
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  P, T = problem.stream.x.shape[:2]
  return {"steps_per_s": P * T / best, "seconds": best, "compile_s": compile_s,
          "behaviour": np.asarray(traj.behaviour)}


def _f32(a):
  """float32 numpy, writable (torch.from_numpy warns on read-only arrays, e.g. JAX's)."""
  a = np.asarray(a, np.float32)
  return a if a.flags.writeable else a.copy()


def _check_inputs(x, y, lrs, init_params):
  x, y, lrs = (_f32(a) for a in (x, y, lrs))
  if x.ndim != 4 or y.ndim != 4 or y.shape[:3] != x.shape[:3] or lrs.shape != x.shape[:1]:
    raise ValueError(f"expected x [P, T, B, d], y [P, T, B, k], lrs [P]; got x {x.shape}, "
                     f"y {y.shape}, lrs {lrs.shape}.")
  if set(init_params) != {"dense_0", "dense_1"}:
    raise ValueError(f"init_params must hold exactly dense_0 and dense_1 (one hidden "
                     f"layer); got {sorted(init_params)}.")
  p = {k: {n: _f32(v) for n, v in layer.items()}
       for k, layer in init_params.items()}
  P, _, _, d = x.shape
  W = p["dense_0"]["w"].shape[-1]
  shapes = {"dense_0": {"w": (P, d, W), "b": (P, W)},
            "dense_1": {"w": (P, W, y.shape[-1]), "b": (P, y.shape[-1])}}
  got = {k: {n: v.shape for n, v in layer.items()} for k, layer in p.items()}
  if got != shapes:
    raise ValueError(f"init_params shapes {got}; expected {shapes}.")
  return x, y, lrs, p


# ----------------------------------------------------------------------------- loop peer


@functools.cache
def _ntk_mlp_class():
  torch = _torch()
  nn = torch.nn

  class NTKLinear(nn.Linear):
    """nn.Linear in the NTK parametrization: y = W (x / sqrt(fan_in)) + b."""

    def __init__(self, fan_in, fan_out):
      super().__init__(fan_in, fan_out)
      self.gain = 1.0 / math.sqrt(fan_in)

    def forward(self, x):
      return nn.functional.linear(x * self.gain, self.weight, self.bias)

  class NTKMLP(nn.Module):
    """One hidden tanh layer; weights copied from our [fan_in, fan_out] layout."""

    def __init__(self, w0, b0, w1, b1):
      super().__init__()
      self.hidden = NTKLinear(*w0.shape)
      self.out = NTKLinear(*w1.shape)
      with torch.no_grad():
        for layer, w, b in ((self.hidden, w0, b0), (self.out, w1, b1)):
          layer.weight.copy_(torch.from_numpy(w.T.copy()))
          layer.bias.copy_(torch.from_numpy(b))

    def forward(self, x):
      return self.out(torch.tanh(self.hidden(x)))

  return NTKMLP


def torch_loop(x, y, lrs, init_params, time_budget_s: float | None = None,
               num_threads: int | None = None) -> dict:
  """The naive peer: per teacher an nn.Module + torch.optim.SGD, loops over teachers and
  steps, autograd every step.

  Teachers run one after the other (teacher 0's T steps, then teacher 1's, ...). After
  every step the elapsed wall time (from just before building teacher 0's module, so it
  includes each teacher's module construction, weight copy and optimizer set-up) is
  compared to `time_budget_s`; once it exceeds the budget the run stops there.

  Extrapolation: the rate reported is simply measured_steps / elapsed seconds, and the
  time of the whole run is estimated linearly as P * T / steps_per_s (returned as
  'estimated_total_s'). This assumes every teacher-step costs the same, which holds here
  since all teachers have identical shapes and the per-step work does not depend on the
  values; the per-teacher set-up is counted in proportion to the teachers started, so
  stopping after teacher i's set-up overstates its share by at most one set-up.

  Before the timed run, an untimed warm-up runs 2 steps of teacher 0 on a throwaway
  module: PyTorch's first optimizer step in a process pays a one-time lazy initialisation
  (seconds on a 2-core CPU) that would otherwise swamp short budgets (JAX's compile is
  excluded too).

  Returns {'steps_per_s', 'measured_steps', 'extrapolated' (True iff stopped before
  P * T steps), 'seconds' (measured), 'estimated_total_s', 'teachers_completed',
  'threads', 'behaviour': [P_started, T, B, k] numpy, NaN at the steps not run}.
  """
  _torch()  # the install hint before anything else
  x, y, lrs, p = _check_inputs(x, y, lrs, init_params)
  with _threads(num_threads):
    _loop(x[:1, :2], y[:1, :2], lrs[:1], _first(p), None)  # warm-up, untimed
    return _loop(x, y, lrs, p, time_budget_s)


def _first(p):
  return {k: {n: v[:1] for n, v in layer.items()} for k, layer in p.items()}


def _loop(x, y, lrs, p, time_budget_s):
  torch = _torch()
  P, T, B, _ = x.shape
  NTKMLP = _ntk_mlp_class()
  xt, yt = torch.from_numpy(x), torch.from_numpy(y)
  behaviour = torch.full(y.shape, float("nan"))
  steps = 0
  stopped = False
  start = time.perf_counter()
  for i in range(P):
    model = NTKMLP(p["dense_0"]["w"][i], p["dense_0"]["b"][i],
                   p["dense_1"]["w"][i], p["dense_1"]["b"][i])
    opt = torch.optim.SGD(model.parameters(), lr=float(lrs[i]))
    for t in range(T):
      out = model(xt[i, t])
      loss = 0.5 * ((out - yt[i, t]) ** 2).sum(-1).mean()
      opt.zero_grad()
      loss.backward()
      opt.step()
      behaviour[i, t] = out.detach()
      steps += 1
      if time_budget_s is not None and time.perf_counter() - start > time_budget_s:
        stopped = True
        break
    if stopped:
      break
  seconds = time.perf_counter() - start
  teachers_started = i + 1
  teachers_completed = teachers_started if steps == teachers_started * T else i
  rate = steps / seconds
  return {
      "steps_per_s": rate,
      "measured_steps": steps,
      "extrapolated": steps < P * T,
      "seconds": seconds,
      "estimated_total_s": P * T / rate,
      "teachers_completed": teachers_completed,
      "threads": torch.get_num_threads(),
      "behaviour": behaviour[:teachers_started].numpy(),
  }


# ----------------------------------------------------------------------------- batched


def torch_batched(x, y, lrs, init_params, backward: str = "manual",
                  num_threads: int | None = None) -> dict:
  """The strong peer: all P teachers at once in batched tensors, a Python loop over steps.

  Forward per step (NTK, our [fan_in, fan_out] layout, no transposes):
      h = tanh(baddbmm(b0, x_t / sqrt(d), W0)),  out = baddbmm(b1, h / sqrt(W), W1).
  backward='manual' (default): under torch.no_grad(), the hand-derived gradients of
  0.5 * mean_b ||out - y||^2, with each teacher's lr/B folded into the output error so
  the weight updates are single in-place `baddbmm_(..., alpha=-1)` calls.
  backward='autograd': the same forward on leaf tensors with requires_grad, the loss
  summed over teachers (each teacher's gradient is its own), `loss.backward()`, then
  in-place SGD updates under torch.no_grad().

  Returns {'steps_per_s': P * T / seconds, 'seconds', 'threads', 'backward',
  'behaviour': [P, T, B, k] numpy}. `seconds` covers the step loop and the layout of the
  inputs ([T, P, ...], x / sqrt(d)), not the numpy -> torch conversion nor an untimed
  2-step warm-up run before it.
  """
  if backward not in ("manual", "autograd"):
    raise ValueError(f"backward={backward!r}; allowed: 'manual', 'autograd'.")
  _torch()  # the install hint before anything else
  x, y, lrs, p = _check_inputs(x, y, lrs, init_params)
  with _threads(num_threads):
    _batched(x[:, :2], y[:, :2], lrs, p, backward)  # warm-up (2 steps), untimed
    return _batched(x, y, lrs, p, backward)


def _batched(x, y, lrs, p, backward):
  torch = _torch()
  P, T, B, d = x.shape
  W = p["dense_0"]["w"].shape[-1]
  x_np, y_np = torch.from_numpy(x), torch.from_numpy(y)
  # Clones: the updates are in place and must not write into the caller's arrays.
  w0 = torch.from_numpy(p["dense_0"]["w"]).clone()
  b0 = torch.from_numpy(p["dense_0"]["b"]).clone().unsqueeze(1)  # [P, 1, W]
  w1 = torch.from_numpy(p["dense_1"]["w"]).clone()
  b1 = torch.from_numpy(p["dense_1"]["b"]).clone().unsqueeze(1)  # [P, 1, k]
  lr = torch.from_numpy(lrs).view(P, 1, 1)
  behaviour = torch.empty((T,) + y.shape[:1] + y.shape[2:])  # [T, P, B, k]
  c0, c1 = 1.0 / math.sqrt(d), 1.0 / math.sqrt(W)

  start = time.perf_counter()
  if backward == "manual":
    with torch.no_grad():
      xs = (x_np * c0).transpose(0, 1).contiguous()  # [T, P, B, d], NTK-scaled
      ys = y_np.transpose(0, 1).contiguous()
      lr_b = lr / B
      k = ys.shape[-1]
      w1_row = w1.transpose(1, 2)  # a view: follows the in-place updates of w1
      for t in range(T):
        x_t = xs[t]
        h = torch.tanh(torch.baddbmm(b0, x_t, w0))  # [P, B, W]
        hs = h * c1
        out = torch.baddbmm(b1, hs, w1, out=behaviour[t])  # [P, B, k]
        e = (out - ys[t]).mul_(lr_b)  # lr * dloss/dout
        # lr * dloss/dpre-activation, through W1 before it is updated; with one
        # output the bmm [P, B, 1] x [P, 1, W] is an outer product, and broadcasting
        # is ~15x faster than torch's bmm for it.
        dh = e * w1_row if k == 1 else torch.bmm(e, w1.transpose(1, 2))
        dz = dh.mul_(c1).mul_(1.0 - h * h)
        b1.sub_(e.sum(1, keepdim=True))
        w1.baddbmm_(hs.transpose(1, 2), e, alpha=-1.0)
        b0.sub_(dz.sum(1, keepdim=True))
        w0.baddbmm_(x_t.transpose(1, 2), dz, alpha=-1.0)
  else:
    params = [w0, b0, w1, b1]
    for q in params:
      q.requires_grad_(True)
    xs = (x_np * c0).transpose(0, 1).contiguous()
    ys = y_np.transpose(0, 1).contiguous()
    for t in range(T):
      h = torch.tanh(torch.baddbmm(b0, xs[t], w0))
      out = torch.baddbmm(b1, h * c1, w1)
      loss = 0.5 * ((out - ys[t]) ** 2).sum(-1).mean(-1).sum()
      loss.backward()
      with torch.no_grad():
        behaviour[t] = out
        for q in params:
          q.sub_(lr.view((P,) + (1,) * (q.dim() - 1)) * q.grad)
          q.grad = None
  seconds = time.perf_counter() - start
  return {
      "steps_per_s": P * T / seconds,
      "seconds": seconds,
      "threads": torch.get_num_threads(),
      "backward": backward,
      "behaviour": behaviour.transpose(0, 1).numpy(),
  }
