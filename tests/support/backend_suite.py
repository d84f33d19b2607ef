"""The conformance suite every backend must pass (the contract is affvx.cluster.base).

A backend's test module subclasses `BackendConformance` and provides the `backend` fixture
(and `settle`, how to let the scheduler catch up) -- as Optuna's storage tests do.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from affvx.cluster.base import REQUEUE_EXIT_CODE, Backend, JobRequest, JobStatus, Resources


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


# A job that reports which signals reached it in a file, and exits 75 on SIGTERM / SIGUSR2.
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
pathlib.Path(os.environ["AFFVX_TEST_KEY"] + ".started").write_text(str(os.getpid()))
while True:
    time.sleep(0.05)
"""


class BackendConformance:
    """Behaviour every backend shares; subclasses provide `backend` and `wait_for`."""

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
            python_job(tmp_path, "requeue", f"import sys; sys.exit({REQUEUE_EXIT_CODE})"),
            python_job(tmp_path, "fail", "raise SystemExit(3)"),
        ]
        ids = backend.submit(requests)
        assert len(set(ids)) == 3 and all(isinstance(i, str) and i for i in ids)
        states = self.wait_for(
            backend, ids, lambda s: all(not x.status.is_active() for x in s.values())
        )
        assert [states[i].status for i in ids] == [JobStatus.EXITED] * 3
        assert [states[i].exit_code for i in ids] == [0, REQUEUE_EXIT_CODE, 3]

    def test_logs_and_environment_reach_the_job(self, backend: Backend, tmp_path: Path) -> None:
        [job_id] = backend.submit(
            [python_job(tmp_path, "env", "import os; print(os.environ['AFFVX_TEST_KEY'])")]
        )
        self.wait_for(backend, [job_id], lambda s: not s[job_id].status.is_active())
        logs = list((tmp_path / "logs" / "env").glob("*.out"))
        assert logs and "env" in logs[0].read_text()

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

    def test_render_shows_the_command(self, backend: Backend, tmp_path: Path) -> None:
        scripts = backend.render([python_job(tmp_path, "shown", "print(1)")])
        assert scripts and any("-c" in script and "print(1)" in script for script in scripts)
