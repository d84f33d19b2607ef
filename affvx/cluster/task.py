"""The task shim: what a scheduler runs on its node for one job, on every cluster backend.

A scheduler (SLURM, PBS, Ray) starts a task; the task runs the job's command as a child
process with the same `AFFVX_*` environment on every backend (affvx.protocol), passes stop
signals on to it, and returns its exit status. What differs per scheduler is only where the
facts come from (a `JobEnvironment` the backend reads from its own variables) and what to do
when the job asks to be requeued.
"""

from __future__ import annotations

import dataclasses
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from affvx.protocol import STOP_SIGNALS, JobEnvironment, stop_signals_blocked

if TYPE_CHECKING:
    from affvx.cluster.base import JobRequest


@dataclass(frozen=True)
class TaskCommand:
    """One job's command as a scheduler task carries it (picklable, plain data).

    `time_limit_s` is the job's limit from the task's start (the allocation's limit less the
    backend's margin), or None.
    """

    command: tuple[str, ...]
    workdir: str
    env: tuple[tuple[str, str], ...]
    log_dir: str
    time_limit_s: float | None = None

    @classmethod
    def for_request(cls, request: JobRequest, time_limit_s: float | None) -> TaskCommand:
        """The task that runs `request`, with the job's limit from the task's start."""
        return cls(
            command=request.command,
            workdir=str(request.workdir),
            env=request.env,
            log_dir=str(request.log_dir),
            time_limit_s=time_limit_s,
        )

    def run(
        self,
        environment: JobEnvironment,
        log_name: str,
        *,
        sigint_means_cancel: bool = False,
    ) -> int:
        """Run the command to its end; return its exit status (negative: killed by a signal).

        Stop signals that reach this process while the child runs are forwarded to it; the
        child starts with them blocked and unblocks them once it can checkpoint. The signal
        handlers this process had are back when `run` returns (a Ray worker runs many tasks).
        `sigint_means_cancel`: SIGINT reaches the child as SIGTERM (ray.cancel interrupts a
        running task as SIGINT would; a job is cancelled with SIGTERM everywhere).
        """
        started = time.monotonic()
        scheduler_parent = os.getppid()  # gone later: the scheduler has let go of this task
        os.makedirs(self.log_dir, exist_ok=True)
        log = os.path.join(self.log_dir, log_name or "task")
        child: subprocess.Popen[bytes] | None = None

        def forward(signum: int, frame: Any) -> None:
            if sigint_means_cancel and signum == signal.SIGINT:
                signum = signal.SIGTERM
            if child is not None and child.poll() is None:
                child.send_signal(signum)

        previous = {signum: signal.signal(signum, forward) for signum in STOP_SIGNALS}
        try:
            # a signal during the spawn waits for `child`; the child holds it until it is ready
            with stop_signals_blocked():
                env = self._environment(environment, time.monotonic() - started)
                with open(f"{log}.out", "ab") as out, open(f"{log}.err", "ab") as err:
                    child = subprocess.Popen(
                        list(self.command),
                        cwd=self.workdir,
                        env=env,
                        stdout=out,
                        stderr=err,
                    )
            return wait_running_handlers(child, parent_pid=scheduler_parent)
        finally:
            for signum, handler in previous.items():  # None: a handler set outside Python
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)

    def _environment(self, environment: JobEnvironment, elapsed_s: float) -> dict[bytes, bytes]:
        # bytes, as the child gets them: Popen would encode every inherited variable again
        env = dict(os.environb)
        limit = None if self.time_limit_s is None else max(self.time_limit_s - elapsed_s, 0.0)
        job = dataclasses.replace(environment, time_limit_s=limit).to_environ()
        for name, value in (*self.env, *job.items()):
            env[os.fsencode(name)] = os.fsencode(value)
        return env


def wait_running_handlers(child: subprocess.Popen[bytes], parent_pid: int | None = None) -> int:
    """`child.wait()` that runs this process's signal handlers within 50 ms of a signal, and
    that ends the child once the scheduler has let go of this task.

    A plain wait sits in waitpid(), which only a signal delivered to the main thread
    interrupts. The kernel may deliver a process-wide signal to any thread that does not
    block it -- submitit imports numpy, whose BLAS threads block nothing; a Ray worker has
    many threads -- and then the Python handler would not run (nor forward the scheduler's
    warning) until the child ended on its own. So the wait returns to the interpreter every
    HANDLER_LATENCY_S: on the child's pidfd (woken the moment it exits), else by polling.

    Let go: this task's parent (`parent_pid`, the batch shell a scheduler started) is gone.
    PBS ends a job when its top shell dies -- SIGTERM at the walltime or on qdel kills it at
    once -- and does not always kill the rest of the job, which would then run on, unseen.
    The child has had SIGTERM; it gets ORPHAN_GRACE_S to checkpoint and exit, then SIGKILL.
    """
    orphaned_at: float | None = None
    pidfd = _pidfd(child)
    try:
        while True:
            code = _exit_status_within(child, pidfd, HANDLER_LATENCY_S)
            if code is not None:
                return code
            if parent_pid is None or os.getppid() == parent_pid:
                continue
            if orphaned_at is None:
                orphaned_at = time.monotonic()
                child.send_signal(signal.SIGTERM)
            elif time.monotonic() - orphaned_at > ORPHAN_GRACE_S:
                child.kill()
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _pidfd(child: subprocess.Popen[bytes]) -> int | None:
    try:
        return os.pidfd_open(child.pid)
    except (AttributeError, OSError):  # an old kernel: poll instead
        return None


def _exit_status_within(
    child: subprocess.Popen[bytes], pidfd: int | None, timeout_s: float
) -> int | None:
    if pidfd is None:
        try:
            return child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
    select.select([pidfd], [], [], timeout_s)
    return child.poll()


HANDLER_LATENCY_S = 0.05
ORPHAN_GRACE_S = 10.0  # as PBS's default kill_delay


def granted_cpus(*variables: str) -> int | None:
    """The first of `variables` that holds a positive CPU count, else None."""
    for variable in variables:
        value = os.environ.get(variable, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def visible_gpus() -> tuple[str, ...]:
    """The GPUs this task may use, as CUDA_VISIBLE_DEVICES lists them."""
    return tuple(g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip())
