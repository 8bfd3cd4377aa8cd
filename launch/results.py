"""Markdown result tables and the headline figure of several runs, generated only from
their files.

    python -m launch.results --workdirs=runs/default,runs/gradient
    python -m launch.results --workdirs=runs/default+runs/default_1024,runs/mixed \
        --readme=README.md --results=docs/RESULTS.md --figure=docs/headline.png

Reads each run's config.json and eval/report.json; `A+B` is one run evaluated into
copies (B's rows fill in what A lacks, e.g. a 1024 x T_train evaluation kept apart), the
command and config being A's. Prints (a) the alone table: per run, the trained
imitator's NIE teacher-forced and alone after the teacher's first T_train steps, its
free-running horizon, beside untrained and known_hparams alone, with the paired ratio to
known_hparams; (b) a teacher-forced table, one row per run: NIE at 1x and 16x T_train
(shift none) and the median identification step of the trained imitator, the baselines
and the references; (c) per run, NIE at 1x and 16x on every shift of the battery,
teacher-forced and alone; (d) breaking points of the runs with strength sweeps; (e) the
paired comparison of the imitator with the better baseline; (f) per learner kind, for runs
whose rows have `nie_by_kind` (families with non-gradient members, recorded teachers),
teacher-forced and alone, beside untrained; (g) each run's imitator against the first
listed run of its family, paired over the same held-out teachers (rows that kept their
per-teacher figures, `per_teacher`, with equal `teachers_id`). Each table states the
command of its run once, above it, where it holds one run. With --readme, tables (a), (g) and (f)
replace the lines between `<!-- results:begin -->` and `<!-- results:end -->`; with
--results, all of them replace that block of the file given; --figure draws the first
run's NIE against the horizon (teacher-forced and alone, with 95% bands). A missing file
or figure shows as "n/a (reason)". --acting=DIR,... (runs of launch/configs/bandits.py)
puts acting runs' tables (`imitator.acting.report.markdown`) between
`<!-- acting:begin -->` and `<!-- acting:end -->` of the --readme file (the first run)
and of the --results file (every run). --frontier=DIR,... puts the fidelity/capability
frontier of each run (DIR/frontier/frontier.json, `launch.frontier`) between
`<!-- frontier:begin -->` and `<!-- frontier:end -->` of both files.
"""

from __future__ import annotations

import json
import os

import numpy as np

from absl import flags
from ml_collections import config_dict

from imitator import metrics
from imitator.acting import report as acting_report
from imitator.evaluation import frontier as frontier_lib
from imitator.evaluation import render, report_json
from imitator.kinds import registry
from imitator.rollout import references
from imitator.runtime import workdir as workdir_lib
from launch import cli

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
ACTING_BEGIN, ACTING_END = "<!-- acting:begin -->", "<!-- acting:end -->"
FRONTIER_BEGIN, FRONTIER_END = "<!-- frontier:begin -->", "<!-- frontier:end -->"
OTHERS = references.BASELINES + (references.UNTRAINED, references.KNOWN_HPARAMS,
                                 references.TWIN)

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Run directories, comma-separated.",
                              required=True)
_README = flags.DEFINE_string("readme", None, "Markdown file whose results block "
                              f"({BEGIN} ... {END}) the alone table replaces.")
_RESULTS = flags.DEFINE_string("results", None, "Markdown file whose results block every "
                               "table replaces (docs/RESULTS.md).")
_FIGURE = flags.DEFINE_string("figure", None, "PNG of the first run's NIE against the "
                              "horizon, teacher-forced and alone.")
_FRONTIER = flags.DEFINE_list("frontier", [], "Runs whose frontier/frontier.json "
                              "(launch.frontier) goes into --readme and --results.")
_ACTING = flags.DEFINE_list("acting", [], "Runs of launch/configs/bandits.py whose tables "
                            f"replace the {ACTING_BEGIN} ... {ACTING_END} block.")


