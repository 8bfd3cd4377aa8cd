"""The evaluation report as markdown tables and matplotlib plots (PNG)."""

from __future__ import annotations

import collections

import numpy as np


def _ci(value, ci, digits=3):
  if value is None:
    return "diverged"
  if value >= 1e4:
    return f"{value:.2g}"
  fmt = lambda v: "?" if v is None else f"{v:.{digits}f}"
  return f"{fmt(value)} [{fmt(ci[0])}, {fmt(ci[1])}]"


def _divergence(row, eps):
  d = row.get("horizon_to_divergence", {}).get(str(eps))
  if not d or d["step"] is None:
    return "never"
  return f"{d['step']} ({d['t_train_multiple']:.2f}x)"


def markdown(report: dict) -> str:
  """report.json as tables: NIE [95% CI] per shift, imitator and horizon."""
  t = report["t_train"]
  by_shift = collections.defaultdict(list)
  for r in report["results"]:
    by_shift[r["shift"]].append(r)
  lines = [f"# Evaluation report (T_train = {t})", "",
           "NIE = imitation error / chance error over the last T_train steps before the "
           "horizon, with a 95% bootstrap CI over teachers (0 = perfect, 1 = no better "
           "than another random teacher). Diverges @eps: first horizon H >= T_train "
           "whose NIE over the last T_train steps exceeds eps (and H / T_train).", ""]
  forgetting = by_shift.pop("forgetting", [])
  for shift, rows in by_shift.items():
    horizons = sorted({r["horizon"] for r in rows})
    n = rows[0]["n_teachers"]
    lines += [f"## shift: {shift} ({n} teachers)", ""]
    head = ["imitator"] + [f"H={h} ({h / t:g}x)" for h in horizons] + [
        "diverges @0.1", "diverges @0.25", f"task gap @H={horizons[0]}"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    cells = collections.defaultdict(dict)
    for r in rows:
      cells[r["imitator"]][r["horizon"]] = r
    for name, by_h in cells.items():
      first = by_h[horizons[0]]
      row = [name] + [_ci(by_h[h]["nie"], by_h[h]["nie_ci"]) if h in by_h else ""
                      for h in horizons]
      row += [_divergence(first, 0.1), _divergence(first, 0.25),
              _ci(first["task_gap"], first["task_gap_ci"]) if "task_gap" in first else ""]
      lines.append("| " + " | ".join(row) + " |")
    extra = [(name, by_h) for name, by_h in cells.items()
             if "hparam_recovery" in by_h[horizons[0]]]
    for name, by_h in extra:
      fields = sorted(by_h[horizons[0]]["hparam_recovery"])
      lines += ["", f"hparam recovery of {name} (|log ratio| for log-scale fields, else "
                "|difference|):", "",
                "| horizon | " + " | ".join(fields) + " |", "|" + "---|" * (len(fields) + 1)]
      for h in horizons:
        rec = by_h[h]["hparam_recovery"]
        lines.append(f"| {h} | " + " | ".join(
            "n/a" if rec[f] is None else f"{rec[f]:.3g}" for f in fields) + " |")
    agree = [(name, by_h) for name, by_h in cells.items()
             if "argmax_agreement" in by_h[horizons[0]]]
    if agree:
      lines += ["", "argmax agreement: " + ", ".join(
          f"{name} {by_h[horizons[-1]]['argmax_agreement']:.3f}" for name, by_h in agree)]
    lines.append("")
  if forgetting:
    lines += ["## forgetting (tasks A+B, then A alone; loss on held-out B)", "",
              "| imitator | mean gap to the teacher's curve [95% CI] | teachers |",
              "|---|---|---|"]
    for r in forgetting:
      lines.append(f"| {r['imitator']} | {_ci(r['forgetting_gap'], r['forgetting_gap_ci'], 4)}"
                   f" | {r['n_teachers']} |")
    lines.append("")
  for s in report.get("skipped", []):
    lines.append(f"- skipped {s['shift']}: {s['reason']}")
  return "\n".join(lines) + "\n"


def plot_nie(curves: dict, t_train: int, path: str) -> None:
  """Windowed NIE against step (log axis), one panel per shift, T_train marked."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  shifts = list(curves)
  cols = min(4, len(shifts))
  rows = -(-len(shifts) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
  for ax, shift in zip(axes.flat, shifts):
    for name, curve in curves[shift].items():
      curve = np.asarray(curve)
      ax.plot(np.arange(1, len(curve) + 1), curve, label=name, lw=1)
    ax.axvline(t_train, color="k", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(shift, fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel(f"NIE (last {max(t_train // 8, 1)} steps)")
  for ax in axes.flat[len(shifts):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=7, title="oracle: NIE 0", title_fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_forgetting(result: dict, t_train: int, path: str) -> None:
  """The teacher's and each imitator's loss on task B over time."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  steps = np.asarray(result["steps"])
  ax.plot(steps, result["teacher"], color="k", lw=2, label="teacher")
  for name, curve in result["imitators"].items():
    ax.plot(steps, curve, lw=1, label=f"{name} (predicted)")
  ax.axvline(2 * t_train, color="gray", ls=":", lw=0.8)
  ax.set_xlabel("step (A and B alternate, then A alone after the dotted line)")
  ax.set_ylabel("loss on held-out task-B examples")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
