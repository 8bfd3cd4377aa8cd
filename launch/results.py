"""Markdown result tables of several runs, generated only from their files.

    python -m launch.results --workdirs=runs/default,runs/gradient
    python -m launch.results --workdirs=runs/default,runs/gradient --readme=README.md

Reads each run's config.json and eval/report.json and prints (a) a headline table, one
row per run: NIE at 1x and 16x T_train (shift none) and the median identification step
of the trained imitator, the baselines and the references; (b) per run, NIE at 1x and
16x on every shift of the battery; (c) breaking points of the runs with strength sweeps;
(d) the paired comparison of the imitator with the better baseline. With --readme, the
tables replace the lines between `<!-- results:begin -->` and `<!-- results:end -->`.
A missing file or figure shows as "n/a (reason)".
"""

from __future__ import annotations

import json
import os

from absl import flags
from ml_collections import config_dict

from imitator import metrics
from imitator.evaluation import render
from imitator.kinds import registry
from imitator.rollout import references
from launch import cli

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
OTHERS = references.BASELINES + (references.UNTRAINED, references.KNOWN_HPARAMS,
                                 references.TWIN)

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Run directories, comma-separated.",
                              required=True)
_README = flags.DEFINE_string("readme", None, "Markdown file whose results block "
                              f"({BEGIN} ... {END}) the tables replace.")


def load(workdir: str) -> dict:
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


def _figure(run: dict, name: str, shift: str, multiple: int) -> str:
  """NIE [CI] of `name` at multiple x T_train (unswept), from a run with a report."""
  rep = run["report"]
  h = multiple * rep["t_train"]
  r = render.rows_by(rep).get((name, shift, None, h))
  if r is None:
    evaluated = any(r["horizon"] > rep["t_train"] for r in rep["results"])
    return _na(f"no {name} row at {multiple}x" + (
        "" if evaluated else "; run launch.evaluate"))
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


def shift_tables(runs: list) -> list:
  last = metrics.HORIZON_MULTIPLES[-1]
  lines = []
  for run in runs:
    lines += ["", f"NIE at 1x / {last}x T_train on every shift, {command(run)}:", ""]
    rep = run["report"]
    if rep is None:
      lines.append(_na(run["missing"]["report"]))
      continue
    names = [n for n in [label(run)] + list(OTHERS) if n and _present(run, n)]
    lines += ["| shift | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for shift in _battery_shifts(rep):
      lines.append(f"| {shift} | " + " | ".join(
          f"{_figure(run, n, shift, 1)} / {_figure(run, n, shift, last)}" for n in names)
                   + " |")
  return lines


def breaking_table(runs: list) -> list:
  lines = ["| run | imitator | shift | breaking strength | swept | horizon |",
           "|---|---|---|---|---|---|"]
  found = False
  for run in runs:
    for p in (run["report"] or {}).get("breaking_points", []):
      found = True
      broke = "none" if p["breaking_strength"] is None else f"{p['breaking_strength']:g}"
      lines.append(f"| {command(run)} | {p['imitator']} | {p['shift']} | {broke} | "
                   f"{', '.join(f'{s:g}' for s in p['swept'])} | {p['horizon']} |")
  return lines if found else [_na("no run has strength sweeps (launch.evaluate --sweep)")]


def comparison_table(runs: list) -> list:
  lines = ["| run | shift | horizon | better baseline | NIE difference [95% CI] | "
           "NIE ratio [95% CI] |", "|---|---|---|---|---|---|"]
  for run in runs:
    rep = run["report"]
    if rep is None:
      lines.append(f"| {command(run)} | {_na(run['missing']['report'])} | | | | |")
      continue
    t = rep["t_train"]
    by_key = render.rows_by(rep)
    for shift in _battery_shifts(rep):
      for multiple in (1, metrics.HORIZON_MULTIPLES[-1]):
        versus = render.better_baseline(by_key, shift, None, multiple * t)
        c = versus and render.comparison(rep, shift, None, multiple * t, versus)
        if not c:
          continue
        lines.append(f"| {command(run)} | {shift} | {multiple}x | {versus} | "
                     f"{render.with_ci(c['nie_diff'], c['nie_diff_ci'])} | "
                     f"{render.with_ci(c['nie_ratio'], c['nie_ratio_ci'])} |")
  return lines


def tables(workdirs: list) -> str:
  """The four markdown tables of the runs in `workdirs`."""
  runs = [load(w) for w in workdirs]
  lines = ["Held-out NIE [95% CI over teachers], shift none, at 1x and 16x T_train; "
           "identified: the median teacher's identification step / T_train.", ""]
  lines += headline(runs)
  lines += ["", "Every shift of the battery:"] + shift_tables(runs)
  lines += ["", "Breaking points (smallest swept strength whose NIE at 16x T_train exceeds "
            f"{metrics.IDENTIFIED_NIE:g}):", ""] + breaking_table(runs)
  lines += ["", "The trained imitator against the better baseline (paired bootstrap over "
            "teachers):", ""] + comparison_table(runs)
  return "\n".join(lines) + "\n"


def replace_block(text: str, block: str, name: str) -> str:
  """text with the lines between the BEGIN and END marker lines replaced by block."""
  lines = text.splitlines(keepends=True)
  stripped = [l.strip() for l in lines]
  if BEGIN not in stripped or END not in stripped[stripped.index(BEGIN):]:
    raise ValueError(f"--readme={name}: no lines {BEGIN} and then {END} to put the "
                     "tables between.")
  i = stripped.index(BEGIN)
  j = stripped.index(END, i)
  return "".join(lines[:i + 1]) + block + "".join(lines[j:])


def main(argv):
  del argv
  workdirs = [w.strip() for w in _WORKDIRS.value if w.strip()]
  if not workdirs:
    raise ValueError("--workdirs: no run directory given; allowed: DIR1,DIR2,...")
  text = tables(workdirs)
  if _README.value is None:
    print(text, end="")
    return
  with open(_README.value) as f:
    readme = replace_block(f.read(), text, _README.value)
  with open(_README.value, "w") as f:
    f.write(readme)
  print(f"wrote the results tables into {_README.value}")


if __name__ == "__main__":
  cli.run(main)
