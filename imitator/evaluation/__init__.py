"""Evaluation on held-out teachers: `battery` (horizons, shifts and sweeps run),
`figures` (report rows: NIE, divergence, identification, paired comparisons, curves),
`forgetting` (the A+B-then-A experiment), `report_json` (report.json merged and written
whole), `render` (report.md tables and plots), `evaluate` (a checkpoint's final report
and full evaluation).

May import: `learners`, `imitator.metrics`, `imitator.kinds`, `imitator.rollout`,
`imitator.runtime`.
"""
