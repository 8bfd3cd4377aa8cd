"""The evaluation report as markdown tables and matplotlib plots (PNG)."""

from __future__ import annotations

import collections

import numpy as np

from imitator.metrics import HORIZON_MULTIPLES, IDENTIFIED_NIE
from imitator.rollout.references import BASELINES, ORACLE, REFERENCES, UNTRAINED


def with_ci(value, ci, digits=3):
  """'v [lo, hi]'; 'diverged' for a null figure, huge ones without their CI."""
  if value is None:
    return "diverged"
  if abs(value) >= 1e4:
    return f"{value:.2g}"
  fmt = lambda v: "?" if v is None else f"{v:.{digits}f}"
  return f"{fmt(value)} [{fmt(ci[0])}, {fmt(ci[1])}]"


def value_text(value, digits=3):
  """A figure alone, as `with_ci` writes it."""
  if value is None:
    return "diverged"
  return f"{value:.2g}" if abs(value) >= 1e4 else f"{value:.{digits}f}"


def kind_table(results: list, t_train: int, reference: str) -> str:
  """Per learner kind, at the rows' longest horizon, teacher-forced and for each cut
  alone: the trained imitator's and `untrained`'s NIE against `reference` [95% CI], and
  the paired ratio trained / untrained (metrics.paired_comparison) [95% paired CI]."""
  trained = [r for r in results if any("versus_untrained" in e
                                       for e in r.get("nie_by_kind", {}).values())]
  if not trained:
    return "(no trained imitator rows)"
  label = trained[0]["imitator"]
  H = max(r["horizon"] for r in trained)
  at = {(r["imitator"], r.get("observe")): r for r in results if r["horizon"] == H}
  horizon = f"{H // t_train}x" if H % t_train == 0 else f"{H} steps"
  head = ["kind", "teachers", "seen", label, UNTRAINED,
          f"{label} / {UNTRAINED} [paired 95% CI]"]
  lines = [f"per learner kind at {horizon} T_train, NIE vs {reference} chance [95% CI]:",
           "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  cuts = sorted({o for (n, o) in at if n == label}, key=lambda o: -1 if o is None else o)
  for kind in sorted(trained[0]["nie_by_kind"]):
    for cut in cuts:
      mine, base = at.get((label, cut)), at.get((UNTRAINED, cut))
      if mine is None or kind not in mine["nie_by_kind"]:
        continue
      e = mine["nie_by_kind"][kind]
      u = base["nie_by_kind"].get(kind) if base else None
      cmp_ = e.get("versus_untrained", {})
      lines.append("| " + " | ".join([
          kind, str(e["n_teachers"]), "all" if cut is None else f"first {cut}",
          with_ci(e.get(reference), e.get(f"{reference}_ci", [None, None])),
          "-" if u is None else with_ci(u.get(reference),
                                         u.get(f"{reference}_ci", [None, None])),
          with_ci(cmp_.get("nie_ratio"), cmp_.get("nie_ratio_ci", [None, None]))]) + " |")
  return "\n".join(lines)


def _divergence(row, eps):
  d = row.get("horizon_to_divergence", {}).get(str(eps))
  if d is None:  # a row written at the end of training
    return "n/a"
  if d["step"] is None:
    return "never"
  return f"{d['step']} ({d['t_train_multiple']:.2f}x)"


def identification(row, median: bool = False) -> str:
  """A row's identification step as a multiple of T_train ('n/a' for older reports)."""
  d = row.get("identification_step_median" if median else "identification_step")
  if d is None:
    return "n/a"
  text = "never" if d["step"] is None else f"{d['t_train_multiple']:.2f}x"
  if median and row.get("identified_fraction") is not None:
    text += f" ({row['identified_fraction']:.0%} identified)"
  return text


def _strength(s) -> str:
  return f"{s:g}"


def alone_text(observe) -> str:
  """'' for teacher-forced figures, else ', alone after K steps'."""
  return "" if observe is None else f", alone after {observe} steps"


def free_running(row) -> str:
  """A row's free-running horizon: the median teacher's steps alone until its NIE
  passes the threshold, as a multiple of T_train with its CI ('beyond Nx')."""
  d = row.get("free_running_horizon")
  if d is None:
    return "n/a"
  fmt = lambda v: "beyond" if v is None else f"{v:.2f}x"
  lo, hi = d["t_train_multiple_ci"]
  text = (f"beyond {d['within_steps']} steps" if d["steps"] is None
          else f"{fmt(d['t_train_multiple'])} [{fmt(lo)}, {fmt(hi)}]")
  return text + f" ({d['beyond_fraction']:.0%} beyond)"


def rows_by(report: dict, observe=None) -> dict:
  """{(imitator, shift, strength, horizon): row} of report.json's results, teacher-
  forced (observe None) or alone after `observe` steps."""
  return {(r["imitator"], r["shift"], r.get("strength"), r["horizon"]): r
          for r in report["results"] if r.get("observe") == observe}


def better_baseline(by_key: dict, shift, strength, horizon):
  """The baseline (BASELINES) with the lower NIE at (shift, strength, horizon), or None;
  a baseline that blew up (NIE null) is never the better one."""
  found = [(by_key[(b, shift, strength, horizon)]["nie"], b) for b in BASELINES
           if (b, shift, strength, horizon) in by_key
           and by_key[(b, shift, strength, horizon)]["nie"] is not None]
  return min(found)[1] if found else None


def comparison(report: dict, shift, strength, horizon, versus, observe=None):
  """The paired comparison of the trained imitator with `versus`, or None."""
  return next((c for c in report.get("comparisons", []) if
               (c["shift"], c.get("strength"), c["horizon"], c["versus"], c.get("observe"))
               == (shift, strength, horizon, versus, observe)), None)


def _breaking_table(points: list) -> list:
  shifts = sorted({p["shift"] for p in points})
  label = lambda p: p["imitator"] + alone_text(p.get("observe"))
  by = {(label(p), p["shift"]): p for p in points}
  names = list(dict.fromkeys(label(p) for p in points))
  lines = [f"## breaking points: the smallest swept strength whose NIE at "
           f"{HORIZON_MULTIPLES[-1]}x T_train exceeds {IDENTIFIED_NIE:g}", "",
           "| imitator | " + " | ".join(shifts) + " |", "|" + "---|" * (len(shifts) + 1)]
  for name in names:
    cells = []
    for shift in shifts:
      p = by.get((name, shift))
      if p is None:
        cells.append("")
      elif p["breaking_strength"] is None:
        cells.append(f"none up to {_strength(max(p['swept']))}")
      else:
        cells.append(_strength(p["breaking_strength"]))
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return lines + [""]


def _shift_table(shift: str, rows: list, t: int, observe=None) -> list:
  horizons = sorted({r["horizon"] for r in rows})
  n = rows[0]["n_teachers"]
  excluded = max(r.get("n_teachers_excluded", 0) for r in rows)
  gone = f", {excluded} excluded: their behaviour blew up" if excluded else ""
  mode = ("teacher-forced" if observe is None
          else f"alone after the teacher's first {observe} steps ({observe / t:g}x)")
  lines = [f"## shift: {shift}, {mode} ({n} teachers{gone})", ""]
  head = ["imitator"] + [f"H={h} ({h / t:g}x)" for h in horizons] + [
      "diverges @0.1", "diverges @0.25", "identified (population)",
      "identified (median teacher)", f"task gap @H={horizons[0]}"]
  if observe is not None:
    head.append(f"free-running horizon (median teacher, NIE > {IDENTIFIED_NIE:g})")
  lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  cells = collections.defaultdict(dict)
  for r in rows:
    cells[r["imitator"]][r["horizon"]] = r
  notes = []
  for name, by_h in cells.items():
    # The longest horizon's row is the battery's (training writes only H = T_train).
    last = by_h[max(by_h)]
    first = by_h[min(by_h)]
    row = [name] + [with_ci(by_h[h]["nie"], by_h[h]["nie_ci"]) if h in by_h else ""
                    for h in horizons]
    row += [_divergence(last, 0.1), _divergence(last, 0.25), identification(last),
            identification(last, median=True),
            with_ci(first["task_gap"], first["task_gap_ci"]) if "task_gap" in first else ""]
    if observe is not None:
      row.append(free_running(last))
    lines.append("| " + " | ".join(row) + " |")
    if last.get("note"):
      notes.append(f"- {name}: {last['note']}")
  if notes:
    lines += [""] + notes
  extra = [(name, by_h) for name, by_h in cells.items()
           if "hparam_recovery" in by_h[max(by_h)]]
  for name, by_h in extra:
    fields = sorted(by_h[max(by_h)]["hparam_recovery"])
    lines += ["", f"hparam recovery of {name} (|log ratio| for log-scale fields, else "
              "|difference|):", "",
              "| horizon | " + " | ".join(fields) + " |", "|" + "---|" * (len(fields) + 1)]
    for h in sorted(h for h in by_h if "hparam_recovery" in by_h[h]):
      rec = by_h[h]["hparam_recovery"]
      lines.append(f"| {h} | " + " | ".join(
          "n/a" if rec[f] is None else f"{rec[f]:.3g}" for f in fields) + " |")
  agree = [(name, by_h) for name, by_h in cells.items()
           if "argmax_agreement" in by_h[max(by_h)]]
  if agree:
    lines += ["", "argmax agreement: " + ", ".join(
        f"{name} {by_h[max(by_h)]['argmax_agreement']:.3f}" for name, by_h in agree)]
  return lines + [""]


def _sweep_table(shift: str, rows: list, t: int, observe=None) -> list:
  """NIE per strength at 1x / 16x (alone: the first horizon after the cut / 16x), then
  the median per-teacher NIE (rows written before it existed show n/a there)."""
  strengths = sorted({r["strength"] for r in rows})
  lo, hi = min(r["horizon"] for r in rows), HORIZON_MULTIPLES[-1] * t
  by = {(r["imitator"], r["strength"], r["horizon"]): r for r in rows}
  names = list(dict.fromkeys(r["imitator"] for r in rows if r["imitator"] != ORACLE))
  lines = [f"## sweep: {shift}{alone_text(observe)} (NIE at {lo / t:g}x / {hi // t}x "
           "T_train per strength; median over teachers of each teacher's own NIE below)", "",
           "| imitator | " + " | ".join(f"s={_strength(s)}" for s in strengths) + " |",
           "|" + "---|" * (len(strengths) + 1)]
  for key, suffix in (("nie", ""), ("nie_median", " (median)")):
    for name in names:
      cells = [" / ".join(value_text(by[(name, s, h)][key])
                          if key in by.get((name, s, h), {}) else "n/a" for h in (lo, hi))
               for s in strengths]
      lines.append(f"| {name}{suffix} | " + " | ".join(cells) + " |")
  used = []
  for s in strengths:
    r = next(r for r in rows if r["strength"] == s)
    used.append(f"{r['n_teachers']} ({r.get('n_teachers_excluded', 0)})")
  lines.append("| teachers used (excluded) | " + " | ".join(used) + " |")
  return lines + [""]


def _comparison_table(report: dict, battery: dict, t: int) -> list:
  lines = ["## comparisons: the trained imitator against the better baseline (paired "
           "bootstrap over the same teachers)", "",
           "| shift | horizon | better baseline | NIE difference [95% CI] | NIE ratio "
           "[95% CI] |", "|---|---|---|---|---|"]
  found = False
  for shift, observe in battery:
    by_key = rows_by(report, observe)
    for h in sorted({r["horizon"] for r in battery[(shift, observe)]}
                    & {t, 2 * t, HORIZON_MULTIPLES[-1] * t}):
      versus = better_baseline(by_key, shift, None, h)
      c = versus and comparison(report, shift, None, h, versus, observe)
      if c:
        found = True
        lines.append(f"| {shift}{alone_text(observe)} | {h // t}x | {versus} | "
                     f"{with_ci(c['nie_diff'], c['nie_diff_ci'])} | "
                     f"{with_ci(c['nie_ratio'], c['nie_ratio_ci'])} |")
  return lines + [""] if found else []


def markdown(report: dict) -> str:
  """report.json as tables: breaking points, NIE [95% CI] per shift, imitator and horizon
  with identification steps, strength sweeps, comparisons, forgetting."""
  t = report["t_train"]
  battery = collections.defaultdict(list)
  sweeps = collections.defaultdict(list)
  for r in report["results"]:
    (battery if r.get("strength") is None else sweeps)[(r["shift"], r.get("observe"))
                                                      ].append(r)
  lines = [f"# Evaluation report (T_train = {t})", "",
           "NIE = imitation error / chance error over the last T_train steps before the "
           "horizon, with a 95% bootstrap CI over teachers (0 = perfect, 1 = no better "
           "than another random teacher). Diverges @eps: first horizon H >= T_train "
           "whose NIE over the last T_train steps exceeds eps (and H / T_train). "
           f"Identified: the step (/ T_train) from which the NIE over the trailing T_train "
           f"steps stays <= {IDENTIFIED_NIE:g} to the end of the longest horizon, for the "
           "population and for the median teacher. References: untrained (the imitator "
           "at its initial meta-params), known_hparams (the teacher's hyperparameters, "
           "fresh weights), twin (the teacher's hyperparameters and weights, its own "
           "random draws), oracle (the teacher). Teacher-forced tables: every step's "
           "behaviour is shown to the imitators. Alone: only the teacher's first K steps "
           "are; then the imitators run in its place from the stream's inputs and labels "
           "(references never see the teacher: their rows are the same). Free-running "
           "horizon: the steps after the cut until the median teacher's own NIE over the "
           f"trailing T_train steps exceeds {IDENTIFIED_NIE:g}, as a multiple of T_train "
           "with its 95% CI.", ""]
  if report.get("breaking_points"):
    lines += _breaking_table(report["breaking_points"])
  forgetting = battery.pop(("forgetting", None), [])
  for (shift, observe), rows in battery.items():
    lines += _shift_table(shift, rows, t, observe)
  for (shift, observe), rows in sweeps.items():
    lines += _sweep_table(shift, rows, t, observe)
  lines += _comparison_table(report, battery, t)
  for shift in dict.fromkeys(s for (s, _), rows in battery.items()
                             if any("nie_by_kind" in r for r in rows)):
    rows = [r for (s, _), rs in battery.items() if s == shift for r in rs]
    lines += [f"## {shift}: per learner kind", "",
              kind_table(rows, t, rows[0].get("chance", "")), ""]
  if forgetting:
    lines += ["## forgetting (tasks A+B, then A alone; loss on held-out B)", "",
              "| imitator | mean gap to the teacher's curve [95% CI] | teachers |",
              "|---|---|---|"]
    for r in forgetting:
      lines.append(f"| {r['imitator']} | {with_ci(r['forgetting_gap'], r['forgetting_gap_ci'], 4)}"
                   f" | {r['n_teachers']} |")
    lines.append("")
  for s in report.get("skipped", []):
    at = "" if s.get("strength") is None else f" at strength {_strength(s['strength'])}"
    lines.append(f"- skipped {s['shift']}{at}: {s['reason']}")
  return "\n".join(lines) + "\n"


_FLOOR, _CEILING = 1e-4, 1e4  # the widest y range of a plot


def _plottable(values):
  """Values for a log axis: huge or +inf ones (blown up) clipped just above the widest
  y range, so drawn off the top; nan and non-positive ones masked (not drawn)."""
  v = np.minimum(np.asarray(values, np.float64), 10 * _CEILING)
  return np.ma.masked_where(np.isnan(v) | (v <= 0), v)


def _log_limits(ax, series, floor=_FLOOR, ceiling=_CEILING):
  """y limits around the drawn values, clipped to [floor, ceiling] so that a curve that
  blew up cannot squash the others."""
  drawn = np.concatenate([np.ma.compressed(_plottable(s)) for s in series] or [[]])
  if drawn.size:
    ax.set_ylim(max(drawn.min() / 1.5, floor), min(drawn.max() * 1.5, ceiling))


def _style(name):
  """References dashed, the oracle never drawn (NIE 0)."""
  return dict(ls="--") if name in REFERENCES else dict(ls="-")


def plot_nie(curves: dict, t_train: int, path: str, threshold: float = IDENTIFIED_NIE,
             cuts: dict | None = None):
  """NIE over the trailing t_train steps against the step (log axes) with 95% bands over
  teachers, one panel per shift (and per cut: alone after it); T_train dashed, the cut
  red, the identification threshold dotted. curves: {panel: {name: {"steps", "nie",
  "lo", "hi"}}}; cuts: {panel: steps seen before the imitators ran alone}."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  shifts = list(curves)
  cols = min(4, len(shifts))
  rows = -(-len(shifts) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
  for ax, shift in zip(axes.flat, shifts):
    drawn = []
    for name, c in curves[shift].items():
      steps = np.asarray(c["steps"])
      line, = ax.plot(steps, _plottable(c["nie"]), label=name, lw=1, **_style(name))
      ax.fill_between(steps, _plottable(c["lo"]).filled(np.nan),
                      _plottable(c["hi"]).filled(np.nan), color=line.get_color(),
                      alpha=0.15, lw=0)
      drawn += [c["nie"], c["lo"], c["hi"]]
    ax.axvline(t_train, color="k", ls="--", lw=0.8)
    if (cuts or {}).get(shift) is not None:
      ax.axvline(cuts[shift], color="tab:red", ls="-.", lw=1.0)
    ax.axhline(threshold, color="k", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _log_limits(ax, drawn + [[threshold]])
    ax.set_title(shift, fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel(f"NIE (last {t_train} steps)")
  for ax in axes.flat[len(shifts):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=7, title=f"oracle: NIE 0; dotted: {threshold:g}; blown "
                      "up: off the top", title_fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_sweep(report: dict, shift: str, log_x: bool, path: str,
               threshold: float = IDENTIFIED_NIE):
  """NIE against the swept strength of `shift` at 1x and 16x T_train (two panels), one
  line per imitator, baseline and reference with its 95% CI band."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  t = report["t_train"]
  rows = [r for r in report["results"] if r["shift"] == shift and r.get("strength") is not None
          and r["imitator"] != ORACLE]
  names = list(dict.fromkeys(r["imitator"] for r in rows))
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), squeeze=False)
  for ax, h in zip(axes.flat, (t, HORIZON_MULTIPLES[-1] * t)):
    drawn = []
    for name in names:
      pts = sorted((r["strength"], r["nie"], r["nie_ci"]) for r in rows
                   if r["imitator"] == name and r["horizon"] == h)
      if not pts:
        continue
      s = np.array([p[0] for p in pts])
      # A null figure blew up: drawn off the top.
      none = lambda v: np.inf if v is None else v
      nie = [none(p[1]) for p in pts]
      lo, hi = ([none(p[2][i]) for p in pts] for i in (0, 1))
      line, = ax.plot(s, _plottable(nie), marker="o", ms=3, lw=1, label=name, **_style(name))
      ax.fill_between(s, _plottable(lo).filled(np.nan), _plottable(hi).filled(np.nan),
                      color=line.get_color(), alpha=0.15, lw=0)
      drawn += [nie, lo, hi]
    ax.axhline(threshold, color="k", ls=":", lw=0.8)
    if log_x:
      ax.set_xscale("log")
    strengths = sorted({r["strength"] for r in rows})
    ax.set_xticks(strengths, [f"{v:g}" for v in strengths], minor=False)
    ax.set_xticks([], minor=True)
    ax.set_yscale("log")
    _log_limits(ax, drawn + [[threshold]])
    ax.set_title(f"{shift}: NIE at {h // t}x T_train", fontsize=9)
    ax.set_xlabel("strength")
    ax.set_ylabel("NIE")
  axes.flat[0].legend(fontsize=7, title="blown up: off the top", title_fontsize=7)
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


