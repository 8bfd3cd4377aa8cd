"""A workdir written before imitator/ moved into subpackages still loads, resumes and
evaluates.

tests/data/previous_layout_run was written by commit f552ac5 (the flat imitator/ layout)
with its command.txt's command: 4 outer steps, checkpoints at step 4 in checkpoints/
and best/, metrics.jsonl with the validation NIE at steps 2 and 4, eval/report.json.
"""

import os
import shutil

import numpy as np
import pytest

from imitator import metrics
from imitator.evaluation import evaluate
from imitator.runtime import workdir
from imitator.training import experiment, train
from launch.configs import default

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                       "previous_layout_run")


def test_previous_layout_checkpoint_restores_to_its_recorded_validation_nie():
  config = workdir.load_config(FIXTURE, defaults=default.get_config())
  exp = experiment.Experiment(config)
  meta = evaluate.restore_meta(exp, FIXTURE)
  errs, chance = exp.validation_fn()(meta)
  recorded = {r["step"]: r for r in workdir.read_metrics(workdir.metrics_path(FIXTURE))}
  # The old code's own validation of its best checkpoint, recomputed by the new code.
  for name, err in errs.items():
    np.testing.assert_allclose(metrics.nie(np.asarray(err), np.asarray(chance)),
                               recorded[4][f"val_nie/{name}"], rtol=1e-5)


@pytest.mark.slow  # 40 s: the default suite's time budget (restoring stays in it)
def test_previous_layout_run_resumes_where_it_stopped(tmp_path):
  run = tmp_path / "run"
  shutil.copytree(FIXTURE, run)
  config = workdir.load_config(str(run), defaults=default.get_config())
  config.train.steps = 6  # a resumable field: training goes on from step 4
  result = train.train_and_evaluate(config, str(run))
  assert result["status"] == "finished" and result["step"] == 6
  steps = [r["step"] for r in workdir.read_metrics(workdir.metrics_path(str(run)))]
  assert steps == [2, 4, 6]
