"""The fidelity/capability frontier: imitators fine-tuned for outcome or process, and
ensembles that vote, against the imitator they came from, on the same held-out teachers.

Every point is evaluated at `multiple` x T_train (figures over its last T_train steps),
teacher-forced and alone after the teacher's first `observe` steps. Fidelity is the NIE;
capability the task loss on the labels relative to the teacher's own (`loss_ratio`: mean
imitator loss / mean teacher loss; below 1, more capable than the teacher). Each point
is paired with the source imitator (NIE ratio; capability gain = (source loss - point
loss) / teacher loss), and process points with outcome points (`dominance`).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from imitator import metrics
from imitator.evaluation import battery, figures
from imitator.rollout import objective

SOURCE = "imitator"
MODES = ("forced", "alone")
_ALL = slice(0, 1)  # the per-teacher figures are means over the figure's steps already


def per_teacher(exp, candidates: dict, multiple: int, observe: int) -> dict:
  """{"chance", "teacher_loss": [P], name: {mode: {"err", "loss": [P]}}} over the last
  T_train steps of multiple x T_train on the held-out teachers kept (finite, not blown
  up), for `candidates` {name: (imitator, meta-params)}."""
  t, n, task = exp.setting.t, exp.config.eval.teachers, exp.setting.task
  horizon = multiple * t
  ep = battery.held_out(exp.config, exp.setting, exp.data, n, horizon)
  keep = np.asarray(figures.usable_teachers(ep))
  steps = metrics.figure_steps(horizon, t)
  keys = objective.evaluation_keys(n)
  chunk = battery.divisor(t, horizon)
  mean = lambda v: np.asarray(v, np.float64)[keep][:, steps].mean(1)
  out = {"chance": mean(metrics.step_error(task, ep.behaviour, ep.chance)),
         "teacher_loss": mean(ep.loss)}
  compiled = {}
  for name, (im, meta) in candidates.items():
    out[name] = {}
    for mode, cut in (("forced", None), ("alone", observe)):
      if (im, mode) not in compiled:
        compiled[(im, mode)] = jax.jit(lambda m, x, y, a, im=im, cut=cut: objective.unroll(
            im, m, keys, x, y, a, chunk, observe=cut)[0])
      a_hat = compiled[(im, mode)](meta, ep.x, ep.y, ep.behaviour)
      with np.errstate(over="ignore", invalid="ignore"):
        out[name][mode] = {"err": mean(metrics.step_error(task, ep.behaviour, a_hat)),
                           "loss": mean(metrics.task_loss(task, a_hat, ep.y))}
  return out


def _col(v):
  return np.asarray(v, np.float64)[:, None]


def _versus(a, b, chance, teacher_loss) -> dict:
  """a paired with b (per-teacher {"err", "loss"}): NIE ratio a / b and capability gain
  (b's loss - a's loss) / teacher loss, with paired CIs."""
  nie = metrics.paired_comparison(_col(a["err"]), _col(b["err"]), _col(chance), _ALL)
  loss = metrics.paired_comparison(_col(a["loss"]), _col(b["loss"]), _col(teacher_loss),
                                   _ALL)
  return {"nie_ratio": nie["nie_ratio"], "nie_ratio_ci": nie["nie_ratio_ci"],
          "loss_ratio": loss["nie_ratio"], "loss_ratio_ci": loss["nie_ratio_ci"],
          "capability_gain": -loss["nie_diff"],
          "capability_gain_ci": sorted(-v for v in loss["nie_diff_ci"])}


def frontier(figs: dict, points: list) -> dict:
  """The frontier of `points` [{"name", "method", "lambda" or "k"}] from `per_teacher`
  figures: each point's NIE and loss ratio with CIs per mode, paired with the source;
  process against outcome points, paired, where either is better on one axis and no
  worse on the other."""
  chance, teacher = figs["chance"], figs["teacher_loss"]
  out = []
  for p in points:
    entry = dict(p)
    for mode in MODES:
      f = figs[p["name"]][mode]
      nie, nie_ci = metrics.nie_with_ci(_col(f["err"]), _col(chance), _ALL)
      ratio, ratio_ci = metrics.nie_with_ci(_col(f["loss"]), _col(teacher), _ALL)
      entry[mode] = {"nie": nie, "nie_ci": list(nie_ci), "loss_ratio": ratio,
                     "loss_ratio_ci": list(ratio_ci),
                     "versus_source": _versus(f, figs[SOURCE][mode], chance, teacher)}
    out.append(entry)
  dominance = []
  by = lambda m: [p for p in points if p["method"] == m]
  for mode in MODES:
    for pp in by("process"):
      for po in by("outcome"):
        v = _versus(figs[pp["name"]][mode], figs[po["name"]][mode], chance, teacher)
        faithful, capable = v["nie_ratio_ci"][1] < 1, v["loss_ratio_ci"][1] < 1
        unfaithful, incapable = v["nie_ratio_ci"][0] > 1, v["loss_ratio_ci"][0] > 1
        if (faithful and not incapable) or (capable and not unfaithful):
          who = "process"
        elif (unfaithful and not capable) or (incapable and not faithful):
          who = "outcome"
        else:
          continue
        dominance.append({"mode": mode, "process": pp["lambda"], "outcome": po["lambda"],
                          "better": who, "strict": (faithful and capable) or (
                              unfaithful and incapable), **v})
  return {"n_teachers": int(len(chance)), "points": out, "dominance": dominance}


def _ci(v, ci, digits=3):
  return f"{v:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _labels(result: dict) -> tuple[str, str]:
  """(fidelity, capability) names of the result's axes: NIE and loss / teacher's, or
  those an acting frontier sets."""
  return result.get("fidelity", "NIE"), result.get("capability", "loss / teacher's")


def table(result: dict) -> list[str]:
  """Markdown lines of the frontier table."""
  fid, cap = _labels(result)
  lines = [
      f"| method | lambda / K | {fid} teacher-forced | {fid} alone | {cap}, "
      f"teacher-forced | {cap}, alone | alone vs source: {fid} ratio | alone vs "
      "source: capability gain |",
      "|---|---|---|---|---|---|---|---|"]
  for p in result["points"]:
    knob = p.get("lambda", p.get("k"))
    knob = "source" if p["name"] == SOURCE else f"{knob:g}"
    v = p["alone"]["versus_source"]
    same = p["name"] == SOURCE
    lines.append(
        f"| {p['method']} | {knob} | {_ci(p['forced']['nie'], p['forced']['nie_ci'])} | "
        f"{_ci(p['alone']['nie'], p['alone']['nie_ci'])} | "
        f"{_ci(p['forced']['loss_ratio'], p['forced']['loss_ratio_ci'])} | "
        f"{_ci(p['alone']['loss_ratio'], p['alone']['loss_ratio_ci'])} | "
        f"{'–' if same else _ci(v['nie_ratio'], v['nie_ratio_ci'])} | "
        f"{'–' if same else _ci(v['capability_gain'], v['capability_gain_ci'])} |")
  return lines


def markdown(result: dict, every_pair: bool = True) -> str:
  """The frontier under a line naming its command, then which of process and outcome
  fine-tuning is better where, paired (a count per mode, and with `every_pair` each
  pair where one is better)."""
  mult, obs = result.get("multiple"), result.get("observe")
  fid, cap = _labels(result)
  reused = (f", {result['reused']} of its {result['runs']} fine-tuning runs complete "
            "already" if result.get("reused") else "")
  lines = [f"`{result.get('command', '(no command recorded)')}` ({result.get('seconds')} s "
           f"here{reused}; {result['n_teachers']} held-out teachers; figures over the last T_train "
           f"steps of {mult} x T_train, teacher-forced and alone after {obs} steps; "
           "fine-tuned for "
           f"{result.get('steps')} outer steps from the source imitator; {cap} "
           "below 1: more capable than the teacher; versus source: paired):", ""]
  lines += table(result)
  found = result["dominance"]
  lines.append("")
  if not found:
    lines.append("Process against outcome fine-tuning, paired at every pair of lambdas: "
                 "neither is more faithful at no loss of capability, or more capable at no "
                 "loss of fidelity, anywhere (CIs overlap 1 or the two trade).")
  n_pairs = (sum(p["method"] == "process" for p in result["points"])
             * sum(p["method"] == "outcome" for p in result["points"]))
  for mode in MODES:
    here = [d for d in found if d["mode"] == mode]
    if not here:
      continue
    wins = {w: [d for d in here if d["better"] == w] for w in ("process", "outcome")}
    best = min(here, key=lambda d: d["nie_ratio"] if d["better"] == "process"
               else 1 / d["nie_ratio"])
    lines.append(
        f"- {'teacher-forced' if mode == 'forced' else 'alone'}, paired process against "
        f"outcome over {n_pairs} pairs of lambdas: process better in "
        f"{len(wins['process'])} ({sum(d['strict'] for d in wins['process'])} on both "
        f"axes), outcome in {len(wins['outcome'])} "
        f"({sum(d['strict'] for d in wins['outcome'])} on both), the others trade or tie; "
        f"e.g. process lambda={best['process']:g} vs outcome lambda={best['outcome']:g}: "
        f"{fid} ratio process/outcome {_ci(best['nie_ratio'], best['nie_ratio_ci'])}, "
        f"{cap.split(' /')[0]} ratio {_ci(best['loss_ratio'], best['loss_ratio_ci'])}.")
  if every_pair:
    for d in found:
      lines.append(
          f"  - {d['mode']}: process lambda={d['process']:g} vs outcome lambda="
          f"{d['outcome']:g}: {d['better']} is better{' on both axes' if d['strict'] else ''}"
          f" ({fid} ratio process/outcome {_ci(d['nie_ratio'], d['nie_ratio_ci'])}, "
          f"{cap.split(' /')[0]} ratio {_ci(d['loss_ratio'], d['loss_ratio_ci'])}).")
  return "\n".join(lines) + "\n"


def write(result: dict, out_dir: str) -> None:
  """frontier.json, frontier.md and frontier.png in out_dir."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "frontier.json"), "w") as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(out_dir, "frontier.md"), "w") as f:
    f.write(markdown(result))
  plot(result, os.path.join(out_dir, "frontier.png"))


