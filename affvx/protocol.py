"""The job-process protocol: how a job and whatever runs it talk, on every backend.

A job is a process. It learns about its allocation from `AFFVX_*` environment variables
(`JobEnvironment`), which every backend sets the same way whatever the scheduler calls them;
it is told to stop by one of STOP_SIGNALS, which it receives blocked at start and unblocks
once it can checkpoint; and it says how it ended by its exit status:

    EXIT_COMPLETE  0   finished; result.json is written
    EXIT_FAILED    1   failed; a retry may help (a crash, a lost node)
    EXIT_INPUT     2   failed deterministically (bad input, divergence): never retried
    EXIT_REQUEUE   75  checkpointed and wants to run again (EX_TEMPFAIL)
    EXIT_CANCELLED 76  checkpointed and stopped because the job was cancelled: not to run
                       again (whatever runs it may tell this from a requeue)

This module is the bottom floor: every affvx package may import it, and it imports none.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

EXIT_COMPLETE = 0
EXIT_FAILED = 1
EXIT_INPUT = 2
EXIT_REQUEUE = 75
EXIT_CANCELLED = 76

STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)

SCHEDULER_JOB_ID = "AFFVX_SCHEDULER_JOB_ID"
BACKEND = "AFFVX_BACKEND"
CPUS = "AFFVX_CPUS"
GPUS = "AFFVX_GPUS"
TIME_LIMIT_S = "AFFVX_TIME_LIMIT_S"
DEVICE = "AFFVX_DEVICE"
# whether a GPU job captures its training step as a CUDA graph: auto, on or off
CUDA_GRAPHS = "AFFVX_CUDA_GRAPHS"
CUDA_GRAPHS_CHOICES = ("auto", "on", "off")
# the share of its GPU's memory a job may take when N jobs share one GPU (1/N)
GPU_MEMORY_FRACTION = "AFFVX_GPU_MEMORY_FRACTION"


def block_stop_signals() -> None:
    """Block STOP_SIGNALS in the calling thread (for a child's preexec_fn)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """STOP_SIGNALS blocked in this thread for the duration: children started inside inherit
    the blocked mask; signals that arrive meanwhile are delivered when it ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@dataclass(frozen=True)
class JobEnvironment:
    """What a job process knows of its allocation, from `AFFVX_*` variables alone.

    `time_limit_s` counts from the job process's start: by then it must have checkpointed
    and exited (the backend has already taken its own safety margin off). None: no limit.
    `cpus` is what the scheduler granted (None: unknown, use the CPU affinity); `gpus` the
    visible GPU ids as the scheduler lists them. `device` and `cuda_graphs` are passed on to
    the trainer as they are (it checks them).
    """

    scheduler_job_id: str = ""
    backend: str = ""
    cpus: int | None = None
    gpus: tuple[str, ...] = ()
    time_limit_s: float | None = None
    device: str = "auto"
    cuda_graphs: str = "auto"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> JobEnvironment:
        env = os.environ if environ is None else environ
        cpus = env.get(CPUS, "")
        limit = env.get(TIME_LIMIT_S, "")
        return cls(
            scheduler_job_id=env.get(SCHEDULER_JOB_ID, ""),
            backend=env.get(BACKEND, ""),
            cpus=int(cpus) if cpus.isdigit() and int(cpus) > 0 else None,
            gpus=tuple(g for g in env.get(GPUS, "").split(",") if g.strip()),
            time_limit_s=_seconds(limit),
            device=env.get(DEVICE, "") or "auto",
            cuda_graphs=env.get(CUDA_GRAPHS, "") or "auto",
        )

    def time_left_s(self) -> float | None:
        """What is left of `time_limit_s` now, counting from this process's start (its
        imports included), or None without a limit."""
        if self.time_limit_s is None:
            return None
        return max(self.time_limit_s - process_age_s(), 0.0)

    def to_environ(self) -> dict[str, str]:
        """The variables that describe this environment (unset ones left out)."""
        variables = {SCHEDULER_JOB_ID: self.scheduler_job_id, BACKEND: self.backend}
        if self.cpus is not None:
            variables[CPUS] = str(self.cpus)
        variables[GPUS] = ",".join(self.gpus)
        if self.time_limit_s is not None:
            variables[TIME_LIMIT_S] = f"{self.time_limit_s:.3f}"
        if self.device != "auto":
            variables[DEVICE] = self.device
        if self.cuda_graphs != "auto":
            variables[CUDA_GRAPHS] = self.cuda_graphs
        return variables


def process_age_s() -> float:
    """Seconds since this process started (Linux: its start time in /proc/self/stat)."""
    with open("/proc/self/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    started_s = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in ticks
    return max(time.clock_gettime(time.CLOCK_BOOTTIME) - started_s, 0.0)


def _seconds(text: str) -> float | None:
    """A time limit from its variable: unset -> None; spent (<= 0) -> 0, stop at once."""
    try:
        return max(float(text), 0.0)
    except ValueError:
        return None
