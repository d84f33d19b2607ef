"""The conformance suite every backend must pass (the contract is affvx.cluster.base).

A backend's test module subclasses `BackendConformance`, names the backend it covers in
`backend_name` and provides the `backend` fixture -- as Optuna's storage tests do.
tests/cluster/test_conformance.py runs it over the fake and local backends and checks that
every registered backend has a suite; the SLURM ones run on the real cluster in
tests/integration/.
"""

from __future__ import annotations

import ast
import inspect
import json
import sys
import time
from pathlib import Path

import pytest

from affvx.cluster.base import Backend, JobRequest, JobStatus, Resources
from affvx.cluster.errors import ClusterError
from affvx.protocol import EXIT_REQUEUE


def python_job(tmp_path: Path, key: str, code: str, **resources: object) -> JobRequest:
    return JobRequest(
        key=key,
        command=(sys.executable, "-c", code),
        workdir=tmp_path,
        log_dir=tmp_path / "logs" / key,
        resources=Resources(**resources),  # type: ignore[arg-type]
        env=(("AFFVX_TEST_KEY", key),),
        name=key,
    )


# A job that reports which signals reached it in a file, and exits 75 on SIGTERM.
SIGNAL_RECORDER = """
import os, pathlib, signal, sys, time
out = pathlib.Path(os.environ["AFFVX_TEST_KEY"] + ".signals")
def handler(signum, frame):
    with open(out, "a") as f:
        f.write(signal.Signals(signum).name + "\\n")
    if signum == signal.SIGTERM:
        sys.exit(75)
signal.signal(signal.SIGTERM, handler)
signal.signal(signal.SIGUSR2, handler)
signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM, signal.SIGUSR2])  # ready for them
pathlib.Path(os.environ["AFFVX_TEST_KEY"] + ".started").write_text(str(os.getpid()))
while True:
    time.sleep(0.05)
"""


def constructor_keywords(kind: type) -> set[str]:
    """The keywords `kind(...)` takes, following **kwargs passed on to the base classes."""
    keywords: set[str] = set()
    for cls in kind.__mro__:
        if "__init__" not in vars(cls):
            continue
        parameters = inspect.signature(cls.__init__).parameters.values()
        keywords |= {p.name for p in parameters if p.kind is not p.VAR_KEYWORD}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return keywords


