"""Streaming co-rollout: teachers, chance teachers, reference learners and imitators
advance together, `chunk` steps at a time, inside one `lax.scan`.

Each chunk's stream is generated from the stream's cursor (`learners.streams.advance`),
the teachers step through it, every imitator predicts then observes, and only
per-teacher means over blocks of `block` steps are kept. Imitators run once per cut
(teacher-forced, or alone after the teacher's first K steps) beside one run of the
teachers and references, which never see the cut. No [P, T, ...] array of the
horizon exists: memory is one chunk's data plus a few numbers per block, so horizons of
a thousand times the training horizon fit where the materialized battery
(`imitator.evaluation.battery.held_out`) would not. For the same key the teachers, streams and
imitator states are those of `episodes.sample` and `objective.unroll`, so on a short
horizon the sums equal block means of the materialized errors (tests/test_co_rollout.py).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from imitator import metrics
from imitator.rollout import episodes, references
from learners import learner, streams


class Sums(NamedTuple):
  """Per-teacher means over blocks of steps ([P, horizon // block] each) and peaks [P].

  err {name: D(teacher, name)}, for every imitator and reference; chance: D(teacher,
  chance teacher); teacher_loss and loss {name}: task loss on the labels; agree {name}:
  argmax agreement with the teacher (classification, else {}); peak {name}: max |output|
  over the horizon (inf once non-finite), with "teacher" and "chance" for the teachers.
  """

  err: dict
  chance: jax.Array
  teacher_loss: jax.Array
  loss: dict
  agree: dict
  peak: dict


def _peak(a):
  """max |a| over one teacher's chunk, inf if any entry is non-finite."""
  return jnp.where(jnp.all(jnp.isfinite(a)), jnp.max(jnp.abs(a)), jnp.inf)


def co_rollout(setting: episodes.Setting, data, imitators: dict, metas: dict, key,
               n: int, horizon: int, chunk: int, block: int, imitator_keys,
               with_references: bool = True, chunks_per_call: int = 16,
               observes: tuple = (None,)) -> dict:
  """n held-out teachers from `key` (as `episodes.sample(setting.with_horizon(horizon),
  data, key, n, chance=True)` draws them) over `horizon` steps, beside `imitators`
  {name: Imitator} with `metas` {name: meta} started from `imitator_keys` [n]:
  {cut: Sums} as NumPy arrays, for each cut of `observes` (None: teacher-forced; K: the
  imitators see each teacher's first K steps only and then run alone). chunk divides
  horizon and block divides chunk. The teachers and references run once for every cut
  (their figures are the same in each Sums).

  The scan runs `chunks_per_call` chunks per jitted call and each call's block means go
  to the host, so the device holds one call's worth whatever the horizon; the state
  between calls (cursors, learners, imitators) stays on the device."""
  start, more, args = _calls(setting, imitators, key, n, horizon, chunk, block, imitator_keys,
                             with_references, observes)
  carry, first = start(metas, data, *args)
  parts = [jax.device_get(first)]
  done = chunk
  while done < horizon:
    count = min(chunks_per_call, (horizon - done) // chunk)
    carry, sums = more(metas, data, args[1], args[3], args[-1], carry, count, done)
    parts.append(jax.device_get(sums))
    done += count * chunk
  return dict(zip(observes, (_join([p[c] for p in parts]) for c in range(len(observes)))))


def call_memory_mb(setting: episodes.Setting, data, imitators: dict, metas: dict, key,
                   n: int, horizon: int, chunk: int, block: int, imitator_keys,
                   with_references: bool = True, chunks_per_call: int = 16,
                   observes: tuple = (None,)) -> float:
  """XLA's buffer assignment (arguments + outputs + temporaries - aliases, MB) of the
  larger of `co_rollout`'s two jitted calls: what the device holds at its peak."""
  start, more, args = _calls(setting, imitators, key, n, horizon, chunk, block, imitator_keys,
                             with_references, observes)
  carry = jax.eval_shape(start, metas, data, *args)[0]
  count = max(min(chunks_per_call, horizon // chunk - 1), 1)
  compiled = [start.lower(metas, data, *args).compile(),
              more.lower(metas, data, args[1], args[3], args[-1], carry, count,
                         chunk).compile()]
  sizes = [c.memory_analysis() for c in compiled]
  return max(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes for m in sizes) / 2**20


def _calls(setting, imitators, key, n, horizon, chunk, block, imitator_keys,
           with_references, observes):
  """(start, more, args): the jitted first chunk `start(metas, data, *args) -> (carry,
  (Sums per cut))`, the jitted run of `count` later chunks from step `first`,
  `more(metas, data, hp, hp_c, observe, carry, count, first) -> (carry, (Sums per
  cut))`, and the arrays `args` (the teachers', then `observe`: each cut's seen steps,
  int32 [cuts])."""
  if horizon % chunk or chunk % block:
    raise ValueError(f"chunk={chunk} must divide horizon={horizon} and block={block} "
                     f"must divide chunk.")
  setting = setting.with_horizon(horizon)
  k_teach, k_stream, k_chance = jax.random.split(key, 3)
  hp, init_keys = episodes.teachers(setting, k_teach, n)
  hp_c, keys_c = episodes.teachers(setting, k_chance, n)
  start, more = _jitted(setting, tuple(imitators.items()), chunk, block, with_references,
                        tuple(k is not None for k in observes))
  args = (jax.random.split(k_stream, n), hp, init_keys, hp_c, keys_c, imitator_keys,
          jnp.asarray([horizon if k is None else k for k in observes], jnp.int32))
  return start, more, args


@functools.lru_cache(maxsize=32)
def _jitted(setting, imitators: tuple, chunk: int, block: int, with_references: bool,
            alone: tuple):
  """The jitted `start` and `more` of `_calls`, built once per static setting (so a
  second co-rollout of the same setting does not compile again); `alone` per cut:
  whether its imitators see only the steps before its `observe` entry (an argument, so
  cuts of the same pattern share one compilation)."""
  spec, family, task = setting.spec, setting.family, setting.task
  imitators = dict(imitators)

  def follow(hparams, state, s):
    step = lambda st, xy: learner.step(family, hparams, st, *xy)
    state, (behaviour, loss) = jax.lax.scan(step, state, (s.x, s.y))
    return state, behaviour, loss

  def run_chunk(metas, data, hp, hp_c, observe, carry, first, fresh):
    """One teacher's chunk: the carry after it and its Sums per cut (peak per chunk)."""
    cursor, teacher, chance, refs, ims = carry
    cursor, s = streams.advance(spec, cursor, data, first, chunk)
    teacher, a, teacher_loss = follow(hp, teacher, s)
    chance, a_chance, _ = follow(hp_c, chance, s)
    blocks = lambda v: v.reshape(chunk // block, block).mean(-1)

    def figures(outputs):  # (err, loss, agree, peak) of {name: output}
      return ({k: blocks(metrics.step_error(task, a, o)) for k, o in outputs.items()},
              {k: blocks(metrics.task_loss(task, o, s.y)) for k, o in outputs.items()},
              ({k: blocks(metrics.argmax_agreement(a, o)) for k, o in outputs.items()}
               if task == "classification" else {}),
              {k: _peak(o) for k, o in outputs.items()})

    ref_outputs, new_refs = {}, {}
    for name, state in refs.items():
      new_refs[name], ref_outputs[name], _ = follow(hp, state, s)
    shared = figures(ref_outputs)
    teachers = dict(chance=blocks(metrics.step_error(task, a, a_chance)),
                    teacher_loss=blocks(teacher_loss))
    peaks = {"teacher": _peak(a), "chance": _peak(a_chance)}
    new_ims, sums = [], []
    for c, cut_alone in enumerate(alone):
      seen = first + jnp.arange(chunk) < observe[c] if cut_alone else None
      states, outputs = {}, {}
      for name, im in imitators.items():
        states[name], outputs[name] = im.unroll(metas[name], ims[c][name], s.x, s.y, a,
                                                fresh=fresh, seen=seen)
      err, loss, agree, peak = ({**r, **i} for r, i in zip(shared, figures(outputs)))
      new_ims.append(states)
      sums.append(Sums(err=err, loss=loss, agree=agree, peak={**peaks, **peak}, **teachers))
    return (cursor, teacher, chance, new_refs, tuple(new_ims)), tuple(sums)

  @jax.jit
  def start(metas, data, stream_keys, hp, init_keys, hp_c, keys_c, imitator_keys, observe):
    def one(stream_key, hp, init_key, hp_c, key_c, im_key):
      refs = references.initial_states(family, hp, init_key) if with_references else {}
      ims = tuple({name: im.init(metas[name], im_key) for name, im in imitators.items()}
                  for _ in alone)
      carry = (streams.start(spec, stream_key, data), learner.init(family, hp, init_key),
               learner.init(family, hp_c, key_c), refs, ims)
      # The first chunk starts from `init`, which lets models skip empty memory.
      return run_chunk(metas, data, hp, hp_c, observe, carry, 0, True)
    return jax.vmap(one)(stream_keys, hp, init_keys, hp_c, keys_c, imitator_keys)

  @functools.partial(jax.jit, static_argnums=6)
  def more(metas, data, hp, hp_c, observe, carry, count, first):
    def one(hp, hp_c, carry):
      return jax.lax.scan(
          lambda c, t0: run_chunk(metas, data, hp, hp_c, observe, c, t0, False), carry,
          first + jnp.arange(count) * chunk)
    carry, sums = jax.vmap(one)(hp, hp_c, carry)
    flat = lambda v: v.reshape(v.shape[0], -1)  # [P, count, blocks] -> [P, count * blocks]
    return carry, tuple(s._replace(
        err=jax.tree.map(flat, s.err), chance=flat(s.chance),
        teacher_loss=flat(s.teacher_loss), loss=jax.tree.map(flat, s.loss),
        agree=jax.tree.map(flat, s.agree),
        peak=jax.tree.map(lambda v: v.max(1), s.peak)) for s in sums)

  return start, more


def _join(parts: list) -> Sums:
  """Sums of consecutive runs as one: block means concatenated, peaks maxed."""
  cat = lambda *a: np.concatenate(a, axis=1)
  return parts[0]._replace(
      err=jax.tree.map(cat, *[p.err for p in parts]),
      chance=cat(*[p.chance for p in parts]),
      teacher_loss=cat(*[p.teacher_loss for p in parts]),
      loss=jax.tree.map(cat, *[p.loss for p in parts]),
      agree=jax.tree.map(cat, *[p.agree for p in parts]),
      peak=jax.tree.map(lambda *a: np.max(np.stack(a), 0), *[p.peak for p in parts]))