def plot_ensemble(report: dict, label: str, path: str) -> None:
  """NIE against the ensemble size K (K = 1: the imitator `label`), shift none, at each
  horizon of the rows, teacher-forced and alone after each cut, with 95% CI bands."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  t = report["t_train"]

  def size(name):
    return 1 if name == label else int(name.split("/")[1]) if name.startswith(
        "ensemble/") else None

  rows = [r for r in report["results"] if r["shift"] == "none"
          and r.get("strength") is None and size(r["imitator"]) is not None]
  cuts = sorted({r.get("observe") for r in rows}, key=lambda c: -1 if c is None else c)
  fig, axes = plt.subplots(1, len(cuts), figsize=(5 * len(cuts), 3.6), squeeze=False)
  for ax, cut in zip(axes.flat, cuts):
    for h in sorted({r["horizon"] for r in rows}):
      pts = sorted((size(r["imitator"]), r["nie"], r["nie_ci"]) for r in rows
                   if r["horizon"] == h and r.get("observe") == cut and r["nie"] is not None)
      if len(pts) < 2:
        continue
      k = np.array([p[0] for p in pts])
      line, = ax.plot(k, [p[1] for p in pts], marker="o", ms=3, lw=1,
                      label=f"{h // t}x T_train")
      ax.fill_between(k, [p[2][0] for p in pts], [p[2][1] for p in pts],
                      color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("ensemble size K")
    ax.set_ylabel("NIE")
    ax.set_title("teacher-forced" if cut is None else f"alone after {cut} steps",
                 fontsize=9)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
