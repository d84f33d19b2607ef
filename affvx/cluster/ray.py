"""The `ray` backend: every job a Ray task, on a local Ray instance or an existing Ray cluster.

Without an address the backend starts an embedded Ray instance on 127.0.0.1 the first time it
submits (no server to set up, no dashboard unless asked) and stops it on `close`. With
`address` it joins a running cluster: `auto` (a cluster started on this machine with
`ray start`), `host:6379` (its GCS) or `ray://host:10001` (Ray Client).

Each job is one Ray task (`run_ray_task`) that runs the job's command through the task shim
(affvx.cluster.task) as a child process, exactly as a SLURM or PBS task does: same
`AFFVX_*` environment, stop signals forwarded, the exit status returned. With `warm_start`
(the default) a worker forks its jobs from a warm server that it starts at its first job and
keeps while Ray reuses it (affvx.cluster.warm: torch imported once per worker, not per job).
Ray has no time limit of its own; the job keeps its own clock (AFFVX_TIME_LIMIT_S). A job
may ask for a fraction of a GPU (`num_gpus = 0.25`: four jobs per GPU).

Faults: a task whose worker process or node dies is run again by Ray (`max_retries`) and
the job resumes from its last checkpoint. If the job's process outlived its worker, the new
attempt makes it stand down first (affvx.orchestrator.worker.sole_attempt): never two at
once. `cancel` interrupts the task (Ray delivers it as SIGINT; the job gets SIGTERM and
checkpoints), and kills it by force after `cancel_grace_s`. A job that exits on its own
-- complete, checkpointed to be requeued, failed -- is an ordinary return value: the
orchestrator decides, with its own retry cap. Tasks belong to the driver that submitted
them: when it dies, Ray stops them, and `affvx launch --resume` submits what is unfinished.

`ray` is imported only when a backend connects (`affvx status` and `collect` never load it).
"""

from __future__ import annotations

import os
import pickle
import shlex
import time
from collections.abc import Mapping
from typing import Any

