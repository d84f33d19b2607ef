"""The shared conformance suite over the backends that need no server (fake, local); the
SLURM backend runs the same suite on a real cluster in tests/integration/."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from affvx.cluster.base import Backend
from affvx.cluster.local import LocalBackend
from affvx.cluster.registry import backend_names
from tests.support.backend_suite import BackendConformance
from tests.support.fake_backend import FakeBackend

TESTS = Path(__file__).resolve().parents[1]


class TestFakeConformance(BackendConformance):
    backend_name = "fake"

    @pytest.fixture
    def backend(self) -> Iterator[Backend]:
        with FakeBackend() as backend:
            yield backend


class TestLocalConformance(BackendConformance):
    backend_name = "local"

    @pytest.fixture
    def backend(self) -> Iterator[Backend]:
        with LocalBackend(max_parallel=2, kill_delay_s=2.0, signal_grace_s=1.0) as backend:
            yield backend


def covered_backends() -> set[str]:
    """`backend_name` of every BackendConformance subclass under tests/."""
    names = set()
    for path in TESTS.rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(base, ast.Name) and base.id == "BackendConformance"
                for base in node.bases
            ):
                for item in node.body:
                    if (
                        isinstance(item, ast.Assign)
                        and isinstance(item.value, ast.Constant)
                        and any(getattr(t, "id", "") == "backend_name" for t in item.targets)
                    ):
                        names.add(item.value.value)
    return names


def test_every_registered_backend_runs_the_conformance_suite() -> None:
    assert set(backend_names()) <= covered_backends()
