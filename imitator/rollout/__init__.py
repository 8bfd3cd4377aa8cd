"""Imitators run beside teachers: `episodes` (teachers and their streams drawn inside
jit), `objective` (the imitation loss, truncated in windows, and evaluation's chunked
unroll), `co_rollout` (teachers, references and imitators advanced together in constant
memory), `references` (learners that read a teacher's hyperparams: known_hparams, twin).

May import: `learners`, `imitator.metrics`. Imitators arrive as objects: nothing here
imports `imitator.kinds`.
"""
