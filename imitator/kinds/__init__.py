"""The imitator protocol (`base`) and its kinds: `gradient` (meta-learned gradient
steps), `in_context` (sequence models over the stream's tokens), `system_id` (the family
with its member inferred); `tracking`, the bounded steps they share; `registry`, the
kinds and baselines built from a config.

May import: `learners`, `imitator.metrics`.
"""