def _read(workdir: str) -> dict:
  """{"workdir", "config": dict or None, "report": dict or None, "missing": reason}."""
  run = {"workdir": workdir, "config": None, "report": None, "missing": {}}
  for key, rel in (("config", "config.json"), ("report", os.path.join("eval", "report.json"))):
    path = os.path.join(workdir, rel)
    try:
      with open(path) as f:
        run[key] = json.load(f)
    except FileNotFoundError:
      run["missing"][key] = f"no {rel}"
    except (OSError, ValueError) as e:
      run["missing"][key] = f"{rel} unreadable: {e}"
  return run


def load(workdirs: str) -> dict:
  """A run read from `A` or `A+B+...` (copies of A evaluated apart: their rows and
  comparisons fill in keys A's report lacks)."""
  first, *more = [_read(w) for w in workdirs.split("+")]
  for other in more:
    rep = other["report"]
    if rep is None:
      continue
    if first["report"] is None:
      first["report"], first["missing"] = rep, {k: v for k, v in first["missing"].items()
                                                if k != "report"}
      continue
    for field, key in (("results", report_json.ROW_KEY),
                       ("comparisons", report_json.COMPARISON_KEY)):
      have = {tuple(r.get(k) for k in key) for r in first["report"].get(field, [])}
      first["report"].setdefault(field, []).extend(
          r for r in rep.get(field, []) if tuple(r.get(k) for k in key) not in have)
  return first


def _na(reason: str) -> str:
  return f"n/a ({reason})"


def _get(cfg: dict | None, *path):
  for key in path:
    if not isinstance(cfg, dict) or key not in cfg:
      return None
    cfg = cfg[key]
  return cfg


def command(run: dict) -> str:
  """The command that trained the run (workdir/command.txt, written by launch.train),
  else the workdir."""
  try:
    with open(os.path.join(run["workdir"], "command.txt")) as f:
      recorded = f.read().strip()
  except OSError:
    recorded = ""
  return f"`{recorded}`" if recorded else f"`{run['workdir']}`"


def family(run: dict) -> str:
  return _get(run["config"], "family", "name") or _na(run["missing"].get("config",
                                                                         "no family.name"))


def label(run: dict) -> str | None:
  """The trained imitator's name: the report's row that is no baseline or reference,
  else from the config."""
  rep = run["report"] or {}
  known = OTHERS + (references.ORACLE,)
  names = [r["imitator"] for r in rep.get("results", []) if r["imitator"] not in known]
  if names:
    return names[0]
  try:
    return registry.label(config_dict.ConfigDict(run["config"]))
  except (AttributeError, KeyError, TypeError, ValueError):
    return None


def _figure(run: dict, name: str, shift: str, multiple: int, observe=None) -> str:
  """NIE [CI] of `name` at multiple x T_train (unswept), teacher-forced or alone after
  `observe` steps, from a run with a report."""
  rep = run["report"]
  h = multiple * rep["t_train"]
  r = render.rows_by(rep, observe).get((name, shift, None, h))
  if r is None:
    evaluated = any(r["horizon"] > rep["t_train"] for r in rep["results"])
    how = "" if observe is None else " alone"
    hint = ("; run launch.evaluate" + (f" --observe={observe}" if observe else "")
            if not evaluated or observe else "")
    if not any(r["horizon"] == h for r in rep["results"]) and (
        observe is None or any(r.get("observe") == observe for r in rep["results"])):
      hint = f"; run launch.evaluate --horizons=...,{multiple}"
    return _na(f"no {name}{how} row at {multiple}x{hint}")
  return render.with_ci(r["nie"], r["nie_ci"])


def _identified(run: dict, name: str) -> str:
  """Median identification step of `name` on shift none, from its longest-horizon row."""
  rows = [r for r in run["report"]["results"] if (r["imitator"], r["shift"], r.get("strength")) ==
          (name, "none", None)]
  if not rows:
    return _na(f"no {name} row")
  return render.identification(max(rows, key=lambda r: r["horizon"]), median=True)


def _present(run: dict, name: str) -> bool:
  return any(r["imitator"] == name for r in (run["report"] or {}).get("results", []))


