"""The task shim: what a scheduler runs on its node for one job, on every cluster backend.

A scheduler (SLURM, PBS, Ray) starts a task; the task runs the job's command as a child
process with the same `AFFVX_*` environment on every backend (affvx.protocol), passes stop
signals on to it, and returns its exit status. What differs per scheduler is only where the
facts come from (a `JobEnvironment` the backend reads from its own variables) and what to do
when the job asks to be requeued.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from affvx.protocol import (
    EXIT_CANCELLED,
    EXIT_COMPLETE,
    EXIT_INPUT,
    EXIT_REQUEUE,
    STOP_SIGNALS,
    JobEnvironment,
    stop_signals_blocked,
)

if TYPE_CHECKING:
    from affvx.cluster.base import JobRequest
    from affvx.cluster.warm import WarmProcess, WarmStarter


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
        """The task that runs `request`, with the job's limit from the task's start (and,
        for a job that shares its GPU, the share of its memory it may take)."""
        return cls(
            command=request.command,
            workdir=str(request.workdir),
            env=(*request.env, *request.resources.sharing_environment().items()),
            log_dir=str(request.log_dir),
            time_limit_s=time_limit_s,
        )

    def run(
        self,
        environment: JobEnvironment,
        log_name: str,
        *,
        sigint_means_cancel: bool = False,
        starter: WarmStarter | None = None,
    ) -> int:
        """Run the command to its end (forked from `starter`'s warm server if given); return
        its exit status (negative: killed by a signal).

        Stop signals that reach this process while the child runs are forwarded to it; the
        child starts with them blocked and unblocks them once it can checkpoint. The signal
        handlers this process had are back when `run` returns (a Ray worker runs many tasks).
        `sigint_means_cancel`: SIGINT reaches the child as SIGTERM (ray.cancel interrupts a
        running task as SIGINT would; a job is cancelled with SIGTERM everywhere).
        """
        return run_side_by_side(
            [(self, environment)],
            log_name,
            sigint_means_cancel=sigint_means_cancel,
            starter=starter,
        )[0]

    def spawn(
        self,
        environment: JobEnvironment,
        log_name: str,
        elapsed_s: float,
        starter: WarmStarter | None = None,
    ) -> subprocess.Popen[bytes] | WarmProcess:
        """Start the command (call with stop signals blocked: the child inherits the mask),
        forked from `starter`'s warm server if given; `elapsed_s` of the job's time limit are
        gone already."""
        os.makedirs(self.log_dir, exist_ok=True)
        log = os.path.join(self.log_dir, log_name or "task")
        env = self._environment(environment, elapsed_s)
        with open(f"{log}.out", "ab") as out, open(f"{log}.err", "ab") as err:
            if starter is not None:
                return starter.start(
                    self.command, cwd=self.workdir, env=env, stdout=out, stderr=err
                )
            return subprocess.Popen(
                list(self.command), cwd=self.workdir, env=env, stdout=out, stderr=err
            )

    def _environment(self, environment: JobEnvironment, elapsed_s: float) -> dict[bytes, bytes]:
        # bytes, as the child gets them: Popen would encode every inherited variable again
        env = dict(os.environb)
        limit = None if self.time_limit_s is None else max(self.time_limit_s - elapsed_s, 0.0)
        job = dataclasses.replace(environment, time_limit_s=limit).to_environ()
        for name, value in (*self.env, *job.items()):
            env[os.fsencode(name)] = os.fsencode(value)
        return env


@dataclass(frozen=True)
class TaskPack:
    """Jobs that share one array task and its one GPU, run side by side (`--jobs-per-gpu N`
    on a cluster backend).

    Each member is still its own job: its own process, scheduler id (the task's id with
    `#k/n`, see `packed_id`), logs, checkpoint and attempts; each gets an equal part of the
    task's CPUs. Stop signals reach every member. `mps`: the members' GPU work goes through
    a private MPS daemon for the task's lifetime (without a GPU or MPS: one line on stderr,
    and the jobs run without it). The task's exit status is `pack_exit_status` of theirs;
    how each job ended is in its own files (the worker writes them), for the driver to read.
    """

    members: tuple[TaskCommand, ...]
    mps: bool = False

    def run(
        self, environment: JobEnvironment, log_name: str, *, sigint_means_cancel: bool = False
    ) -> int:
        count = len(self.members)
        cpus = max((environment.cpus or count) // count, 1)
        with (
            _mps_environment(self.mps, environment.gpus) as mps_env,
            _warm_starter(self.members[0].command) as starter,
        ):
            members = [
                (
                    dataclasses.replace(member, env=(*member.env, *mps_env.items())),
                    dataclasses.replace(
                        environment,
                        scheduler_job_id=packed_id(environment.scheduler_job_id, k, count),
                        cpus=cpus,
                    ),
                )
                for k, member in enumerate(self.members)
            ]
            codes = run_side_by_side(
                members, log_name, sigint_means_cancel=sigint_means_cancel, starter=starter
            )
        return pack_exit_status(codes)


def packed_id(task_id: str, member: int, count: int) -> str:
    """The scheduler id of member `member` of `count` jobs packed into task `task_id`."""
    return f"{task_id}{PACK_MARK}{member}/{count}"


def unpacked(scheduler_id: str) -> tuple[str, int, int] | None:
    """(task id, member, count) of a packed scheduler id; None for a task's own id."""
    task_id, mark, member = scheduler_id.rpartition(PACK_MARK)
    number, _, count = member.partition("/")
    if not mark or not number.isdigit() or not count.isdigit():
        return None
    return task_id, int(number), int(count)


PACK_MARK = "#"


