"""Experiments: configuration, folds, grid planning, the run directory and its ledger,
launch / resume, status and collect.

Torch is imported only where a job runs (the worker imports `affvx.trainers.job` inside
`run_worker`; the trainer modules imported elsewhere, such as `trainers.spec`, are plain
data), so that `affvx status` and `affvx collect` never import torch or ray.
"""
