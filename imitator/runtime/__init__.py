"""What a run on a machine needs: `workdir` (its files, lock and config), `checkpoint`
(orbax checkpoints), `signals` (SIGTERM and SIGINT recorded in a flag every phase checks;
standard library only, so entry points import it first), `parallel` (devices, hosts, and
the flags they agree on).

May import: nothing of the project (jax, orbax, absl only).
"""
