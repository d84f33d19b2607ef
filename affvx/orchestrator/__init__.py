"""Experiments: configuration, folds, grid planning, the run directory and its ledger,
launch / resume, status and collect.

Imports trainers and cluster only inside the functions that need them, so that `affvx status`
and `affvx collect` never import torch or ray.
"""