class BackendConformance:
    """Behaviour every backend shares; subclasses set `backend_name` and provide `backend`."""

    backend_name = ""
    timeout_s = 60.0

    def wait_for(self, backend: Backend, ids: list[str], done) -> dict:  # type: ignore[no-untyped-def]
        """Poll until `done(states)` holds (the scheduler's own pace; bounded)."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            states = backend.poll(ids)
            if done(states):
                return states
            assert time.monotonic() < deadline, f"timed out waiting; last states {states}"
            time.sleep(0.1)

    def test_exit_codes_come_back(self, backend: Backend, tmp_path: Path) -> None:
        requests = [
            python_job(tmp_path, "ok", "print('hello')"),
            python_job(tmp_path, "fail", "raise SystemExit(3)"),
        ]
        ids = backend.submit(requests)
        assert len(set(ids)) == 2 and all(isinstance(i, str) and i for i in ids)
        states = self.wait_for(
            backend, ids, lambda s: all(not x.status.is_active() for x in s.values())
        )
        assert [states[i].status for i in ids] == [JobStatus.EXITED] * 2
        assert [states[i].exit_code for i in ids] == [0, 3]

    def test_the_requeue_status_means_run_again(self, backend: Backend, tmp_path: Path) -> None:
        """A scheduler that requeues by itself runs the job again under the same id; the
        others report the status and leave the requeue to the orchestrator."""
        counter = tmp_path / "runs"
        code = (
            f"import pathlib, sys; p = pathlib.Path({str(counter)!r}); "
            "n = len(p.read_text()) if p.exists() else 0; p.write_text('x' * (n + 1)); "
            f"sys.exit({EXIT_REQUEUE} if n == 0 else 0)"
        )
        [job_id] = backend.submit([python_job(tmp_path, "again", code)])
        state = self.wait_for(backend, [job_id], lambda s: not s[job_id].status.is_active())
        state = state[job_id]
        runs = counter.read_text()
        if backend.capabilities.requeues_itself:
            assert (state.status, state.exit_code, runs) == (JobStatus.EXITED, 0, "xx")
        else:
            expected = (JobStatus.EXITED, EXIT_REQUEUE, "x")
            assert (state.status, state.exit_code, runs) == expected

    def test_logs_and_environment_reach_the_job(self, backend: Backend, tmp_path: Path) -> None:
        [job_id] = backend.submit(
            [python_job(tmp_path, "env", "import os; print(os.environ['AFFVX_TEST_KEY'])")]
        )
        self.wait_for(backend, [job_id], lambda s: not s[job_id].status.is_active())
        logs = list((tmp_path / "logs" / "env").glob("*.out"))
        assert logs and "env" in logs[0].read_text()

    def test_jobs_start_with_stop_signals_held(self, backend: Backend, tmp_path: Path) -> None:
        report = "import signal; print(sorted(s.name for s in signal.pthread_sigmask(0, [])))"
        [job_id] = backend.submit([python_job(tmp_path, "mask", report)])
        self.wait_for(backend, [job_id], lambda s: not s[job_id].status.is_active())
        [log] = list((tmp_path / "logs" / "mask").glob("*.out"))
        held = ast.literal_eval(log.read_text().splitlines()[-1])
        assert {"SIGUSR2", "SIGTERM", "SIGINT"} <= set(held)

    def test_unknown_ids_are_unknown_never_completed(self, backend: Backend) -> None:
        states = backend.poll(["no-such-job-4242"])
        assert states["no-such-job-4242"].status is JobStatus.UNKNOWN

    def test_cancel_sends_sigterm_to_a_running_job(self, backend: Backend, tmp_path: Path) -> None:
        [job_id] = backend.submit([python_job(tmp_path, "victim", SIGNAL_RECORDER)])
        self.wait_for(backend, [job_id], lambda s: (tmp_path / "victim.started").exists())
        backend.cancel([job_id])
        states = self.wait_for(backend, [job_id], lambda s: not s[job_id].status.is_active())
        assert states[job_id].status is JobStatus.CANCELLED
        assert "SIGTERM" in (tmp_path / "victim.signals").read_text()

    def test_render_returns_what_would_be_submitted(
        self, backend: Backend, tmp_path: Path
    ) -> None:
        scripts = backend.render([python_job(tmp_path, f"shown{i}", "print(1)") for i in range(3)])
        assert scripts and all(isinstance(s, str) and s.strip() for s in scripts)
        assert backend.poll([]) == {}  # rendering submitted nothing

    def test_every_job_sees_the_same_affvx_environment(
        self, backend: Backend, tmp_path: Path
    ) -> None:
        code = (
            "import json, os; print(json.dumps({k: v for k, v in os.environ.items() "
            "if k.startswith('AFFVX_')}))"
        )
        request = python_job(tmp_path, "envvars", code, cpus=1, time_limit_min=10)
        [job_id] = backend.submit([request])
        self.wait_for(backend, [job_id], lambda s: not s[job_id].status.is_active())
        [log] = list((tmp_path / "logs" / "envvars").glob("*.out"))
        seen = json.loads(log.read_text().splitlines()[-1])
        assert seen["AFFVX_SCHEDULER_JOB_ID"] == job_id
        assert seen["AFFVX_BACKEND"] == backend.name
        assert seen["AFFVX_CPUS"] == "1"
        assert 0 < float(seen["AFFVX_TIME_LIMIT_S"]) < 600  # its own clock, less a margin

    def test_capabilities_and_options_are_declared(self, backend: Backend) -> None:
        kind = type(backend)
        assert kind.name == self.backend_name
        assert isinstance(backend.capabilities.requeues_itself, bool)
        assert {option.name for option in kind.options} <= constructor_keywords(kind)
        with pytest.raises(ClusterError, match="not an option of the"):
            kind.configured({"no_such_option": 1})