def _alone_row(run: dict, name: str, multiple: int):
  """The row of `name` alone after T_train steps at multiple x T_train, or None."""
  rep = run["report"]
  return render.rows_by(rep, rep["t_train"]).get((name, "none", None,
                                                  multiple * rep["t_train"]))


def alone_table(runs: list) -> list:
  """(a): how long each run's trained imitator holds alone after T_train steps seen."""
  last = metrics.HORIZON_MULTIPLES[-1]
  far = max([r["horizon"] // (run["report"] or {}).get("t_train", 1)
             for run in runs for r in (run["report"] or {}).get("results", [])] + [last])
  head = ["run", "family", "imitator", f"teacher-forced {last}x", "alone 2x",
          f"alone {last}x", f"alone {far}x",
          f"free-running horizon (median teacher, NIE > {metrics.IDENTIFIED_NIE:g})",
          f"untrained alone {last}x", f"known_hparams {last}x",
          f"alone {last}x / known_hparams (paired)"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for run in runs:
    name = label(run)
    cells = [command(run), family(run), name or _na("no imitator found")]
    if run["report"] is None or name is None:
      reason = _na(run["missing"].get("report", "no imitator found"))
      lines.append("| " + " | ".join(cells + [reason] * (len(head) - 3)) + " |")
      continue
    t = run["report"]["t_train"]
    far_row, near_row = _alone_row(run, name, far), _alone_row(run, name, last)
    # A far evaluation merged in (`+`) may hold fewer teachers than the run's own.
    fewer = (f" ({far_row['n_teachers']} teachers)" if far_row and near_row and
             far_row["n_teachers"] != near_row["n_teachers"] else "")
    ratio = render.comparison(run["report"], "none", None, last * t,
                              references.KNOWN_HPARAMS, t)
    cells += [_figure(run, name, "none", last), _figure(run, name, "none", 2, t),
              _figure(run, name, "none", last, t), _figure(run, name, "none", far, t) + fewer,
              render.free_running(far_row or near_row or {}) + fewer,
              _figure(run, references.UNTRAINED, "none", last, t),
              _figure(run, references.KNOWN_HPARAMS, "none", last),
              render.with_ci(ratio["nie_ratio"], ratio["nie_ratio_ci"]) if ratio
              else _na(f"no paired comparison alone at {last}x")]
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def _kind_cell(run: dict, name: str, shift: str, kind: str, observe) -> str | None:
  """A run's `nie_by_kind` NIE [CI] of `kind` on `shift` at 16x T_train (or its rows'
  longest horizon), teacher-forced or alone after `observe` steps, or None."""
  rows = [r for r in run["report"]["results"] if (r["imitator"], r["shift"]) == (name, shift)
          and r.get("observe") == observe and kind in r.get("nie_by_kind", {})]
  if not rows:
    return None
  t = run["report"]["t_train"]
  at = [r for r in rows if r["horizon"] == metrics.HORIZON_MULTIPLES[-1] * t] or rows
  r = max(at, key=lambda r: r["horizon"])
  e, ref = r["nie_by_kind"][kind], r["chance"]
  where = "" if r["horizon"] == metrics.HORIZON_MULTIPLES[-1] * t else (
      f" (at {r['horizon'] // t}x)")
  return render.with_ci(e[ref], e[f"{ref}_ci"]) + where


def kind_tables(runs: list) -> list:
  """(f): per learner kind, every run that has per-kind rows (a family with non-gradient
  members, shift none; recorded teachers such as the outside battery): the trained
  imitator's NIE at 16x T_train teacher-forced and alone after T_train steps, against
  the reference the rows name (the family's chance teacher, or the same-kind chance
  learner), beside untrained."""
  lines = []
  shifts = {}
  for run in runs:
    for r in (run["report"] or {}).get("results", []):
      if "nie_by_kind" in r:
        shifts.setdefault((r["shift"], r["chance"]), set()).update(r["nie_by_kind"])
  for (shift, ref), kinds in sorted(shifts.items()):
    having = [run for run in runs if any(r["shift"] == shift and "nie_by_kind" in r
                                         for r in (run["report"] or {}).get("results", []))]
    head = ["kind"] + [f"{label(run)} on {family(run)}: forced / alone" for run in having] \
        + [f"untrained {label(run)} on {family(run)}: forced / alone" for run in having]
    lines += ["", f"Shift `{shift}`, NIE against the {ref} chance reference at "
              f"{metrics.HORIZON_MULTIPLES[-1]}x T_train, teacher-forced / alone after "
              "T_train steps [95% CI over that kind's teachers]; runs: "
              + ", ".join(command(run) for run in having) + ".", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind in sorted(kinds):
      cells = [kind]
      for name_of in (label, lambda run: references.UNTRAINED):
        for run in having:
          t = run["report"]["t_train"]
          pair = [_kind_cell(run, name_of(run), shift, kind, o) for o in (None, t)]
          cells.append(" / ".join(c or "n/a" for c in pair))
      lines.append("| " + " | ".join(cells) + " |")
  return lines


def _paired(run_a: dict, run_b: dict, shift: str, horizon: int, observe):
  """metrics.paired_comparison of run_a's trained imitator with run_b's on shift at
  horizon (teacher-forced, or alone after `observe` steps), or (None, reason) unless
  both rows kept their per-teacher figures on the same teachers (`teachers_id`)."""
  rows = []
  for run in (run_a, run_b):
    r = render.rows_by(run["report"], observe).get((label(run), shift, None, horizon))
    if r is None or "per_teacher" not in r:
      return None, (f"{run['workdir']} has no per-teacher row at {horizon} steps; "
                    "evaluate it again")
    rows.append(r)
  if rows[0]["teachers_id"] != rows[1]["teachers_id"]:
    return None, "other held-out teachers or streams"
  a, b = (np.asarray([np.nan if v is None else v for v in r["per_teacher"]["err"]])[:, None]
          for r in rows)
  chance = np.asarray(rows[0]["per_teacher"]["chance"], np.float64)[:, None]
  return metrics.paired_comparison(a, b, chance, slice(0, 1)), None


def paired_runs_table(runs: list) -> list:
  """(g): each run's trained imitator against the first listed run's on the same family,
  paired over the same held-out teachers (equal `teachers_id`): the NIE ratio at 16x
  T_train teacher-forced and alone after T_train steps, with its paired bootstrap CI."""
  last = metrics.HORIZON_MULTIPLES[-1]
  head = ["run", "imitator", "versus (same family, same teachers)",
          f"teacher-forced {last}x: NIE ratio [paired 95% CI]",
          f"alone {last}x: NIE ratio [paired 95% CI]"]
  lines = []
  first = {}
  for run in runs:
    if run["report"] is None or label(run) is None:
      continue
    base = first.setdefault(family(run), run)
    if base is run:
      continue
    t = run["report"]["t_train"]
    cells = [command(run), label(run), f"{label(base)} ({command(base)})"]
    for observe in (None, t):
      c, why = _paired(run, base, "none", last * t, observe)
      cells.append(render.with_ci(c["nie_ratio"], c["nie_ratio_ci"]) if c else _na(why))
    lines.append("| " + " | ".join(cells) + " |")
  if not lines:
    return []
  return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + lines


def headline(runs: list) -> list:
  head = ["run", "family", "imitator", "imitator NIE 1x", "imitator NIE 16x",
          "identified (median teacher)"] + [f"{n} NIE 1x / 16x; identified" for n in OTHERS]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  last = metrics.HORIZON_MULTIPLES[-1]
  for run in runs:
    name = label(run)
    cells = [command(run), family(run), name or _na("no imitator found")]
    if run["report"] is None:
      lines.append("| " + " | ".join(cells + [_na(run["missing"]["report"])] * (
          len(head) - len(cells))) + " |")
      continue
    if name is None:
      cells += [_na("no imitator found")] * 3
    else:
      cells += [_figure(run, name, "none", 1), _figure(run, name, "none", last),
                _identified(run, name)]
    for other in OTHERS:
      if not _present(run, other):
        cells.append(_na("not in report"))
        continue
      cells.append(f"{_figure(run, other, 'none', 1)} / {_figure(run, other, 'none', last)}"
                   f"; {_identified(run, other)}")
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def _battery_shifts(rep: dict) -> list:
  return list(dict.fromkeys(r["shift"] for r in rep["results"]
                            if r.get("strength") is None and r["shift"] != "forgetting"))


def _cuts(rep: dict) -> list:
  """The cuts a report has alone rows for, teacher-forced (None) first."""
  return [None] + sorted({r["observe"] for r in rep["results"]
                          if r.get("observe") is not None})


def shift_tables(runs: list) -> list:
  """(c): per run and cut, NIE at 1x (alone: 2x) / 16x on every unswept shift."""
  last = metrics.HORIZON_MULTIPLES[-1]
  lines = []
  for run in runs:
    rep = run["report"]
    if rep is None:
      lines += ["", f"{command(run)}: {_na(run['missing']['report'])}"]
      continue
    names = [n for n in [label(run)] + list(OTHERS) if n and _present(run, n)]
    for observe in _cuts(rep):
      first = 1 if observe is None else 2
      mode = ("teacher-forced" if observe is None else
              f"alone after the teacher's first {observe} steps")
      lines += ["", f"NIE at {first}x / {last}x T_train on every shift, {mode}, "
                f"{command(run)}:", "",
                "| shift | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
      for shift in _battery_shifts(rep):
        lines.append(f"| {shift} | " + " | ".join(
            f"{_figure(run, n, shift, first, observe)} / "
            f"{_figure(run, n, shift, last, observe)}" for n in names) + " |")
  return lines


def breaking_tables(runs: list) -> list:
  """(d): per run with strength sweeps, its breaking points."""
  lines = []
  for run in runs:
    points = (run["report"] or {}).get("breaking_points", [])
    if not points:
      continue
    lines += ["", f"{command(run)}:", "",
              "| imitator | shift | breaking strength | swept | horizon |",
              "|---|---|---|---|---|"]
    for p in points:
      broke = "none" if p["breaking_strength"] is None else f"{p['breaking_strength']:g}"
      lines.append(f"| {p['imitator']}{render.alone_text(p.get('observe'))} | {p['shift']} | "
                   f"{broke} | {', '.join(f'{s:g}' for s in p['swept'])} | {p['horizon']} |")
  return lines or ["", _na("no run has strength sweeps (launch.evaluate --sweep)")]


def comparison_tables(runs: list) -> list:
  """(e): per run, the trained imitator against the better baseline on every shift."""
  lines = []
  for run in runs:
    rep = run["report"]
    lines += ["", f"{command(run)}:", ""]
    if rep is None:
      lines.append(_na(run["missing"]["report"]))
      continue
    lines += ["| shift | horizon | better baseline | NIE difference [95% CI] | "
              "NIE ratio [95% CI] |", "|---|---|---|---|---|"]
    t = rep["t_train"]
    for observe in _cuts(rep):
      by_key = render.rows_by(rep, observe)
      for shift in _battery_shifts(rep):
        for multiple in ((1,) if observe is None else (2,)) + (metrics.HORIZON_MULTIPLES[-1],):
          versus = render.better_baseline(by_key, shift, None, multiple * t)
          c = versus and render.comparison(rep, shift, None, multiple * t, versus, observe)
          if c:
            lines.append(f"| {shift}{render.alone_text(observe)} | {multiple}x | {versus} | "
                         f"{render.with_ci(c['nie_diff'], c['nie_diff_ci'])} | "
                         f"{render.with_ci(c['nie_ratio'], c['nie_ratio_ci'])} |")
  return lines


def tables(workdirs: list) -> str:
  """Every table of the runs in `workdirs` (each `A` or `A+B+...`)."""
  runs = [load(w) for w in workdirs]
  lines = ["### Alone: how long each imitation holds in the teacher's place", "",
           "Held-out NIE [95% CI over teachers], shift none: teacher-forced (every step's "
           "behaviour shown), and alone (only the teacher's first T_train steps shown, "
           "then the imitator runs in its place from inputs and labels).", ""]
  lines += alone_table(runs)
  lines += ["", "### Teacher-forced, shift none", "",
            "Held-out NIE [95% CI over teachers] at 1x and 16x T_train; identified: the "
            "median teacher's identification step / T_train.", ""]
  lines += headline(runs)
  lines += ["", "### Every shift of the battery"] + shift_tables(runs)
  lines += ["", "### Breaking points", "", "The smallest swept strength whose NIE at 16x "
            f"T_train exceeds {metrics.IDENTIFIED_NIE:g}."] + breaking_tables(runs)
  lines += ["", "### The trained imitator against the better baseline", "",
            "Paired bootstrap over the same teachers."] + comparison_tables(runs)
  kinds = kind_tables(runs)
  if kinds:
    lines += ["", "### Per learner kind"] + kinds
  paired = paired_runs_table(runs)
  if paired:
    lines += ["", "### Runs against each other, paired", "", "Ratio < 1: the run's "
              "imitator is closer to the teachers than the first run's on its family; "
              "paired bootstrap over the same held-out teachers."] + paired
  return "\n".join(lines) + "\n"


def readme_table(workdirs: list) -> str:
  """Table (a), for README."""
  runs = [load(w) for w in workdirs]
  kinds, paired = kind_tables(runs), paired_runs_table(runs)
  return "\n".join(["Held-out NIE [95% CI over teachers], shift none, teacher-forced and "
                    "alone after the teacher's first T_train steps (generated by "
                    "`launch.results`; the command of each run in its row):", ""]
                   + alone_table(runs)
                   + (["", "The same imitations paired over the same held-out teachers "
                       "(NIE ratio to the first run of the family; < 1: closer):", ""]
                      + paired if paired else [])
                   + (["", "Per learner kind (teachers beyond gradient descent, and "
                       "learners outside this code):"] + kinds if kinds else [])) + "\n"


def figure(workdirs: list, path: str) -> None:
  """The first run's NIE against the horizon (x T_train), teacher-forced and alone
  after T_train steps, for its imitator, the baselines and the references."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  run = load(workdirs[0])
  rep = run["report"]
  if rep is None:
    raise ValueError(f"--figure: {workdirs[0]} has {run['missing']['report']}.")
  t, name = rep["t_train"], label(run)
  fig, ax = plt.subplots(figsize=(7.5, 4.2))
  colors = {}
  for who in [name, "context_only", "frozen", references.UNTRAINED,
              references.KNOWN_HPARAMS]:
    for observe, style in ((None, "-"), (t, "--")):
      rows = sorted((r for r in rep["results"] if r["imitator"] == who and
                     r["shift"] == "none" and r.get("strength") is None
                     and r.get("observe") == observe and r["nie"] is not None),
                    key=lambda r: r["horizon"])
      if not rows or (observe is not None and who == references.KNOWN_HPARAMS):
        continue
      h = np.array([r["horizon"] / t for r in rows])
      nie = np.array([r["nie"] for r in rows])
      lo = np.array([np.nan if r["nie_ci"][0] is None else r["nie_ci"][0] for r in rows])
      hi = np.array([np.nan if r["nie_ci"][1] is None else r["nie_ci"][1] for r in rows])
      mode = "teacher-forced" if observe is None else "alone after 1x"
      line, = ax.plot(h, nie, style, marker="o", ms=3, lw=1.4 if who == name else 1,
                      label=f"{who}, {mode}" if who != references.KNOWN_HPARAMS else
                      f"{who} (never sees the teacher)",
                      color=colors.get(who))
      colors[who] = line.get_color()
      ax.fill_between(h, lo, hi, color=line.get_color(), alpha=0.12, lw=0)
  ax.axhline(metrics.IDENTIFIED_NIE, color="k", ls=":", lw=0.8)
  ax.axvline(1, color="tab:red", ls="-.", lw=0.8)
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_ylim(1e-2, 10)
  ax.set_xlabel("horizon (x T_train); alone: the teacher is seen before the red line only")
  ax.set_ylabel("NIE over the last T_train steps")
  ax.set_title(f"{family(run)}: {name} ({rep['results'][0]['n_teachers']} held-out "
               "teachers, 95% bands)", fontsize=9)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def replace_block(text: str, block: str, name: str, begin: str = BEGIN,
                  end: str = END) -> str:
  """text with the lines between the begin and end marker lines replaced by block."""
  lines = text.splitlines(keepends=True)
  stripped = [l.strip() for l in lines]
  if begin not in stripped or end not in stripped[stripped.index(begin):]:
    raise ValueError(f"--readme={name}: no lines {begin} and then {end} to put the "
                     "tables between.")
  i = stripped.index(begin)
  j = stripped.index(end, i)
  return "".join(lines[:i + 1]) + block + "".join(lines[j:])


def acting_tables(workdirs: list) -> str:
  """Each acting run's tables under a heading naming its command."""
  out = []
  for w in workdirs:
    rep = workdir_lib.read_json(workdir_lib.report_path(w),
                                "run the bandits config on this workdir again")
    path = os.path.join(w, "command.txt")
    cmd = open(path).read().strip() if os.path.exists(path) else f"(no command.txt in {w})"
    if rep is None or "rows" not in rep:
      out.append(f"`{w}`: {_na('no acting eval/report.json')}\n")
      continue
    out.append(acting_report.markdown(rep, cmd))
  return "\n".join(out)


def frontier_tables(workdirs: list, every_pair: bool = True) -> str:
  """Each run's fidelity/capability frontier (`imitator.evaluation.frontier.markdown`;
  `every_pair`: list each process/outcome pair where one is better)."""
  out = []
  for w in workdirs:
    path = os.path.join(w, "frontier", "frontier.json")
    result = workdir_lib.read_json(path, f"run python -m launch.frontier --workdir={w}")
    out.append(f"`{w}`: {_na(f'no {path}')}\n" if result is None else
               frontier_lib.markdown(result, every_pair))
  return "\n".join(out)


def _replace_in(path: str, block: str, begin: str = BEGIN, end: str = END) -> None:
  with open(path) as f:
    text = replace_block(f.read(), block, path, begin, end)
  with open(path, "w") as f:
    f.write(text)


def main(argv):
  del argv
  workdirs = [w.strip() for w in _WORKDIRS.value if w.strip()]
  if not workdirs:
    raise ValueError("--workdirs: no run directory given; allowed: DIR1,DIR2+COPY,...")
  if not (_README.value or _RESULTS.value or _FIGURE.value):
    print(tables(workdirs), end="")
    return
  if _README.value:
    _replace_in(_README.value, readme_table(workdirs))
    print(f"wrote the alone table into {_README.value}")
  if _RESULTS.value:
    _replace_in(_RESULTS.value, tables(workdirs))
    print(f"wrote the results tables into {_RESULTS.value}")
  if _FIGURE.value:
    figure(workdirs, _FIGURE.value)
    print(f"wrote {_FIGURE.value}")
  acting = [w.strip() for w in _ACTING.value if w.strip()]
  # README shows the first acting run; the results file every one.
  for path, runs in ((_README.value, acting[:1]), (_RESULTS.value, acting)):
    if path and runs:
      _replace_in(path, acting_tables(runs), ACTING_BEGIN, ACTING_END)
      print(f"wrote the acting tables into {path}")
  frontier = [w.strip() for w in _FRONTIER.value if w.strip()]
  for path, every_pair in ((_README.value, False), (_RESULTS.value, True)):
    if path and frontier:
      _replace_in(path, frontier_tables(frontier, every_pair), FRONTIER_BEGIN,
                  FRONTIER_END)
      print(f"wrote the frontier into {path}")


if __name__ == "__main__":
  cli.run(main)
