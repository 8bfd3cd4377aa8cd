"""The decay experiment: how fast an old task decays once only a new one is practised,
and whether an imitator forgets as its teacher does. `tasks` (task pairs, two-phase
streams, probes), `cell` (one cell's teachers and imitator), `fit` (decay laws and
half-lives), `sweep` (the grid, resumable), `report` (report.json, scaling, plots).

May import: `learners` and every other part of `imitator`.
"""
