"""Meta-training: `config_schema` (every config field checked up front), `experiment`
(what a config builds), `outer_step` (one jitted outer step and its train state),
`train` (the outer loop `train_and_evaluate(config, workdir)`).

May import: `learners`, `imitator.metrics`, `imitator.kinds`, `imitator.rollout`,
`imitator.runtime`, `imitator.evaluation`.
"""
