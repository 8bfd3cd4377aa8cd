"""Speed and memory, measured side by side in one run; one JSON object per line.

    pip install -c constraints.txt -e ".[bench]"      # PyTorch peers (CPU)
    python -m launch.benchmark                         # every section (~10 min on 2 cores)
    python -m launch.benchmark --sections=rollout --out=bench.jsonl

Sections:
- `rollout`: teacher steps/s of `population_rollout` (one jitted call, horizon 1000) for
  P teachers of width W seeing B examples a step, its GFLOP/s against a float32 matmul
  roofline measured in the same run, and two PyTorch peers of the same learners
  (`learners.torch_peers`): `torch_batched` and `torch_loop` (cut by a time budget and
  extrapolated; the row says so). `bandwidth_gbs` is an elementwise pass over 256 MB,
  the memory side of the roofline.
  `rollout_mixed` rolls a population of the `mixed` family (every network, optimizer
  and regularizer) out in one jitted call.
- `outer_step`: imitated teacher-steps/s of one jitted outer step, per imitator kind.
- `horizon_scaling`: seconds per outer step and XLA's peak memory against the horizon,
  for full backpropagation, remat, and truncated windows; `episode_mb` is the episode
  data (streams, behaviour) held at once: the horizon's, or with truncation one
  window's.
- `eval_horizon`: evaluation at 16, 128 and 1024 x T_train on the main job's setting
  (128 held-out teachers; the gradient imitator, both baselines, `untrained` and the
  reference learners, at their initial meta-params): the streaming co-rollout
  (`imitator.rollout.co_rollout`) timed, and beside it the materialized battery (teachers rolled
  out over the whole horizon, then the imitators), timed at 16 x and compiled only
  beyond, for its memory. `streamed_two_cuts` (16 x): teacher-forced and alone after
  T_train in one co-rollout against one co-rollout per cut (`speedup`).
FLOPs are counted analytically (`rollout_flops`); memory is the compiled step's buffer
assignment (arguments + outputs + temporaries - donated aliases), XLA's own account of
what the step needs at its peak.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from imitator.evaluation import battery
from imitator.rollout import co_rollout, episodes, objective, references
from imitator.training import experiment, outer_step
from launch import cli
from launch.configs import default, in_context, system_id
from learners import family as family_lib
from learners import rollout, streams, torch_peers

_SECTIONS = flags.DEFINE_list("sections", ["rollout", "outer_step", "horizon_scaling",
                                           "eval_horizon"],
                              "Which sections to run.")
_OUT = flags.DEFINE_string("out", None, "Also append the rows to this .jsonl file.")
_LOOP_BUDGET = flags.DEFINE_float("torch_loop_budget", 3.0,
                                  "Seconds of torch_loop per rollout row (extrapolated).")
_QUICK = flags.DEFINE_boolean("quick", False, "Tiny sizes (a smoke test of the script).")

HORIZON = 1000
POPULATIONS, WIDTHS, BATCHES = (1, 64, 256), (16, 64, 256), (1, 32)
SCALING_HORIZONS = (64, 256, 1024, 4096)
EVAL_MULTIPLES = (16, 128, 1024)


def _time(fn, *args, repeats=3):
  """(best seconds of `repeats` calls after a compiling call, compile seconds)."""
  t = time.perf_counter()
  jax.block_until_ready(fn(*args))
  compile_s = time.perf_counter() - t
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t)
  return best, compile_s


def matmul_roofline(n: int = 2048) -> float:
  """GFLOP/s of a jitted float32 [n, n] @ [n, n] matmul on this machine."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  seconds, _ = _time(jax.jit(lambda a: a @ a), a, repeats=5)
  return 2 * n**3 / seconds / 1e9


def memory_bandwidth(n: int = 2**26) -> float:
  """GB/s of a jitted elementwise pass over n float32 (one read and one write each)."""
  a = jnp.ones((n,), jnp.float32)
  seconds, _ = _time(jax.jit(lambda a: a * 1.5 + 1.0), a, repeats=5)
  return 2 * 4 * n / seconds / 1e9


def rollout_flops(P: int, W: int, B: int, horizon: int, d: int = torch_peers.DIM) -> float:
  """FLOPs of P one-hidden-layer teachers over `horizon` steps: forward 2B(dW + W),
  backward twice that, SGD update 2 per parameter (tanh and losses not counted)."""
  params = d * W + W + W + 1
  forward = 2 * B * (d * W + W)
  return float(P * horizon * (3 * forward + 2 * params))


