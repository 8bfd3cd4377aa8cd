"""The decay experiment's report: report.json rows, the scaling of half-life with width,
report.md and the PNGs (half-life against width, log-log; half-life heatmaps over
regularizer x overlap at each width and depth)."""

from __future__ import annotations

import collections
import json
import math
import os

import numpy as np

from imitator.decay import fit as decay_fit
from imitator.runtime import workdir as workdir_lib

# Per-cell fields kept out of report.json's rows (they stay in cells/<id>.json).
_BULKY = ("steps", "loss_curve", "accuracy_curve", "imitator_loss_curve", "half_life_boot")
# Fields every row has, null where a flag replaced the fit.
_ALWAYS = {"half_life": None, "half_life_ci": None, "fit": None}


def _num(v, digits=3) -> str:
  if v is None:
    return "-"
  if isinstance(v, float) and math.isinf(v):
    return "inf"
  return f"{v:.{digits}g}"


def _ci(v, ci) -> str:
  return f"{_num(v)} [{_num(ci[0])}, {_num(ci[1])}]" if ci else _num(v)


def half_life_text(row: dict) -> str:
  """The half-life with CI, or the flag that replaced it (with the model-free crossing
  time when B went too fast to fit)."""
  if row.get("flag") == "too_fast":
    return (f"too fast: crossing {_ci(row['half_life_crossing'], row['half_life_crossing_ci'])}")
  if row.get("flag"):
    return row["flag"].replace("_", " ")
  return _ci(row["half_life"], row["half_life_ci"])


def imitator_text(row: dict) -> str:
  """The imitator's half-life like `half_life_text`, from the imitator_* fields."""
  return half_life_text({k[len("imitator_"):]: v for k, v in row.items()
                         if k.startswith("imitator_")})


def summary(row: dict) -> str:
  """One log line of a finished cell."""
  text = (f"half-life {half_life_text(row)} ({row.get('fit') or '-'}), retained "
          f"{_ci(row.get('retained'), row.get('retained_ci'))}")
  if row.get("imitator_covered"):
    text += (f"; imitator half-life {imitator_text(row)}, gap "
             f"{_ci(row['forgetting_gap'], row['forgetting_gap_ci'])}")
  elif "imitator_covered" in row:
    text += "; imitator: not covered"
  return text


def scaling(rows: list) -> list:
  """Per (regularizer, strength, overlap, depth): the exponent of half-life against width
  (log-log) and its bootstrap CI, over the widths whose cells were fitted."""
  groups = collections.defaultdict(list)
  for r in rows:
    groups[(r["regularizer"], r["strength"], r["overlap"], r["depth"])].append(r)
  out = []
  for (reg, strength, overlap, depth), group in groups.items():
    fitted = sorted((r for r in group if not r.get("flag") and r.get("half_life_boot")
                     and np.isfinite(r["half_life"])), key=lambda r: r["width"])
    fit = decay_fit.scaling_exponent([r["width"] for r in fitted],
                                     [r["half_life_boot"] for r in fitted],
                                     [r["half_life"] for r in fitted])
    out.append({"regularizer": reg, "strength": strength, "overlap": overlap,
                "depth": depth, "widths": [r["width"] for r in fitted],
                "n_widths": len(group), **fit})
  return out


def _default_rows(rows):
  """Rows of each regularizer at the strength the main grid uses (the most common)."""
  counts = collections.Counter((r["regularizer"], r["strength"]) for r in rows)
  best = {}
  for (reg, s), n in counts.items():
    if reg not in best or n > counts[(reg, best[reg])]:
      best[reg] = s
  return [r for r in rows if best[r["regularizer"]] == r["strength"]]


def _comparable(row: dict) -> float | None:
  """A half-life to rank cells by: the fit, inf when B never decays, the model-free
  crossing when it went too fast to fit, None when B was never learned."""
  flag = row.get("flag")
  if flag == "never_decays":
    return math.inf
  if flag == "too_fast":
    return row["half_life_crossing"]
  if flag:
    return None
  return row["half_life"]


def headline(rows: list) -> list:
  """Per overlap (depth 1, default strengths): regularizers ranked by the geometric mean
  over widths of their half-lives (`_comparable`; cells never learned left out)."""
  sub = [r for r in _default_rows(rows) if r["depth"] == 1]
  out = []
  for overlap in dict.fromkeys(r["overlap"] for r in sub):
    ranks = []
    for reg in dict.fromkeys(r["regularizer"] for r in sub):
      values = [_comparable(r) for r in sub if r["overlap"] == overlap
                and r["regularizer"] == reg]
      values = [v for v in values if v is not None and v > 0]
      if values:
        ranks.append((float(np.exp(np.mean(np.log(values)))), reg))
    ranks.sort(reverse=True)
    out.append({"overlap": overlap, "ranking": [{"regularizer": reg, "mean_half_life": v}
                                                for v, reg in ranks]})
  return out