from affvx.cluster.base import (
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
from affvx.cluster.ray_state import ray_auth_token, task_states
from affvx.cluster.task import TaskCommand
from affvx.cluster.warm import WarmStarter

LOCAL = "127.0.0.1"
COALESCE_S = 0.2
_PENDING = SchedulerState(JobStatus.PENDING)
CLIENT_SESSION_ATTEMPTS = 3
CLIENT_SESSION_RETRY_S = 2.0
CLIENT_SESSION_FAILED = "Starting Ray client server failed"
_remote_function: Any = None  # ray.remote(run_ray_task), made when first needed
_dashboard_url = ""  # of the Ray instance this process joined ("": none)
_warm_starter: WarmStarter | None = None  # of this process, when it is a Ray worker


def run_ray_task(pickled_task: bytes, cpus: int, warm_start: bool = False) -> int:
    """What a Ray worker runs for one job (a pickled TaskCommand): its command, to its end
    (with `warm_start`, forked from this worker's warm server); the exit status."""
    import ray

    task: TaskCommand = pickle.loads(pickled_task)
    context = ray.get_runtime_context()
    environment = JobEnvironment(
        scheduler_job_id=context.get_task_id() or "",
        backend=RayBackend.name,
        cpus=cpus,
        gpus=tuple(str(g) for g in ray.get_gpu_ids()),
    )
    log_name = f"ray-{environment.scheduler_job_id[:16]}"
    starter = _worker_warm_starter(task.command) if warm_start else None
    return task.run(environment, log_name, sigint_means_cancel=True, starter=starter)


def _worker_warm_starter(command: tuple[str, ...]) -> WarmStarter | None:
    """This Ray worker's warm server for `python -m MODULE` commands (None for others):
    started at the worker's first job, kept for the next ones (Ray reuses a worker for the
    driver's tasks), gone with the worker (the server exits when its client does)."""
    global _warm_starter
    if _warm_starter is not None and _warm_starter.forks(command):
        return _warm_starter
    replacement = WarmStarter.for_command(command)
    if replacement is not None:
        if _warm_starter is not None:
            _warm_starter.close()
        _warm_starter = replacement
    return replacement


class RayBackend(Backend):
    """Runs each job as a Ray task (see the module docstring).

    Ids are Ray task ids (hex); they mean something only to this driver, which holds the
    tasks' results: `poll` answers for the ids this instance submitted, UNKNOWN for others.
    """

    name = "ray"
    capabilities = Capabilities(
        jobs_outlive_client=False,  # a driver's tasks die with it
        needs_local_supervisor=True,  # a detached launch keeps a driver running
        pollable_anywhere=False,
        requeues_itself=False,
    )
    options = (
        BackendOption(
            "address",
            str,
            None,
            "Ray cluster to join: auto, HOST:6379 or ray://HOST:10001 "
            "[default: start a local Ray instance]",
            flag="--ray-address",
        ),
        BackendOption(
            "num_gpus",
            float,
            None,
            "GPUs per job, fractions allowed (0.25: four jobs share a GPU) "
            "[default: the job's GPUs, 1/N of one with --jobs-per-gpu N]",
            minimum=0,
        ),
        BackendOption(
            "resources", list, [], "extra Ray resources per job, NAME=AMOUNT (e.g. big_mem=1)"
        ),
        BackendOption("runtime_env", dict, None, "Ray runtime_env of the tasks (env_vars, ...)"),
        BackendOption(
            "max_retries",
            int,
            3,
            "times Ray reruns a job whose worker process or node died",
            minimum=0,
        ),
        BackendOption(
            "num_cpus", int, None, "CPUs of the local Ray instance [default: all]", minimum=1
        ),
        BackendOption("dashboard", bool, False, "start Ray's dashboard with the local instance"),
        BackendOption(
            "cancel_grace_s",
            float,
            30.0,
            "seconds a cancelled job has to checkpoint before its task is killed",
            minimum=0,
        ),
        BackendOption(
            "warm_start",
            bool,
            True,
            "start each job as a fork of a process that has imported torch and the job code "
            "once per Ray worker (seconds less per job); off: a fresh interpreter per job",
        ),
    )
    poll_interval_s = 1.0

    def __init__(
        self,
        address: str | None = None,
        *,
        num_gpus: float | None = None,
        resources: list[str] | None = None,
        runtime_env: Mapping[str, Any] | None = None,
        max_retries: int = 3,
        num_cpus: int | None = None,
        dashboard: bool = False,
        cancel_grace_s: float = 30.0,
        warm_start: bool = True,
    ) -> None:
        self.address = address or None
        self.num_gpus = num_gpus
        self.extra_resources = _amounts(resources or [])
        self.runtime_env = dict(runtime_env or {})
        self.max_retries = max_retries
        self.num_cpus = num_cpus
        self.dashboard = dashboard
        self.cancel_grace_s = cancel_grace_s
        self.warm_start = warm_start
        self._running: dict[str, Any] = {}  # task id -> ObjectRef of its exit status
        self._ended: dict[str, SchedulerState] = {}
        self._cancelled: dict[str, float | None] = {}  # task id -> when cancel was asked
        self._connected = False

    # -- the contract -------------------------------------------------------------------------

    def submit(self, requests: list[JobRequest]) -> list[str]:
        if not requests:
            return []
        remote = self._remote_task()
        ids = []
        for request in requests:
            task = TaskCommand.for_request(request, job_time_limit_s(request.resources, 0.0))
            # pickled here: Ray's own serialiser (cloudpickle) costs 0.1 ms more a task
            pickled_task = pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)
            options = self.task_options(request)
            ref = remote.options(**options).remote(
                pickled_task, request.resources.cpus, self.warm_start
            )
            task_id = ref.task_id().hex()
            self._running[task_id] = ref
            ids.append(task_id)
        return ids

    def poll(self, ids: list[str]) -> dict[str, SchedulerState]:
        self._force_overdue_cancels()
        waiting = [self._running[i] for i in ids if i in self._running]
        if waiting:
            import ray

            ready, _ = ray.wait(waiting, num_returns=len(waiting), timeout=0, fetch_local=True)
            for task_id, state in self._outcomes(ready).items():
                self._ended[task_id] = state
                del self._running[task_id]  # its result is read: Ray may free it
        states = {}
        for task_id in ids:
            if task_id in self._ended:
                states[task_id] = self._ended[task_id]
            elif task_id in self._running:
                # Ray does not say cheaply whether a task has started; the job's files do
                states[task_id] = _PENDING
            else:
                states[task_id] = SchedulerState(JobStatus.UNKNOWN, reason="not this driver's")
        return states

    def cancel(self, ids: list[str]) -> None:
        """Stop the tasks: a running job gets SIGTERM from its task (it checkpoints); a task
        still running `cancel_grace_s` later is cancelled by force (its worker killed)."""
        import ray

        for task_id in ids:
            ref = self._running.get(task_id)
            if ref is None or task_id in self._cancelled:
                continue
            self._cancelled[task_id] = time.monotonic()
            ray.cancel(ref, force=False)

    def _force_overdue_cancels(self) -> None:
        import ray

        now = time.monotonic()
        for task_id, asked in list(self._cancelled.items()):
            overdue = asked is not None and now - asked > self.cancel_grace_s
            if overdue and task_id in self._running:
                self._cancelled[task_id] = None  # forced once
                ray.cancel(self._running[task_id], force=True)

    def wait(self, timeout_s: float) -> None:
        """Return once one of this driver's tasks has ended (gathering the others that end
        within COALESCE_S, so that a thousand short jobs wake the driver a few times a
        second, not a thousand times), at the latest after `timeout_s`."""
        waiting = list(self._running.values())
        if not waiting:
            super().wait(timeout_s)
            return
        import ray

        ready, _ = ray.wait(waiting, num_returns=1, timeout=timeout_s, fetch_local=False)
        if ready and len(waiting) > 1:
            ray.wait(waiting, num_returns=len(waiting), timeout=COALESCE_S, fetch_local=False)

    def render(self, requests: list[JobRequest]) -> list[str]:
        """What would be submitted: where, and each task with its Ray options and command."""
        if not requests:
            return []
        where = (
            f"the Ray cluster at {self.address}"
            if self.address
            else f"a local Ray instance on {LOCAL} ({self.num_cpus or os.cpu_count()} CPUs)"
        )
        lines = [f"# ray backend: {len(requests)} tasks on {where}"]
        for request in requests:
            options = self.task_options(request)
            shown = " ".join(f"{k}={v}" for k, v in options.items() if k != "runtime_env")
            lines.append(f"# task {request.key}: {shown}")
            lines.append(
                f"cd {shlex.quote(str(request.workdir))} && {shlex.join(request.command)}"
            )
        if self.runtime_env:
            lines.append(f"# runtime_env: {self.runtime_env}")
        return ["\n".join(lines) + "\n"]

    def reach(self) -> dict[str, str]:
        """This driver's Ray job and the dashboard that serves Ray's state API ("" when the
        instance has none), once connected."""
        import sys

        ray = sys.modules.get("ray")
        if ray is None or not ray.is_initialized():
            return {}
        return {
            "ray_job_id": ray.get_runtime_context().get_job_id(),
            "dashboard_url": _dashboard_url,
        }

    def observe(self, ids: list[str], reach: Mapping[str, str]) -> dict[str, SchedulerState]:
        """What Ray's state API says of another driver's tasks (no `import ray`)."""
        if not reach.get("dashboard_url"):
            raise ClusterError(
                "Ray's state API is out of reach: the run's Ray instance has no dashboard "
                "(`[backend.ray] dashboard = true` starts one with a local instance)"
            )
        states = task_states(reach["dashboard_url"], reach.get("ray_job_id", ""))
        return {task_id: states[task_id] for task_id in ids if task_id in states}

    def close(self) -> None:
        """Disconnect from Ray (a local instance this backend started stops with it)."""
        if self._connected:
            import ray

            ray.shutdown()
            self._connected = False

    # -- Ray ----------------------------------------------------------------------------------

    def task_options(self, request: JobRequest) -> dict[str, Any]:
        """The `.options()` of the Ray task that runs `request`."""
        resources = request.resources
        options: dict[str, Any] = {
            "name": request.key,
            "num_cpus": resources.cpus,
            "num_gpus": self.num_gpus if self.num_gpus is not None else _gpus(resources),
            "max_retries": self.max_retries,
            "retry_exceptions": False,
        }
        if resources.mem_gb:
            options["memory"] = int(resources.mem_gb * 2**30)
        if self.extra_resources:
            options["resources"] = dict(self.extra_resources)
        if self.runtime_env:
            options["runtime_env"] = dict(self.runtime_env)
        return options

    def _remote_task(self) -> Any:
        self._connect()
        global _remote_function
        if _remote_function is None:  # one per process: Ray exports a function once
            import ray

            _remote_function = ray.remote(run_ray_task)
        return _remote_function

    def _connect(self) -> None:
        import logging

        if self.address:
            _token_mode_if_a_token_is_at_hand()  # read when ray is imported
        import ray

        if ray.is_initialized():
            return
        global _dashboard_url
        quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
        try:
            if self.address:
                context = _join(self.address, quiet)
            else:
                context = ray.init(
                    address="local",
                    num_cpus=self.num_cpus,
                    include_dashboard=self.dashboard,
                    _node_ip_address=LOCAL,
                    **quiet,
                )
        except (ConnectionError, RuntimeError, ValueError) as error:
            where = self.address or "a local instance"
            raise ClusterError(
                f"could not start or join Ray ({where}): {' '.join(str(error).split())}"
            ) from None
        _dashboard_url = getattr(context, "dashboard_url", "") or ""
        self._connected = True

    def _outcomes(self, ready: list[Any]) -> dict[str, SchedulerState]:
        """How the tasks of `ready` ended, by task id (one `ray.get` for all when none
        failed, which is the common case)."""
        import ray
        from ray import exceptions

        try:
            codes = ray.get(ready, timeout=0)
        except exceptions.RayError:
            return {ref.task_id().hex(): self._outcome(ref) for ref in ready}
        task_ids = [ref.task_id().hex() for ref in ready]
        return {task_id: self._exited(task_id, code) for task_id, code in zip(task_ids, codes)}

    def _outcome(self, ref: Any) -> SchedulerState:
        import ray
        from ray import exceptions

        task_id = ref.task_id().hex()
        try:
            code = ray.get(ref, timeout=0)
        except (exceptions.TaskCancelledError, exceptions.WorkerCrashedError) as error:
            if task_id in self._cancelled:
                return SchedulerState(JobStatus.CANCELLED, reason="cancelled")
            return SchedulerState(JobStatus.UNKNOWN, reason=_first_line(error))
        except exceptions.RayError as error:  # its node died, its worker died, retries spent
            return SchedulerState(JobStatus.UNKNOWN, reason=_first_line(error))
        return self._exited(task_id, code)

    def _exited(self, task_id: str, code: int) -> SchedulerState:
        if task_id in self._cancelled and code != 0:
            return SchedulerState(JobStatus.CANCELLED, exit_code=code, reason="cancelled")
        return SchedulerState(JobStatus.EXITED, exit_code=code)