def rollout_rows(quick: bool, loop_budget: float):
  roofline = matmul_roofline(512 if quick else 2048)
  bandwidth = memory_bandwidth(2**20 if quick else 2**26)
  sizes = [(P, W, B) for P in POPULATIONS for W in WIDTHS for B in BATCHES]
  horizon = HORIZON
  if quick:
    sizes, horizon = [(4, 16, 1)], 50
  for P, W, B in sizes:
    problem = torch_peers.jax_problem(P, W, B, horizon)
    jax_run = torch_peers.jax_rollout(problem)
    rate = jax_run["steps_per_s"]
    row = {"name": "rollout", "population": P, "width": W, "batch": B, "horizon": horizon,
           "teacher_steps_per_s": rate,
           "gflops": rollout_flops(P, W, B, horizon) / jax_run["seconds"] / 1e9,
           "roofline_gflops": roofline, "bandwidth_gbs": bandwidth,
           "jax_compile_s": jax_run["compile_s"]}
    try:
      batched = torch_peers.torch_batched(**problem.torch_inputs)
      loop = torch_peers.torch_loop(**problem.torch_inputs, time_budget_s=loop_budget)
    except ImportError as e:
      row["torch"] = str(e)
    else:
      row.update(torch_batched_steps_per_s=batched["steps_per_s"],
                 torch_loop_steps_per_s=loop["steps_per_s"],
                 torch_loop_extrapolated=loop["extrapolated"],
                 torch_loop_measured_steps=loop["measured_steps"],
                 torch_threads=batched["threads"],
                 vs_torch_batched=rate / batched["steps_per_s"],
                 vs_torch_loop=rate / loop["steps_per_s"])
    yield row


def mixed_rollout_row(quick: bool):
  """The `mixed` family (linear and MLP networks, three activations, four optimizers,
  every regularizer, up to 2 inner steps) rolled out as one population in one call."""
  P, W, horizon = (8, 16, 50) if quick else (256, 64, HORIZON)
  fam = family_lib.from_config({"name": "mixed", "width": W}, "regression",
                               (torch_peers.DIM,), 1)
  spec = streams.StreamSpec(kind="mlp_regression", dim=torch_peers.DIM, horizon=horizon)

  @jax.jit
  def run(key):
    k_h, k_s, k_i = jax.random.split(key, 3)
    stream = jax.vmap(lambda k: streams.synthetic_stream(spec, k))(jax.random.split(k_s, P))
    return rollout.population_rollout(fam, fam.sample(k_h, P), jax.random.split(k_i, P),
                                      stream).behaviour

  seconds, compile_s = _time(run, jax.random.key(0))
  return {"name": "rollout_mixed", "population": P, "width": W, "batch": 1,
          "horizon": horizon, "teacher_steps_per_s": P * horizon / seconds,
          "seconds": seconds, "compile_s": compile_s}


def _step_cost(config):
  """(seconds per outer step, peak MB) of a config's jitted outer step."""
  exp = experiment.Experiment(config)
  step = outer_step.step_fn(exp, config.stream.horizon)
  ts = exp.place(exp.init_state())
  compiled = step.lower(ts).compile()
  peak = _peak_mb(compiled)
  ts = compiled(ts)  # a first step, untimed
  jax.block_until_ready(ts)
  n = 3
  t = time.perf_counter()
  for _ in range(n):
    ts = compiled(ts)
  jax.block_until_ready(ts)
  return (time.perf_counter() - t) / n, peak


def _kind_configs(quick: bool):
  configs = {"gradient": default.get_config()}
  for arch in in_context.ARCHS:
    configs[f"in_context/{arch}"] = in_context.get_config(arch)
  configs["system_id/both"] = system_id.get_config()
  for config in configs.values():
    if quick:
      default.shrink_to_smoke(config)
    config.train.teachers = 16 if quick else 32
  return configs


def outer_step_rows(quick: bool):
  for name, config in _kind_configs(quick).items():
    seconds, peak = _step_cost(config)
    teachers, horizon = config.train.teachers, config.stream.horizon
    yield {"name": "outer_step", "imitator": name, "horizon": horizon,
           "teachers": teachers, "seconds_per_step": seconds,
           "imitated_steps_per_s": teachers * horizon / seconds, "peak_memory_mb": peak}


def _episode_mb(config) -> float:
  """Size of the episode arrays (streams, behaviour, teacher losses) one step holds at a
  time: the whole horizon's, or with truncation one window's (the teachers' data is
  made window by window, `objective.streamed_loss_and_grads`)."""
  exp = experiment.Experiment(config)
  setting = exp.setting.with_horizon(config.train.truncation or exp.setting.t)
  ep = jax.eval_shape(lambda k: episodes.sample(setting, exp.data, k,
                                                config.train.teachers), jax.random.key(0))
  return sum(np.prod(a.shape) * a.dtype.itemsize for a in jax.tree.leaves(ep)) / 2**20


def horizon_scaling_rows(quick: bool):
  horizons = (16, 32) if quick else SCALING_HORIZONS
  kinds = {"gradient": default.get_config(), "in_context/recurrent":
           in_context.get_config("recurrent")}
  for name, base in kinds.items():
    for mode in ("none", "remat", "truncation"):
      for horizon in horizons:
        config = base.copy_and_resolve_references()
        config.stream.horizon = horizon
        config.stream.task_switch_every = 32
        config.train.teachers = 8
        config.train.remat = mode == "remat"
        config.train.truncation = min(horizon, 16 if quick else 64) if mode == "truncation" else 0
        seconds, peak = _step_cost(config)
        yield {"name": "horizon_scaling", "imitator": name, "horizon": horizon,
               "remat": mode, "truncation": config.train.truncation, "teachers": 8,
               "seconds_per_step": seconds, "peak_memory_mb": peak,
               "episode_mb": _episode_mb(config)}