def plot(result: dict, path: str) -> None:
  """NIE (fidelity) against loss / teacher's (capability), teacher-forced and alone, a
  line per method through its lambdas (or K) from the source, with 95% CI bars."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fid, cap = _labels(result)
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  source = next(p for p in result["points"] if p["name"] == SOURCE)
  for ax, mode in zip(axes, MODES):
    for method in ("outcome", "process", "voting"):
      pts = [source] + sorted((p for p in result["points"] if p["method"] == method),
                              key=lambda p: p.get("lambda", p.get("k", 0)))
      if len(pts) < 2:
        continue
      x = [p[mode]["loss_ratio"] for p in pts]
      y = [p[mode]["nie"] for p in pts]
      xerr = np.abs(np.array([p[mode]["loss_ratio_ci"] for p in pts]).T - x)
      yerr = np.abs(np.array([p[mode]["nie_ci"] for p in pts]).T - y)
      ax.errorbar(x, y, xerr=xerr, yerr=yerr, marker="o", ms=3, lw=1, capsize=2,
                  label=method)
      for p, xi, yi in zip(pts[1:], x[1:], y[1:]):
        ax.annotate(f"{'K' if method == 'voting' else 'λ'}={p.get('lambda', p.get('k'))}",
                    (xi, yi), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.scatter([source[mode]["loss_ratio"]], [source[mode]["nie"]], color="k", zorder=5,
               label="imitator (source)")
    ax.axvline(1.0, color="gray", lw=0.6, ls=":")
    ax.set_xlabel(f"{cap} (lower: more capable)")
    ax.set_ylabel(f"{fid} (lower: more faithful)")
    ax.set_title("teacher-forced" if mode == "forced" else "alone after the cut",
                 fontsize=9)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
