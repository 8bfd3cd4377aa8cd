"""Reading a run directory back: its config and the experiment it describes."""

from __future__ import annotations

import json
import os

from ml_collections import config_dict


def load_config(workdir: str) -> config_dict.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir!r} is not a run directory: no config.json (train "
                            "into it with python -m launch.train --workdir=...)")
  with open(path) as f:
    return config_dict.ConfigDict(json.load(f))


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