def _peak_mb(compiled) -> float:
  """XLA's buffer assignment of a compiled call: arguments + outputs + temporaries -
  donated aliases, in MB."""
  m = compiled.memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
          - m.alias_size_in_bytes) / 2**20


def eval_horizon_rows(quick: bool):
  config = default.get_config()
  if quick:
    default.shrink_to_smoke(config)
  exp = experiment.Experiment(config)
  imitators, metas = battery.with_untrained(exp, exp.init_state().meta)
  n, t = config.eval.teachers, exp.setting.t
  keys = objective.evaluation_keys(n)
  key = battery.held_out_key(config)
  runs = sorted(imitators) + ["known_hparams", "twin"]

  def materialized(k, m, horizon):
    ep = episodes.sample(exp.setting.with_horizon(horizon), exp.data, k, n, chance=True)
    out = {name: objective.unroll(im, m[name], keys, ep.x, ep.y, ep.behaviour, t)[0]
           for name, im in imitators.items()}
    return out, references.behaviours(exp.setting.family, ep.hparams, ep.init_keys, ep.x,
                                      ep.y)

  for multiple in (2, 4, 8) if quick else EVAL_MULTIPLES:
    horizon = multiple * t
    common = {"name": "eval_horizon", "imitator": "gradient", "runs": runs,
              "multiple": multiple, "horizon": horizon, "teachers": n}
    # Streamed: the first call compiles; the second is timed. Its memory is the device's
    # peak over one jitted call (the block means of earlier calls are on the host).
    args = (exp.setting, exp.data, imitators, metas, key, n, horizon, t, t // 4, keys)
    start = time.perf_counter()
    co_rollout.co_rollout(*args)
    first = time.perf_counter() - start
    start = time.perf_counter()
    sums = co_rollout.co_rollout(*args)[None]
    seconds = time.perf_counter() - start
    yield {**common, "mode": "streamed", "seconds": seconds, "compile_s": first - seconds,
           "peak_memory_mb": co_rollout.call_memory_mb(*args),
           "host_results_mb": sum(a.nbytes for a in jax.tree.leaves(sums)) / 2**20}
    # Materialized, for contrast: compiled at every horizon for its memory, timed at 16x.
    fn = jax.jit(lambda k, m, h=horizon: materialized(k, m, h))
    start = time.perf_counter()
    compiled = fn.lower(key, metas).compile()
    compile_s = time.perf_counter() - start
    seconds = None
    if multiple == min(EVAL_MULTIPLES) or quick:
      start = time.perf_counter()
      jax.block_until_ready(compiled(key, metas))
      seconds = time.perf_counter() - start
    yield {**common, "mode": "materialized", "seconds": seconds, "compile_s": compile_s,
           "peak_memory_mb": _peak_mb(compiled)}
    if multiple == min(EVAL_MULTIPLES) or quick:
      # Teacher-forced and alone after T_train (`launch.evaluate --observe=1x`): one
      # co-rollout of both cuts, where the teachers and references run once, against a
      # co-rollout per cut.
      shared, _ = _time(lambda: list(co_rollout.co_rollout(*args, observes=(None, t))
                                     .values()), repeats=1)
      separate, _ = _time(lambda: [co_rollout.co_rollout(*args, observes=(k,))[k]
                                   for k in (None, t)], repeats=1)
      yield {**common, "mode": "streamed_two_cuts", "seconds": shared,
             "separate_seconds": separate, "speedup": separate / shared,
             "peak_memory_mb": co_rollout.call_memory_mb(*args, observes=(None, t))}


def main(argv):
  del argv
  sections = {"rollout": lambda: [*rollout_rows(_QUICK.value, _LOOP_BUDGET.value),
                                  mixed_rollout_row(_QUICK.value)],
              "outer_step": lambda: outer_step_rows(_QUICK.value),
              "horizon_scaling": lambda: horizon_scaling_rows(_QUICK.value),
              "eval_horizon": lambda: eval_horizon_rows(_QUICK.value)}
  unknown = sorted(set(_SECTIONS.value) - set(sections))
  if unknown:
    raise ValueError(f"--sections: unknown {unknown}; allowed: {sorted(sections)}.")
  print(json.dumps({"name": "machine", "backend": jax.default_backend(),
                    "devices": len(jax.devices()), "jax": jax.__version__}), flush=True)
  for section in _SECTIONS.value:
    for row in sections[section]():
      line = json.dumps({k: (round(v, 6) if isinstance(v, float) else v)
                         for k, v in row.items()})
      print(line, flush=True)
      if _OUT.value:
        with open(_OUT.value, "a") as f:
          f.write(line + "\n")


if __name__ == "__main__":
  cli.run(main)