def markdown(report: dict) -> str:
  rows = report["rows"]
  spec = report["stream"]
  lines = ["# Decay of an unpracticed behaviour", "",
           f"Phase 1: {spec['phase1']} steps of A and B alternating; phase 2: "
           f"{spec['phase1'] * spec['phase2_multiple']} steps of A alone; B probes read "
           f"every {spec['probe_every']} steps. Half-lives are in phase-2 steps (time to "
           "lose half of what B will lose), with 95% bootstrap CIs over teachers; retained "
           "is B's gain over untrained at the end of phase 2 / at the end of phase 1.", ""]
  main = _default_rows(rows)
  lines += ["## Which regularizer keeps B longest (depth 1)", "",
            "Geometric mean over widths of the half-life (inf: B never decays; too-fast "
            "cells count their crossing time; cells where B was not learned are left out).",
            "", "| overlap | regularizers, longest-keeping first |", "|---|---|"]
  for h in report["headline"]:
    lines.append(f"| {h['overlap']} | " + ", ".join(
        f"{r['regularizer']} ({_num(r['mean_half_life'])})" for r in h["ranking"]) + " |")
  lines.append("")
  for depth in sorted({r["depth"] for r in rows}):
    sub = [r for r in main if r["depth"] == depth]
    widths = sorted({r["width"] for r in sub})
    lines += [f"## Half-life, depth {depth}", "",
              "| regularizer | overlap | " + " | ".join(f"width {w}" for w in widths) + " |",
              "|---|---|" + "---|" * len(widths)]
    by = {(r["regularizer"], r["overlap"], r["width"]): r for r in sub}
    for reg, overlap in dict.fromkeys((r["regularizer"], r["overlap"]) for r in sub):
      cells = [by.get((reg, overlap, w)) for w in widths]
      lines.append(f"| {reg} | {overlap} | " + " | ".join(
          half_life_text(c) + f"; kept {_num(c.get('retained'), 2)}" if c else "-"
          for c in cells) + " |")
    lines.append("")
  lines += ["## Scaling: half-life ~ width^exponent", "",
            "| regularizer | strength | overlap | depth | exponent [95% CI] | widths fitted |",
            "|---|---|---|---|---|---|"]
  for s in report["scaling"]:
    lines.append(f"| {s['regularizer']} | {_num(s['strength'])} | {s['overlap']} | "
                 f"{s['depth']} | {_ci(s['exponent'], s['exponent_ci'])} | "
                 f"{len(s['widths'])} of {s['n_widths']} |")
  swept = [r for r in rows if r not in main]
  if swept:
    lines += ["", "## Strength sweep", "",
              "| regularizer | strength | overlap | width | half-life | retained |",
              "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["regularizer"], r["overlap"], r["width"],
                                         r["strength"])):
      if r["regularizer"] in {s["regularizer"] for s in swept} and r["depth"] == 1 and (
          r["overlap"] in {s["overlap"] for s in swept}):
        lines.append(f"| {r['regularizer']} | {_num(r['strength'])} | {r['overlap']} | "
                     f"{r['width']} | {half_life_text(r)} | "
                     f"{_ci(r['retained'], r['retained_ci'])} |")
  imitated = [r for r in rows if "imitator_covered" in r]
  if imitated:
    lines += ["", f"## Imitator ({imitated[0]['imitator']}) beside the teachers", "",
              "| cell | teacher half-life | imitator half-life | forgetting gap |",
              "|---|---|---|---|"]
    for r in imitated:
      if r["imitator_covered"]:
        lines.append(f"| {r['cell']} | {half_life_text(r)} | {imitator_text(r)} | "
                     f"{_ci(r['forgetting_gap'], r['forgetting_gap_ci'])} |")
    uncovered = [r for r in imitated if not r["imitator_covered"]]
    if uncovered:
      lines += ["", f"Not covered by the imitator's family ({len(uncovered)} cells): "
                + ", ".join(r["cell"] for r in uncovered) + ".",
                f"Why, for {uncovered[0]['cell']}: {uncovered[0]['imitator_reason']}."]
  lines += ["", "Plots: " + ", ".join(report["plots"]), ""]
  return "\n".join(lines)


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot_scaling(rows: list, depth: int, path: str) -> None:
  """Half-life against width, log-log: one panel per overlap, one line per regularizer
  (legend: its fitted exponent); flagged cells are counted in the panel."""
  plt = _plt()
  sub = [r for r in _default_rows(rows) if r["depth"] == depth]
  overlaps = list(dict.fromkeys(r["overlap"] for r in sub))
  fig, axes = plt.subplots(1, len(overlaps), figsize=(3.2 * len(overlaps), 3.2),
                           squeeze=False, sharey=True)
  regs = list(dict.fromkeys(r["regularizer"] for r in sub))
  for ax, overlap in zip(axes[0], overlaps):
    for k, reg in enumerate(regs):
      cells = [r for r in sub if r["overlap"] == overlap and r["regularizer"] == reg]
      pts = sorted((r for r in cells if not r.get("flag") and np.isfinite(r["half_life"])),
                   key=lambda r: r["width"])
      if not pts:
        continue
      w = np.array([r["width"] for r in pts])
      h = np.array([r["half_life"] for r in pts])
      lo = np.array([min(r["half_life_ci"][0], r["half_life"]) for r in pts])
      # An open-ended CI (a draw that did not decay) is drawn up to 100 x the point.
      hi = np.minimum([r["half_life_ci"][1] for r in pts], 100.0 * h)
      fit = decay_fit.scaling_exponent(w, [r["half_life_boot"] for r in pts], h)
      label = reg if fit["exponent"] is None else f"{reg} (exp. {fit['exponent']:.2f})"
      ax.errorbar(w, h, yerr=[h - lo, hi - h], marker="o", ms=3, capsize=2, label=label,
                  color=f"C{k}")
    flags = collections.Counter(r["flag"] for r in sub if r["overlap"] == overlap
                                and r.get("flag"))
    if flags:
      ax.text(0.03, 0.03, "\n".join(f"{n} cells: {f.replace('_', ' ')}" for f, n in
                                    flags.items()), transform=ax.transAxes, fontsize=7)
    ax.legend(fontsize=6, loc="upper left")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(overlap, fontsize=9)
    ax.set_xlabel("width")
  axes[0][0].set_ylabel("half-life of B (phase-2 steps)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_heatmap(rows: list, width: int, depth: int, path: str) -> None:
  """log10 half-life over regularizer x overlap; flagged cells are written in."""
  plt = _plt()
  sub = [r for r in _default_rows(rows) if r["depth"] == depth and r["width"] == width]
  regs = list(dict.fromkeys(r["regularizer"] for r in sub))
  overlaps = list(dict.fromkeys(r["overlap"] for r in sub))
  grid = np.full((len(regs), len(overlaps)), np.nan)
  fig, ax = plt.subplots(figsize=(1.3 * len(overlaps) + 2, 0.5 * len(regs) + 1.5))
  for r in sub:
    i, j = regs.index(r["regularizer"]), overlaps.index(r["overlap"])
    if not r.get("flag") and np.isfinite(r["half_life"]) and r["half_life"] > 0:
      grid[i, j] = np.log10(r["half_life"])
      text = _num(r["half_life"], 2)
    else:
      text = (r.get("flag") or "inf").replace("_", "\n")
    ax.text(j, i, text, ha="center", va="center", fontsize=7)
  im = ax.imshow(grid, cmap="viridis", aspect="auto")
  fig.colorbar(im, ax=ax, label="log10 half-life (steps)")
  ax.set_xticks(range(len(overlaps)), overlaps, rotation=30, fontsize=8)
  ax.set_yticks(range(len(regs)), regs, fontsize=8)
  ax.set_title(f"half-life of B, width {width}, depth {depth}", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write(out: str, rows: list, spec) -> dict:
  """report.json, report.md and the PNGs under `out`; returns the report."""
  plots = []
  for depth in sorted({r["depth"] for r in rows}):
    name = f"half_life_vs_width_d{depth}.png"
    plot_scaling(rows, depth, os.path.join(out, name))
    plots.append(name)
    for width in sorted({r["width"] for r in rows if r["depth"] == depth}):
      name = f"heatmap_w{width}_d{depth}.png"
      plot_heatmap(rows, width, depth, os.path.join(out, name))
      plots.append(name)
  report = {"stream": dict(spec.__dict__), "headline": headline(rows),
            "scaling": scaling(rows), "plots": plots,
            "rows": [{**_ALWAYS, **{k: v for k, v in r.items() if k not in _BULKY}}
                     for r in rows]}
  workdir_lib.write_atomically(os.path.join(out, "report.json"),
                               json.dumps(_finite(report), indent=1))
  workdir_lib.write_atomically(os.path.join(out, "report.md"), markdown(report))
  return report


def _finite(value):
  """inf as the string 'inf', NaN as None: report.json stays strict JSON."""
  if isinstance(value, float) and not math.isfinite(value):
    return "inf" if value > 0 else ("-inf" if value < 0 else None)
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite(v) for v in value]
  return value
