"""The `local` backend: every job a child process of this one, on this machine's CPUs and GPUs.

It behaves like a small cluster: jobs queue until their CPUs (and GPUs) are free -- free of
this launch's other jobs and of every other affvx launch on the machine (MachineSlots) --,
each runs pinned to its own CPUs in its own process group, and time limits work as on SLURM with
`--signal=USR2@grace`: the job's own clock (AFFVX_TIME_LIMIT_S) and SIGUSR2 both say stop
`signal_grace_s` before the limit (the job checkpoints and exits to be requeued; 0 sends no
warning signal and leaves only the job's clock), SIGTERM at the limit, SIGKILL
`kill_delay_s` later. Children get SIGTERM if this process dies (PR_SET_PDEATHSIG), so no job
outlives its supervisor unseen.
"""

from __future__ import annotations

import itertools
import os
import selectors
import shlex
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from affvx.cluster.base import (
    EXIT_REQUEUE,
    Backend,
    BackendOption,
    Capabilities,
    JobEnvironment,
    JobRequest,
    JobStatus,
    Resources,
    SchedulerState,
    job_time_limit_s,
)
from affvx.cluster.errors import ClusterError
from affvx.cluster.mps import MpsDaemon, mps_unavailable
from affvx.cluster.slots import MachineSlots
from affvx.cluster.warm import WarmProcess, WarmStarter, start_plain


@dataclass
class _Running:
    request: JobRequest
    process: subprocess.Popen[bytes] | WarmProcess
    cpus: list[int]
    gpus: list[str]
    started: float
    deadline: float | None
    warned: bool = False
    terminated_at: float | None = None
    reason: str = ""
    pidfd: int | None = field(default=None, repr=False)
    slot_locks: list[int] = field(default_factory=list, repr=False)


