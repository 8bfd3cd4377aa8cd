"""What a run on a machine needs: `workdir` (its files, lock and config), `checkpoint`
(orbax checkpoints and signals), `parallel` (devices, hosts, and the flags they agree on).

May import: nothing of the project (jax, orbax, absl only).
"""
