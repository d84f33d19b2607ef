"""Backend names and their implementations, imported only when used."""

from __future__ import annotations

import importlib
from typing import Any

from affvx.cluster.base import Backend
from affvx.cluster.errors import ClusterError

BACKENDS = {
    "local": "affvx.cluster.local:LocalBackend",
    "slurm": "affvx.cluster.slurm:SlurmBackend",
}


def backend_names() -> list[str]:
    return list(BACKENDS)


def check_backend_name(name: str) -> str:
    if name not in BACKENDS:
        raise ClusterError(f"unknown backend {name!r}: choose from {', '.join(BACKENDS)}")
    return name


def get_backend(name: str, **options: Any) -> Backend:
    """An instance of the backend called `name`, configured with `options`."""
    module_name, _, class_name = BACKENDS[check_backend_name(name)].partition(":")
    backend_class = getattr(importlib.import_module(module_name), class_name)
    return backend_class(**options)