class LocalBackend(Backend):
    """Runs jobs as child processes, as many at once as CPUs, GPUs and `max_parallel` allow."""

    name = "local"
    capabilities = Capabilities(
        jobs_outlive_client=False,
        needs_local_supervisor=True,
        pollable_anywhere=False,
        requeues_itself=False,
    )
    options = (
        BackendOption(
            "max_parallel",
            int,
            None,
            "most jobs at once [default: CPUs / cpus per job]",
            flag="--max-parallel",
            minimum=1,
        ),
        BackendOption(
            "signal_grace_s",
            float,
            30.0,
            "seconds before the time limit that a job is told to stop (SIGUSR2; 0: no signal)",
            minimum=0,
        ),
        BackendOption("kill_delay_s", float, 10.0, "seconds from SIGTERM to SIGKILL", minimum=0),
        BackendOption(
            "mps",
            bool,
            False,
            "run the jobs' GPU work through a private NVIDIA MPS daemon (with --jobs-per-gpu); "
            "without a GPU or MPS, a note and no MPS",
            flag="--mps",
        ),
        BackendOption(
            "warm_start",
            bool,
            True,
            "start each job as a fork of one process that has imported torch and the job code "
            "once per launch (seconds less per job); off: a fresh interpreter per job",
        ),
        BackendOption(
            "slot_dir",
            str,
            None,
            "where the machine-wide CPU/GPU claims live, shared by every launch on this "
            "machine [default: $AFFVX_SLOT_DIR, else a per-user temporary directory]",
        ),
    )

    def __init__(
        self,
        max_parallel: int | None = None,
        *,
        kill_delay_s: float = 10.0,
        signal_grace_s: float = 30.0,
        cpus: list[int] | None = None,
        gpus: list[str] | None = None,
        mps: bool = False,
        warm_start: bool = True,
        slot_dir: str | None = None,
    ) -> None:
        self.cpus = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
        self.gpus = list(gpus if gpus is not None else _visible_gpus())
        if max_parallel is not None and max_parallel < 1:
            raise ClusterError(f"--max-parallel {max_parallel}: give at least 1 job at once")
        if signal_grace_s < 0 or kill_delay_s < 0:
            raise ClusterError("[backend.local] signal_grace_s and kill_delay_s must be >= 0")
        self.max_parallel = max_parallel or len(self.cpus)
        self._mps_note = mps_unavailable(self.gpus) if mps else ""
        self.mps = mps and not self._mps_note
        self._mps_daemon = MpsDaemon()
        self.warm_start = warm_start
        self._starter: WarmStarter | None = None
        self.kill_delay_s = kill_delay_s
        self.signal_grace_s = signal_grace_s
        self._ids = (f"local-{os.getpid()}-{n}" for n in itertools.count(1))
        self._queue: deque[tuple[str, JobRequest]] = deque()
        self._running: dict[str, _Running] = {}
        self._finished: dict[str, SchedulerState] = {}
        self._selector = selectors.DefaultSelector()
        self._slots = MachineSlots(Path(slot_dir) if slot_dir else None)

    # -- the contract -------------------------------------------------------------------------

    def check_fits(self, requests: list[JobRequest]) -> None:
        for request in requests:
            if request.resources.cpus > len(self.cpus):
                raise ClusterError(
                    f"job {request.key} asks for {request.resources.cpus} CPUs; this machine "
                    f"offers {len(self.cpus)} (--cpus)"
                )
            if request.resources.gpus > len(self.gpus):
                raise ClusterError(
                    f"job {request.key} asks for {request.resources.gpus} GPUs; this machine "
                    f"has {len(self.gpus)} (--gpus)"
                )

    def notes(self) -> list[str]:
        return [self._mps_note] if self._mps_note else []

    def submit(self, requests: list[JobRequest]) -> list[str]:
        self.check_fits(requests)
        self._start_warm_server(requests)
        ids = [next(self._ids) for _ in requests]
        self._queue.extend(zip(ids, requests))
        self._start_what_fits()
        return ids

    def poll(self, ids: list[str]) -> dict[str, SchedulerState]:
        self._reap()
        self._enforce_time_limits()
        self._start_what_fits()
        states = {}
        queued = {job_id for job_id, _ in self._queue}
        for job_id in ids:
            if job_id in self._finished:
                states[job_id] = self._finished[job_id]
            elif job_id in self._running:
                states[job_id] = SchedulerState(JobStatus.RUNNING, node=os.uname().nodename)
            elif job_id in queued:
                states[job_id] = SchedulerState(JobStatus.PENDING)
            else:
                states[job_id] = SchedulerState(JobStatus.UNKNOWN)
        return states

    def cancel(self, ids: list[str]) -> None:
        wanted = set(ids)
        for job_id, request in list(self._queue):
            if job_id in wanted:
                self._queue.remove((job_id, request))
                self._finished[job_id] = SchedulerState(JobStatus.CANCELLED, reason="cancelled")
        for job_id in wanted & set(self._running):
            self._terminate(job_id, "cancelled")

    def render(self, requests: list[JobRequest]) -> list[str]:
        """A summary: no script, child processes with these slots, limits and environment."""
        if not requests:
            return []
        first = requests[0]
        limit = first.resources.time_limit_min
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in first.env)
        gpus = f" and GPUs {','.join(self.gpus)}" if self.gpus else ""
        share = first.resources.jobs_per_gpu
        if self.gpus and first.resources.shares_gpu:
            gpus += f" ({share} jobs per GPU, each 1/{share} of its memory)"
        signals = (
            f", {limit:g} min (SIGUSR2 {self.signal_grace_s:g} s before, SIGTERM at the limit)"
            if limit
            else ""
        )
        return [
            f"# local backend: {len(requests)} jobs, up to {self.max_parallel} at once on CPUs "
            f"{','.join(map(str, self.cpus))}{gpus}\n"
            f"# each: {first.resources.cpus} CPU, {first.resources.gpus} GPU{signals}; in "
            f"{shlex.quote(str(first.workdir))} with {env}\n"
        ]

    def close(self) -> None:
        """Stop every job: SIGTERM (they checkpoint), SIGKILL after kill_delay_s."""
        self._queue.clear()
        for job_id in list(self._running):
            self._terminate(job_id, "stopped with its supervisor")
        deadline = time.monotonic() + self.kill_delay_s
        while self._running and time.monotonic() < deadline:
            self.wait(0.2)
            self._reap()
        for running in self._running.values():
            _signal_group(running.process, signal.SIGKILL)
        for running in self._running.values():
            running.process.wait()
        self._reap()
        self._mps_daemon.stop()
        if self._starter is not None:
            self._starter.close()
            self._starter = None

    # -- waiting ------------------------------------------------------------------------------

    def wait(self, timeout_s: float) -> None:  # a child's exit wakes it at once
        """Sleep until a child exits or `timeout_s` passes, whichever comes first."""
        if not self._selector.get_map():
            time.sleep(timeout_s)
            return
        self._selector.select(timeout_s)

    @property
    def idle(self) -> bool:
        return not self._queue and not self._running

    # -- internals ----------------------------------------------------------------------------

    def _start_what_fits(self) -> None:
        """Start queued jobs, in order, while their CPUs and GPUs are free: not used by this
        backend's jobs, and not claimed by another process on this machine (MachineSlots)."""
        while self._queue and len(self._running) < self.max_parallel:
            job_id, request = self._queue[0]
            free_cpus = [
                c for c in self.cpus if not any(c in r.cpus for r in self._running.values())
            ]
            cpus = self._slots.claim("cpu", free_cpus, request.resources.cpus)
            if cpus is None:
                return
            gpus = self._claim_gpus(request.resources)
            if gpus is None:
                self._slots.release(cpus.values())
                return
            self._queue.popleft()
            self._start(job_id, request, list(cpus), gpus[0])
            self._running[job_id].slot_locks = [*cpus.values(), *gpus[1]]

    def _claim_gpus(self, resources: Resources) -> tuple[list[str], list[int]] | None:
        """The job's whole GPUs, none of them used by a job of ours -- or, for a job that
        shares its GPU N ways, a place on the GPU with the fewest of our jobs (fewer than N)
        -- and the descriptors that hold them. None: not free now."""
        if resources.gpus == 0:
            return [], []
        users = {g: sum(g in r.gpus for r in self._running.values()) for g in self.gpus}
        if not resources.shares_gpu:
            free = [g for g in self.gpus if not users[g]]
            whole = self._slots.claim("gpu", free, resources.gpus)
            return None if whole is None else (list(whole), list(whole.values()))
        share = resources.jobs_per_gpu
        room = sorted((g for g in self.gpus if users[g] < share), key=users.get)
        shared = self._slots.claim_share("gpu", room, share)
        return None if shared is None else ([shared[0]], shared[1])

    def _start(self, job_id: str, request: JobRequest, cpus: list[int], gpus: list[str]) -> None:
        request.log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(request.env)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        if gpus:
            env.update(request.resources.sharing_environment())
        if gpus and self.mps:
            self._mps_daemon.start()
            env.update(self._mps_daemon.environment())
        env.update(
            JobEnvironment(
                scheduler_job_id=job_id,
                backend=self.name,
                cpus=len(cpus),
                gpus=tuple(gpus),
                time_limit_s=job_time_limit_s(request.resources, self.signal_grace_s),
            ).to_environ()
        )
        with (
            open(request.log_dir / f"{job_id}.out", "ab") as out,
            open(request.log_dir / f"{job_id}.err", "ab") as err,
        ):
            process = self._spawn(request, env, out, err, cpus)
        limit = request.resources.time_limit_min
        running = _Running(
            request=request,
            process=process,
            cpus=cpus,
            gpus=gpus,
            started=time.monotonic(),
            deadline=time.monotonic() + 60 * limit if limit else None,
        )
        try:
            running.pidfd = os.pidfd_open(process.pid)
            self._selector.register(running.pidfd, selectors.EVENT_READ, job_id)
        except OSError:  # no pidfd (old kernel): wait() falls back to polling
            running.pidfd = None
        self._running[job_id] = running

    def _start_warm_server(self, requests: list[JobRequest]) -> None:
        """With warm_start, a server that imports the module the jobs run (`python -m
        MODULE`), started now so that its imports overlap the launch's own work."""
        if self.warm_start and self._starter is None and requests:
            self._starter = WarmStarter.for_command(requests[0].command)

    def _spawn(
        self,
        request: JobRequest,
        env: dict[str, str],
        out: IO[bytes],
        err: IO[bytes],
        cpus: list[int],
    ) -> subprocess.Popen[bytes] | WarmProcess:
        """The job's process: a fork of the warm server where it can, else a fresh one; in a
        session of its own, pinned to `cpus`, stop signals blocked, SIGTERM when we die."""
        start = self._starter.start if self._starter is not None else start_plain
        return start(
            request.command, cwd=request.workdir, env=env, stdout=out, stderr=err, cpus=cpus
        )

    def _reap(self) -> None:
        for job_id, running in list(self._running.items()):
            code = running.process.poll()
            if code is None:
                continue
            if running.pidfd is not None:
                self._selector.unregister(running.pidfd)
                os.close(running.pidfd)
            del self._running[job_id]
            self._slots.release(running.slot_locks)
            if running.reason == "cancelled":
                status = JobStatus.CANCELLED
            elif running.reason == "time limit" and code != EXIT_REQUEUE:
                status = JobStatus.TIMEOUT
            else:
                status = JobStatus.EXITED
            self._finished[job_id] = SchedulerState(
                status,
                exit_code=code,
                node=os.uname().nodename,
                reason=running.reason,
                runtime_s=time.monotonic() - running.started,
            )

    def _enforce_time_limits(self) -> None:
        now = time.monotonic()
        for job_id, running in list(self._running.items()):
            if running.terminated_at is not None:
                if now - running.terminated_at >= self.kill_delay_s:
                    _signal_group(running.process, signal.SIGKILL)
                continue
            if running.deadline is None:
                continue
            if (
                self.signal_grace_s
                and not running.warned
                and now >= running.deadline - self.signal_grace_s
            ):
                running.warned = True
                _signal_group(running.process, signal.SIGUSR2)
            if now >= running.deadline:
                self._terminate(job_id, "time limit")

    def _terminate(self, job_id: str, reason: str) -> None:
        running = self._running[job_id]
        if running.terminated_at is None:
            running.terminated_at = time.monotonic()
            running.reason = reason
            _signal_group(running.process, signal.SIGTERM)


def _signal_group(process: subprocess.Popen[bytes] | WarmProcess, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


def _visible_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip()]
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [
        str(i) for i, line in enumerate(listing.stdout.splitlines()) if line.startswith("GPU ")
    ]
