"""Joining a Ray cluster by address: a Ray Client session whose server failed to start is
asked for again; every other failure is reported at once. `ray.init` is a stand-in here (the
policy is ours; joining real clusters is tests/integration/test_ray_launch.py)."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable

import pytest

from affvx.cluster import ray as ray_backend
from affvx.cluster.errors import ClusterError
from affvx.cluster.ray import CLIENT_SESSION_ATTEMPTS, RayBackend

SESSION_FAILED = (
    "Initialization failure from server:\nTraceback (most recent call last):\n"
    "RuntimeError: Starting Ray client server failed. See ray_client_server_23000.err "
    "for detailed logs."
)


class StandInRay(types.ModuleType):
    """`ray` whose `init` raises the given errors in turn, then joins."""

    def __init__(self, errors: list[Exception]) -> None:
        super().__init__("ray")
        self.errors = errors
        self.init_calls = 0
        self.sleeps: list[float] = []

    def is_initialized(self) -> bool:
        return False

    def init(self, address: str, **options: object) -> types.SimpleNamespace:
        self.init_calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return types.SimpleNamespace(dashboard_url="")


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[Exception]], StandInRay]:
    def install(errors: list[Exception]) -> StandInRay:
        ray = StandInRay(errors)
        monkeypatch.setitem(sys.modules, "ray", ray)
        monkeypatch.setattr(ray_backend.time, "sleep", ray.sleeps.append)
        return ray

    return install


def test_a_client_session_that_failed_to_start_is_asked_for_again(stand_in) -> None:
    ray = stand_in([ConnectionAbortedError(SESSION_FAILED)] * (CLIENT_SESSION_ATTEMPTS - 1))
    RayBackend(address="ray://127.0.0.1:10001")._connect()
    assert ray.init_calls == CLIENT_SESSION_ATTEMPTS
    assert len(ray.sleeps) == CLIENT_SESSION_ATTEMPTS - 1 and all(s > 0 for s in ray.sleeps)


def test_a_session_that_never_starts_is_one_line_after_the_last_attempt(stand_in) -> None:
    ray = stand_in([ConnectionAbortedError(SESSION_FAILED)] * CLIENT_SESSION_ATTEMPTS)
    with pytest.raises(ClusterError) as raised:
        RayBackend(address="ray://127.0.0.1:10001")._connect()
    assert ray.init_calls == CLIENT_SESSION_ATTEMPTS
    assert "\n" not in str(raised.value) and "Starting Ray client server failed" in str(
        raised.value
    )


@pytest.mark.parametrize(
    "error",
    [
        ConnectionAbortedError("Initialization failure from server:\nversion mismatch"),
        ConnectionError("ray client connection timeout"),
    ],
)
def test_other_failures_to_join_are_reported_at_once(stand_in, error: Exception) -> None:
    ray = stand_in([error])
    with pytest.raises(ClusterError, match="could not start or join Ray"):
        RayBackend(address="ray://127.0.0.1:10001")._connect()
    assert ray.init_calls == 1 and ray.sleeps == []
