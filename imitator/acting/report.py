"""Readable views of an acting run's eval/report.json: summary lines and markdown tables."""

from __future__ import annotations


def _f(value, digits=3) -> str:
  return "–" if value is None else f"{value:.{digits}f}"


def _ci(row, key, digits=3) -> str:
  ci = row.get(key + "_ci")
  text = _f(row.get(key), digits)
  return text if not ci or ci[0] is None else f"{text} [{_f(ci[0], digits)}, {_f(ci[1], digits)}]"


def _row(report, track, agent, horizon):
  return next((r for r in report["rows"] if r["track"] == track and r["agent"] == agent
               and r["horizon"] == horizon), None)


def horizons(report) -> list[int]:
  return sorted({r["horizon"] for r in report["rows"]})


def summary_lines(report) -> list[str]:
  """A few lines per horizon: teacher-forced NLL beside the true model and the fit,
  and the alone KL to the shadow teacher."""
  lines = [f"acting teachers: {report['n_teachers']} held out, T_train = "
           f"{report['t_train']} trials, cut after {report['cut']}"]
  for h in horizons(report):
    im, fit = _row(report, "teacher_forced", "imitator", h), _row(
        report, "teacher_forced", "mle", h)
    text = (f"{h:>5} x  teacher-forced NLL/choice: imitator {_f(im['nll'])}, true model "
            f"{_f(im['true_nll'])}, mle {_f(fit['nll'])}{' (in sample)' if fit['in_sample'] else ''}")
    alone = _row(report, "alone", "imitator", h)
    if alone:
      text += (f"; alone KL(shadow||agent): imitator {_f(alone['kl'])}, mle "
               f"{_f(_row(report, 'alone', 'mle', h)['kl'])}, untrained "
               f"{_f(_row(report, 'alone', 'untrained', h)['kl'])}")
    lines.append(text)
  return lines


def markdown(report, command: str = "") -> str:
  """Tables: teacher-forced likelihood, alone fidelity and behaviour, KL by rule."""
  out = []
  if command:
    out.append(f"From `{command}` ({report['n_teachers']} held-out teachers, T_train = "
               f"{report['t_train']} trials, shown for the first {report['cut']}; 95% CIs "
               "over teachers, differences paired).\n")
  out += ["Teacher-forced (on the teacher's own history), NLL per choice in nats:\n",
          "| horizon | imitator | untrained | per-teacher MLE | true model | imitator - true "
          "| imitator - MLE |", "|---|---|---|---|---|---|---|"]
  for h in horizons(report):
    im, un, fit = (_row(report, "teacher_forced", a, h) for a in ("imitator", "untrained",
                                                                   "mle"))
    out.append(f"| {h} x | {_ci(im, 'nll')} | {_ci(un, 'nll')} | {_ci(fit, 'nll')}"
               f"{' (in sample)' if fit['in_sample'] else ''} | {_f(im['true_nll'])} | "
               f"{_ci(im, 'nll_minus_true')} | {_ci(im, 'nll_minus_mle')} |")
  out += ["", "Alone (closed loop, after the cut), KL(shadow teacher || agent) in nats, and "
          "behaviour beside the teacher's own:\n",
          "| horizon | imitator | untrained | per-teacher MLE | imitator - untrained | "
          "imitator - MLE | reward rate: imitator / teacher | switch rate: imitator / "
          "teacher |", "|---|---|---|---|---|---|---|---|"]
  for h in horizons(report):
    rows = {a: _row(report, "alone", a, h) for a in ("imitator", "untrained", "mle")}
    if rows["imitator"] is None:
      continue
    im = rows["imitator"]
    out.append(f"| {h} x | {_ci(im, 'kl')} | {_ci(rows['untrained'], 'kl')} | "
               f"{_ci(rows['mle'], 'kl')} | {_ci(im, 'kl_minus_untrained')} | "
               f"{_ci(im, 'kl_minus_mle')} | "
               f"{_ci(im, 'reward_rate')} / {_ci(im, 'teacher_reward_rate')} | "
               f"{_ci(im, 'switch_rate')} / {_ci(im, 'teacher_switch_rate')} |")
  last = max(h for h in horizons(report) if _row(report, "alone", "imitator", h))
  rules = sorted(_row(report, "alone", "imitator", last)["kl_by_rule"])
  out += ["", f"Alone KL by the teacher's rule at {last} x:\n",
          "| agent | " + " | ".join(rules) + " |", "|---|" + "---|" * len(rules)]
  for a in ("imitator", "untrained", "mle"):
    by = _row(report, "alone", a, last)["kl_by_rule"]
    out.append(f"| {a} | " + " | ".join(_f(by[r]) for r in rules) + " |")
  return "\n".join(out) + "\n"
