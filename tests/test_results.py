"""launch.results: tables from runs' config.json and eval/report.json only."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from imitator.evaluation import figures
from launch import results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _row(name, shift, h, nie, strength=None, median=None, observe=None, **extra):
  return {"imitator": name, "shift": shift, "strength": strength, "horizon": h,
          "observe": observe, "nie": nie, **extra,
          "nie_ci": [nie - 0.01, nie + 0.01] if nie is not None else [None, None],
          "n_teachers": 8, "n_teachers_excluded": 0,
          "identification_step_median": {"step": median and int(median * 4),
                                         "t_train_multiple": median},
          "identified_fraction": 0.75}


def _write(path, name, obj):
  os.makedirs(os.path.dirname(os.path.join(path, name)), exist_ok=True)
  with open(os.path.join(path, name), "w") as f:
    json.dump(obj, f)


@pytest.fixture
def runs(tmp_path):
  """Run a: trained and evaluated (t_train 4) with a sweep; run b: trained only, its
  report lost; run c: a report from training alone (no 16x rows), no config."""
  a, b, c = (str(tmp_path / n) for n in "abc")
  _write(a, "config.json", {"family": {"name": "sgd_linear"},
                            "imitator": {"kind": "gradient"}})
  rows = []
  for name, nies in {"gradient": (0.1, 0.05), "frozen": (1.4, 1.7),
                     "context_only": (0.4, 0.38), "untrained": (0.9, 0.8),
                     "known_hparams": (0.03, 0.01), "twin": (0.0, 0.0),
                     "oracle": (0.0, 0.0)}.items():
    for shift in ("none", "drift"):
      rows += [_row(name, shift, 4, nies[0], median=1.25),
               _row(name, shift, 64, nies[1], median=1.25)]
  rows += [_row("gradient", "covariate_scale", 64, 0.2, strength=0.5),
           _row("gradient", "covariate_scale", 64, None, strength=8.0)]
  fr = {"steps": 12, "t_train_multiple": 3.0, "t_train_multiple_ci": [2.0, None],
        "beyond_fraction": 0.25, "within_steps": 60}
  rows += [_row("gradient", "none", 8, 0.15, observe=4),
           _row("gradient", "none", 64, 0.45, observe=4, free_running_horizon=fr),
           _row("untrained", "none", 64, 0.9, observe=4)]
  comps = [{"imitator": "gradient", "versus": v, "shift": "none", "strength": None,
            "horizon": h, "nie_diff": d, "nie_diff_ci": [d - 0.1, d + 0.1],
            "nie_ratio": q, "nie_ratio_ci": [q - 0.1, q + 0.1], "n_teachers": 8}
           for v, h, d, q in [("context_only", 4, -0.3, 0.25), ("frozen", 4, -1.3, 0.07),
                              ("context_only", 64, -0.33, 0.13)]]
  comps.append({"imitator": "gradient", "versus": "known_hparams", "shift": "none",
                "strength": None, "horizon": 64, "observe": 4, "nie_diff": 0.44,
                "nie_diff_ci": [0.3, 0.5], "nie_ratio": 45.0, "nie_ratio_ci": [30.0, 60.0],
                "n_teachers": 8})
  _write(a, "eval/report.json", {
      "t_train": 4, "results": rows, "comparisons": comps,
      "breaking_points": [{"imitator": "gradient", "shift": "covariate_scale",
                           "breaking_strength": 8.0, "swept": [0.5, 8.0], "horizon": 64}]})
  _write(b, "config.json", {"family": {"name": "mixed"},
                            "imitator": {"kind": "in_context",
                                         "in_context": {"arch": "recurrent"}}})
  _write(c, "eval/report.json", {"t_train": 4, "results": [
      _row("system_id/both", "none", 4, 0.06), _row("frozen", "none", 4, 0.8)]})
  return a, b, c


def test_tables_from_files_only(runs):
  a, b, c = runs
  text = results.tables([a, b, c])
  alone, text = text.split("### Teacher-forced, shift none")
  row_a = next(l for l in alone.splitlines() if l.startswith(f"| `{a}` | sgd_linear | "))
  cells = [x.strip() for x in row_a.strip("|").split("|")]
  # teacher-forced 16x, alone 2x / 16x / 16x (the farthest), horizon, untrained alone,
  # known_hparams, the paired ratio alone.
  assert cells[3:] == ["0.050 [0.040, 0.060]", "0.150 [0.140, 0.160]",
                       "0.450 [0.440, 0.460]", "0.450 [0.440, 0.460]",
                       "3.00x [2.00x, beyond] (25% beyond)", "0.900 [0.890, 0.910]",
                       "0.010 [0.000, 0.020]", "45.000 [30.000, 60.000]"]
  assert "n/a (no system_id/both alone row at 2x; run launch.evaluate --observe=4)" in alone
  lines = text.splitlines()
  head = next(l for l in lines if l.startswith(f"| `{a}` | sgd_linear | gradient |"))
  cells = [x.strip() for x in head.strip("|").split("|")]
  assert cells[3:6] == ["0.100 [0.090, 0.110]", "0.050 [0.040, 0.060]",
                        "1.25x (75% identified)"]
  # frozen, context_only, untrained, known_hparams, twin: 1x / 16x; identified.
  assert cells[6] == "1.400 [1.390, 1.410] / 1.700 [1.690, 1.710]; 1.25x (75% identified)"
  assert cells[9].startswith("0.030 [0.020, 0.040] / 0.010")
  # Run b: no report; its imitator named from its config.
  row_b = next(l for l in lines if l.startswith(f"| `{b}` | mixed | in_context/recurrent |"))
  assert "n/a (no eval/report.json)" in row_b
  # Run c: no config, no 16x rows, references absent.
  row_c = next(l for l in lines if l.startswith(f"| `{c}` | n/a (no config.json) | "
                                                "system_id/both |"))
  assert "0.060 [0.050, 0.070]" in row_c and "n/a (no system_id/both row at 16x" in row_c
  assert "n/a (not in report)" in row_c
  # (b) every shift of run a, (c) its breaking point, (d) the better baseline.
  assert "| drift | 0.100 [0.090, 0.110] / 0.050 [0.040, 0.060] | 1.400" in text
  assert "| covariate_scale |" not in text.split("Breaking points")[0]  # swept: not (b)
  breaking = text.split("### Breaking points")[1].split("###")[0]
  assert f"`{a}`:" in breaking and f"`{c}`" not in breaking
  assert "| gradient | covariate_scale | 8 | 0.5, 8 | 64 |" in breaking
  # context_only has the lower NIE, so it is the better baseline at 1x and 16x.
  assert "| none | 1x | context_only | -0.300 [-0.400, -0.200] | 0.250" in text
  assert "| none | 16x | context_only | -0.330" in text
  assert "| frozen | -1.300" not in text
  assert "NIE at 2x / 16x T_train on every shift, alone after the teacher's first 4 steps" in text


def test_a_run_evaluated_into_copies_reads_as_one(runs, tmp_path):
  a, _, _ = runs
  far = str(tmp_path / "far")
  _write(far, "eval/report.json", {"t_train": 4, "results": [
      _row("gradient", "none", 4, 0.99),  # A has this row: A's is kept
      dict(_row("gradient", "none", 4096, 0.7, observe=4), n_teachers=2)]})
  run = results.load(f"{a}+{far}")
  rows = {(r["imitator"], r["horizon"], r.get("observe")): r for r in run["report"]["results"]}
  assert rows[("gradient", 4, None)]["nie"] == 0.1
  assert rows[("gradient", 4096, 4)]["nie"] == 0.7
  assert results.command(run) == f"`{a}`"
  table = "\n".join(results.alone_table([run]))
  assert "alone 1024x" in table and "0.700 [0.690, 0.710] (2 teachers)" in table


@pytest.mark.slow
def test_readme_block_is_replaced_and_missing_markers_exit_2(runs, tmp_path):
  a, _, _ = runs
  readme = tmp_path / "README.md"
  readme.write_text("# title\n\nbefore\n<!-- results:begin -->\nold table\n"
                    "<!-- results:end -->\nafter\n")
  ok = subprocess.run([sys.executable, "-m", "launch.results", f"--workdirs={a}",
                       f"--readme={readme}"], cwd=ROOT, capture_output=True, text=True,
                      timeout=120)
  assert ok.returncode == 0, ok.stderr[-2000:]
  text = readme.read_text()
  assert text.startswith("# title\n\nbefore\n<!-- results:begin -->\nHeld-out NIE")
  assert text.endswith("<!-- results:end -->\nafter\n") and "old table" not in text
  assert f"| `{a}` | sgd_linear | gradient |" in text
  doc, png = tmp_path / "RESULTS.md", tmp_path / "fig" / "headline.png"
  doc.write_text("# Results\n<!-- results:begin -->\n<!-- results:end -->\nnotes\n")
  ok = subprocess.run([sys.executable, "-m", "launch.results", f"--workdirs={a}",
                       f"--results={doc}", f"--figure={png}"], cwd=ROOT,
                      capture_output=True, text=True, timeout=120)
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert "### Every shift of the battery" in doc.read_text()
  assert doc.read_text().endswith("<!-- results:end -->\nnotes\n")
  assert png.read_bytes()[:4] == b"\x89PNG"
  bare = tmp_path / "NOTES.md"
  bare.write_text("no markers here\n")
  bad = subprocess.run([sys.executable, "-m", "launch.results", f"--workdirs={a}",
                        f"--readme={bare}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
  assert bad.returncode == 2 and str(bare) in bad.stderr and "results:begin" in bad.stderr
  assert bare.read_text() == "no markers here\n"


def test_kind_table_reads_each_kinds_figures_teacher_forced_and_alone(tmp_path):
  run = str(tmp_path / "k")
  _write(run, "config.json", {"family": {"name": "beyond_gradient"},
                              "imitator": {"kind": "gradient"}})
  by_kind = lambda v: {k: {"n_teachers": 4, "family": v + i, "family_ci": [v + i - 0.01,
                                                                          v + i + 0.01]}
                       for i, k in enumerate(("kalman", "knn"))}
  rows = [_row(name, "none", 64, 0.3, observe=o, chance="family",
               nie_by_kind=by_kind(base + (0.5 if o else 0.0)))
          for name, base in (("gradient", 0.1), ("untrained", 0.2)) for o in (None, 4)]
  rows.append(_row("gradient", "none", 4, 0.3, chance="family", nie_by_kind=by_kind(7.0)))
  _write(run, "eval/report.json", {"t_train": 4, "results": rows})
  text = "\n".join(results.kind_tables([results.load(run)]))
  # kalman: gradient 0.1 forced, 0.6 alone; untrained 0.2 / 0.7 (at 16x, not the 1x row)
  assert "| kalman | 0.100 [0.090, 0.110] / 0.600 [0.590, 0.610] | 0.200 [0.190, 0.210] " \
         "/ 0.700 [0.690, 0.710] |" in text
  assert "| knn | 1.100 [1.090, 1.110] / 1.600 [1.590, 1.610] |" in text
  assert "against the family chance reference" in text
  assert "| untrained gradient on beyond_gradient: forced / alone |" in text
  assert results.kind_tables([results.load(str(tmp_path / "nothing"))]) == []


def test_runs_on_the_same_teachers_are_compared_paired(tmp_path):
  """The ratio of two runs' imitators over the same teachers, with a paired CI, by hand:
  run b's errors are run a's times 0.5 teacher by teacher, so every bootstrap draw gives
  0.5 exactly; a run on other teachers (another teachers_id) is not paired."""
  rng = np.random.default_rng(0)
  err_a, chance = rng.gamma(1.0, size=16), rng.gamma(2.0, size=16)
  made = {}
  for name, kind, scale, tid in (("a", "gradient", 1.0, "x"), ("b", "system_id", 0.5, "x"),
                                 ("c", "in_context", 0.5, "y")):
    run = str(tmp_path / name)
    _write(run, "config.json", {"family": {"name": "small_mixed"},
                                "imitator": {"kind": kind}})
    im = {"gradient": "gradient", "system_id": "system_id/both",
          "in_context": "in_context/recurrent"}[kind]
    rows = [_row(im, "none", 64, 0.2, observe=o, teachers_id=tid,
                 per_teacher={"err": (scale * err_a * (2 if o else 1)).tolist(),
                              "chance": chance.tolist()}) for o in (None, 4)]
    _write(run, "eval/report.json", {"t_train": 4, "results": rows})
    made[name] = results.load(run)
  lines = results.paired_runs_table([made["a"], made["b"], made["c"]])
  b_line = next(l for l in lines if "system_id/both" in l.split("|")[2])
  assert b_line.count("0.500 [0.500, 0.500]") == 2  # teacher-forced and alone
  c_line = next(l for l in lines if "in_context/recurrent" in l.split("|")[2])
  assert "other held-out teachers" in c_line
  assert results.paired_runs_table([made["a"]]) == []


def test_rows_keep_each_teachers_window_means():
  rng = np.random.default_rng(1)
  err, chance = rng.gamma(1.0, size=(5, 12)), rng.gamma(2.0, size=(5, 12))
  r = figures.row("gradient", "none", 8, 4, err, chance, per_teacher=True)
  np.testing.assert_allclose(r["per_teacher"]["err"], err[:, 4:8].mean(1))
  np.testing.assert_allclose(r["per_teacher"]["chance"], chance[:, 4:8].mean(1))
  assert "per_teacher" not in figures.row("gradient", "none", 8, 4, err, chance)
