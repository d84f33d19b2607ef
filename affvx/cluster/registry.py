"""Backend names and their implementations, imported only when used."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from affvx.cluster.base import Backend, BackendOption
from affvx.cluster.errors import ClusterError

BACKENDS = {
    "local": "affvx.cluster.local:LocalBackend",
    "slurm": "affvx.cluster.slurm:SlurmBackend",
    "pbs": "affvx.cluster.pbs:PbsBackend",
    "ray": "affvx.cluster.ray:RayBackend",
}


def backend_names() -> list[str]:
    return list(BACKENDS)


def check_backend_name(name: str) -> str:
    if name not in BACKENDS:
        raise ClusterError(f"unknown backend {name!r}: choose from {', '.join(BACKENDS)}")
    return name


def backend_class(name: str) -> type[Backend]:
    """The class of the backend called `name` (its module is imported now)."""
    module_name, _, class_name = BACKENDS[check_backend_name(name)].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def backend_options(name: str) -> tuple[BackendOption, ...]:
    return backend_class(name).options


def get_backend(name: str, options: Mapping[str, Any] | None = None, where: str = "") -> Backend:
    """An instance of the backend called `name`, configured with `options` (checked against
    its declared options: an unknown one raises ClusterError naming the ones it takes)."""
    return backend_class(name).configured(dict(options or {}), where)