def _join(address: str, options: dict[str, Any]) -> Any:
    """`ray.init(address)`, tried again when a Ray Client server accepted the connection but
    failed to start the session's own server process (Ray's proxier says "Starting Ray
    client server failed"; seen now and then on a busy head, gone on the next try)."""
    import ray

    for attempt in range(1, CLIENT_SESSION_ATTEMPTS):
        try:
            return ray.init(address=address, **options)
        except ConnectionAbortedError as error:
            if CLIENT_SESSION_FAILED not in str(error):
                raise
        time.sleep(CLIENT_SESSION_RETRY_S * attempt)
    return ray.init(address=address, **options)


def _token_mode_if_a_token_is_at_hand() -> None:
    """Ray (2.5x) clusters want a token by default, but a driver that joins one by address
    sends it only in token mode, which Ray turns on by itself only for the instances it
    starts. Turn it on when a token is at hand and RAY_AUTH_MODE says nothing."""
    if "RAY_AUTH_MODE" not in os.environ and ray_auth_token():
        os.environ["RAY_AUTH_MODE"] = "token"


def _amounts(texts: list[str]) -> dict[str, float]:
    amounts = {}
    for text in texts:
        name, sep, amount = text.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError(text)
            amounts[name.strip()] = float(amount)
        except ValueError:
            raise ClusterError(
                f"[backend.ray] resources {text!r}: write NAME=AMOUNT, e.g. big_mem=1"
            ) from None
    return amounts


def _first_line(error: BaseException) -> str:
    return next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)


def _gpus(resources: Resources) -> float:
    """A job's GPUs as Ray counts them: 1/N of one for a job that shares its GPU N ways."""
    return 1 / resources.jobs_per_gpu if resources.shares_gpu else float(resources.gpus)