def pack_exit_status(codes: list[int]) -> int:
    """One exit status for a pack's members: a failure if any failed (not EXIT_INPUT unless
    every failure was: a retry of the others may help), else EXIT_REQUEUE if any
    checkpointed to run again (the task is requeued; members already complete end at once),
    else EXIT_CANCELLED if any stopped for good, else 0."""
    failures = [c for c in codes if c not in (EXIT_COMPLETE, EXIT_REQUEUE, EXIT_CANCELLED)]
    if failures:
        return next((c for c in failures if c != EXIT_INPUT), EXIT_INPUT)
    for code in (EXIT_REQUEUE, EXIT_CANCELLED):
        if code in codes:
            return code
    return EXIT_COMPLETE


def _warm_starter(
    command: tuple[str, ...],
) -> contextlib.AbstractContextManager[WarmStarter | None]:
    """A warm server for the pack's jobs (`python -m MODULE ...`), closed on leaving: torch
    and the job code are imported once per task, not once per job; None for other commands."""
    from affvx.cluster.warm import WarmStarter

    return WarmStarter.for_command(command) or contextlib.nullcontext()


@contextlib.contextmanager
def _mps_environment(wanted: bool, gpus: tuple[str, ...]) -> Iterator[dict[str, str]]:
    """The variables that send a process's GPU work through a private MPS daemon, started
    here and stopped on leaving; {} when not wanted or not available (said on stderr)."""
    if not wanted:
        yield {}
        return
    from affvx.cluster.mps import MpsDaemon, mps_unavailable

    missing = mps_unavailable(gpus)
    if missing:
        sys.stderr.write(missing + "\n")
        yield {}
        return
    daemon = MpsDaemon()
    daemon.start()
    try:
        yield daemon.environment()
    finally:
        daemon.stop()


def run_side_by_side(
    members: list[tuple[TaskCommand, JobEnvironment]],
    log_name: str,
    *,
    sigint_means_cancel: bool = False,
    starter: WarmStarter | None = None,
) -> list[int]:
    """Run each (command, environment) as a child at once (forks of `starter`'s server,
    if given); their exit statuses, in order.

    Stop signals that reach this process are forwarded to every child still running (see
    TaskCommand.run); this process's own handlers are back on return.
    """
    started = time.monotonic()
    scheduler_parent = os.getppid()  # gone later: the scheduler has let go of this task
    children: list[subprocess.Popen[bytes] | WarmProcess] = []

    def forward(signum: int, frame: Any) -> None:
        if sigint_means_cancel and signum == signal.SIGINT:
            signum = signal.SIGTERM
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in STOP_SIGNALS}
    try:
        # a signal during the spawn waits for `children`; each holds it until it is ready
        with stop_signals_blocked():
            for task, environment in members:
                elapsed_s = time.monotonic() - started
                children.append(task.spawn(environment, log_name, elapsed_s, starter))
        return wait_all_running_handlers(children, parent_pid=scheduler_parent)
    finally:
        for signum, handler in previous.items():  # None: a handler set outside Python
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def wait_all_running_handlers(
    children: list[subprocess.Popen[bytes] | WarmProcess], parent_pid: int | None = None
) -> list[int]:
    """Wait for every child, running this process's signal handlers within 50 ms of a
    signal, and end the children once the scheduler has let go of this task; their exit
    statuses, in order.

    A plain wait sits in waitpid(), which only a signal delivered to the main thread
    interrupts. The kernel may deliver a process-wide signal to any thread that does not
    block it -- submitit imports numpy, whose BLAS threads block nothing; a Ray worker has
    many threads -- and then the Python handler would not run (nor forward the scheduler's
    warning) until the child ended on its own. So the wait returns to the interpreter every
    HANDLER_LATENCY_S: on the children's pidfds (woken the moment one exits), else by polling.

    Let go: this task's parent (`parent_pid`, the batch shell a scheduler started) is gone.
    PBS ends a job when its top shell dies -- SIGTERM at the walltime or on qdel kills it at
    once -- and does not always kill the rest of the job, which would then run on, unseen.
    The children have SIGTERM; they get ORPHAN_GRACE_S to checkpoint and exit, then SIGKILL.
    """
    codes: dict[int, int] = {}
    orphaned_at: float | None = None
    pidfds = [_pidfd(child) for child in children]
    try:
        while True:
            running = [i for i in range(len(children)) if i not in codes]
            _wait_for_an_exit([pidfds[i] for i in running], HANDLER_LATENCY_S)
            for i in running:
                code = children[i].poll()
                if code is not None:
                    codes[i] = code
            left = [children[i] for i in range(len(children)) if i not in codes]
            if not left:
                return [codes[i] for i in range(len(children))]
            if parent_pid is None or os.getppid() == parent_pid:
                continue
            if orphaned_at is None:
                orphaned_at = time.monotonic()
                for child in left:
                    child.send_signal(signal.SIGTERM)
            elif time.monotonic() - orphaned_at > ORPHAN_GRACE_S:
                for child in left:
                    child.kill()
    finally:
        for pidfd in pidfds:
            if pidfd is not None:
                os.close(pidfd)


def _pidfd(child: subprocess.Popen[bytes] | WarmProcess) -> int | None:
    try:
        return os.pidfd_open(child.pid)
    except (AttributeError, OSError):  # an old kernel: poll instead
        return None


def _wait_for_an_exit(pidfds: list[int | None], timeout_s: float) -> None:
    """Return when one of the pidfds is readable (its process exited), or after
    `timeout_s`; without pidfds (an old kernel) just after `timeout_s`."""
    ready = [fd for fd in pidfds if fd is not None]
    if len(ready) == len(pidfds):
        select.select(ready, [], [], timeout_s)
    else:
        time.sleep(timeout_s)


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
