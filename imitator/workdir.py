"""Reading a run directory back: its config and the experiment it describes."""

from __future__ import annotations

import json
import os

from ml_collections import config_dict


def _fill(saved: dict, defaults: dict) -> dict:
  """`saved` with the fields it lacks taken from `defaults` (recursively)."""
  out = dict(saved)
  for key, value in defaults.items():
    if key not in out:
      out[key] = value
    elif isinstance(value, dict) and isinstance(out[key], dict):
      out[key] = _fill(out[key], value)
  return out


def load_config(workdir: str, defaults: config_dict.ConfigDict | None = None):
  """The run's config.json as a ConfigDict; fields added to the code since the run was
  trained are filled in from `defaults` (their values then)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir!r} is not a run directory: no config.json (train "
                            "into it with python -m launch.train --workdir=...)")
  with open(path) as f:
    saved = json.load(f)
  if defaults is not None:
    saved = _fill(saved, json.loads(defaults.to_json_best_effort()))
  return config_dict.ConfigDict(saved)


def metrics_at(workdir: str, step: int) -> dict | None:
  """The metrics.jsonl record logged at `step`, if any."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    for line in f:
      record = json.loads(line)
      if record["step"] == step:
        return record
  return None
