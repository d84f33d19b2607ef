"""Backends that run commands on this machine or a cluster: local, slurm and pbs today (the
contract is written for Ray too).

Generic: a backend runs argv lists with neutral resources and never learns what a fold is. It
imports no other affvx package. `affvx.cluster.base` holds the contract;
`affvx.cluster.registry` maps names to implementations (imported lazily);
`affvx.cluster.task` is the shim a scheduler runs for each job. docs/architecture.md has the
whole picture.
"""
