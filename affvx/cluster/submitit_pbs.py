"""PBS for submitit: an executor plugin for PBS Pro / OpenPBS and Torque.

Registered under submitit's `submitit` entry-point group (pyproject.toml), so that any
submitit user gets it once affvx is installed:

    executor = submitit.AutoExecutor(folder="logs", cluster="pbs")
    executor.update_parameters(timeout_min=60, cpus_per_task=4, pbs_queue="workq")
    job = executor.submit(sum, [1, 2])          # qsub; job.job_id is PBS's own id
    job.result()

Job ids are PBS's own (`123.server`, subjobs `123[4].server`), so `qstat` and `qdel` take
them as they are; submitit's files for a job are named after it. A batch of submissions
(`executor.batch()`) is one job array (`-J 0-N%P`; Torque `-t`). The script `cd`s into the
folder (a PBS job starts in $HOME), redirects its output to submitit's log files, and
`exec`s Python, so the Python process gets PBS's SIGTERM itself.

PBS sends no warning before the walltime: SIGTERM at the limit, SIGKILL `kill_delay` later.
submitit's checkpoint-on-USR2 therefore never fires here; a job that must stop in time keeps
its own clock (affvx's jobs do). Requeueing a job (`qrerun`) needs operator rights.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from submitit.core import core, job_environment, logger, utils

from affvx.cluster import pbs_qstat

FLAVOURS = ("pbspro", "torque")
_SUBMITTED_ID = re.compile(r"^\s*(\d+)(\[\])?(\.\S+)?\s*$")


# -- the script --------------------------------------------------------------------------------


def qsub_script(
    command: str,
    folder: str | Path,
    *,
    job_name: str = "submitit",
    queue: str | None = None,
    account: str | None = None,
    ncpus: int = 1,
    ngpus: int = 0,
    mem_gb: float | None = None,
    walltime_min: float = 60.0,
    array_size: int = 1,
    array_parallelism: int | None = None,
    directives: list[str] | tuple[str, ...] = (),
    setup: list[str] | tuple[str, ...] = (),
    flavour: str = "pbspro",
    stderr_to_stdout: bool = False,
) -> str:
    """The qsub script that runs `command` (a shell command line) in `folder`.

    `directives` are extra `#PBS` lines (`-l place=excl`, `-W group_list=g`); `setup` shell
    lines run before the command (`module load cuda`). `array_size` > 1 makes a job array.
    """
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour {flavour!r}: choose {' or '.join(FLAVOURS)}")
    lines = ["#!/bin/bash", f"#PBS -N {_job_name(job_name)}"]
    lines += _resource_lines(flavour, ncpus, ngpus, mem_gb, walltime_min)
    if queue:
        lines.append(f"#PBS -q {queue}")
    if account:
        lines.append(f"#PBS -A {account}")
    if array_size > 1:
        # a limit at or above the array's size limits nothing: leave it to the scheduler
        limited = array_parallelism and array_parallelism < array_size
        limit = f"%{array_parallelism}" if limited else ""
        lines.append(f"#PBS {'-J' if flavour == 'pbspro' else '-t'} 0-{array_size - 1}{limit}")
    # PBS's own copy of the output is not needed: the script writes submitit's log files
    lines += ["#PBS -r y", "#PBS -j oe", "#PBS -o /dev/null"]
    lines += [f"#PBS {pbs_qstat.directive(d)}" for d in directives]
    quoted = shlex.quote(str(folder))
    err = "&1" if stderr_to_stdout else f'{quoted}/"$PBS_JOBID"_0_log.err'
    lines += [
        "",
        "export SUBMITIT_EXECUTOR=pbs",
        f"export AFFVX_PBS_FLAVOUR={flavour}",
        *setup,
        f"cd {quoted}",
        f'exec >>{quoted}/"$PBS_JOBID"_0_log.out 2>>{err}',
        command,
        "",
    ]
    return "\n".join(lines)


def _resource_lines(
    flavour: str, ncpus: int, ngpus: int, mem_gb: float | None, walltime_min: float
) -> list[str]:
    walltime = f"#PBS -l walltime={pbs_qstat.walltime(walltime_min)}"
    mem = f"{int(mem_gb * 1024)}mb" if mem_gb else ""
    if flavour == "torque":
        nodes = f"#PBS -l nodes=1:ppn={ncpus}" + (f":gpus={ngpus}" if ngpus else "")
        return [nodes, walltime] + ([f"#PBS -l mem={mem}"] if mem else [])
    select = f"select=1:ncpus={ncpus}"
    select += f":ngpus={ngpus}" if ngpus else ""
    select += f":mem={mem}" if mem else ""
    return [f"#PBS -l {select}", walltime]


def _job_name(name: str) -> str:
    """A name qsub takes: letters, digits, `_-.`, starting with a letter, at most 200."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    if not cleaned[:1].isalpha():
        cleaned = "j" + cleaned
    return cleaned[:200]


SUBMITIT_ENTRY = "submitit.core._submit"
LEAN_ENTRY = "affvx.cluster.pbs_entry"  # affvx's own tasks (see that module)


def submitit_command(python: str, folder: str | Path, entry: str = SUBMITIT_ENTRY) -> str:
    """The script's last line: `exec` Python (a shell command) on submitit's entry point, so
    that PBS's signals reach the Python process itself."""
    return f"exec {python} -u -m {entry} {shlex.quote(str(folder))}"


# -- in the job --------------------------------------------------------------------------------


class PbsJobEnvironment(job_environment.JobEnvironment):
    """A PBS job as submitit sees it: one task on one node, its id PBS_JOBID."""

    _env = {"job_id": "PBS_JOBID"}

    @property
    def job_id(self) -> str:
        return self.raw_job_id

    @property
    def array_job_id(self) -> str | None:
        parent = pbs_qstat.array_parent(self.raw_job_id)
        return parent if parent != self.raw_job_id else None

    @property
    def array_task_id(self) -> str | None:
        return array_index()

    @property
    def num_tasks(self) -> int:
        return 1

    @property
    def num_nodes(self) -> int:
        return 1

    @property
    def node(self) -> int:
        return 0

    @property
    def global_rank(self) -> int:
        return 0

    @property
    def local_rank(self) -> int:
        return 0

    def _requeue(self, countdown: int) -> None:
        done = subprocess.run(["qrerun", self.job_id], capture_output=True, text=True)
        if done.returncode != 0:
            logger.get_logger().warning(
                f"could not requeue {self.job_id} ({done.stderr.strip()}): qrerun needs "
                "operator rights on most PBS servers"
            )


def array_index() -> str | None:
    """This subjob's index (PBS Pro PBS_ARRAY_INDEX, Torque PBS_ARRAYID), or None."""
    return os.environ.get("PBS_ARRAY_INDEX") or os.environ.get("PBS_ARRAYID") or None


def subjob_ids(array_id: str, count: int) -> list[str]:
    """`123[].server` and 3 -> `123[0].server`, `123[1].server`, `123[2].server`."""
    return [array_id.replace("[]", f"[{index}]", 1) for index in range(count)]


# -- watching ----------------------------------------------------------------------------------


class PbsInfoWatcher(core.InfoWatcher):
    """Asks qstat about every unfinished job at once (affvx.cluster.pbs_qstat.query) and
    gives submitit's state words."""

    _STATES = {
        **dict.fromkeys("QHWT", "PENDING"),
        **dict.fromkeys("RBS", "RUNNING"),
        "E": "COMPLETING",
    }

    def update(self) -> None:
        to_check = sorted(self._registered - self._finished)
        if not to_check:
            return
        self._num_calls += 1
        jobs = pbs_qstat.query(to_check, self.flavour)
        if jobs is None:
            logger.get_logger().warning("qstat did not answer; job states may be stale")
        else:
            self._info_dict.update({i: self._info(a) for i, a in jobs.items()})
        self._last_status_check = time.time()
        for job_id in to_check:
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)

    @property
    def flavour(self) -> str:
        return os.environ.get("AFFVX_PBS_FLAVOUR") or detect_flavour()

    def _info(self, attributes: dict[str, str]) -> dict[str, str]:
        state = pbs_qstat.job_state(attributes)
        word = self._STATES.get(attributes.get("job_state", ""), "")
        if not word:
            word = "COMPLETED" if state.exit_code == 0 else state.status.value
            word = "FAILED" if word == "EXITED" else word
        return {**attributes, "State": word}

    def get_state(self, job_id: str, mode: str = "standard") -> str:
        return self.get_info(job_id, mode=mode).get("State") or "UNKNOWN"


class PbsJob(core.Job[core.R]):
    """A PBS job or subjob; `cancel` is `qdel`."""

    _cancel_command = "qdel"
    watcher = PbsInfoWatcher(delay_s=60)


# -- submitting --------------------------------------------------------------------------------


class PbsExecutor(core.PicklingExecutor):
    """submitit's executor for PBS (see the module docstring).

    Parameters (`update_parameters`): job_name, queue, account, ncpus, ngpus, mem_gb,
    walltime_min, array_parallelism, directives (extra `#PBS` lines), setup (shell lines),
    flavour (pbspro or torque; default: asked of `qstat --version`), stderr_to_stdout.
    AutoExecutor's timeout_min, cpus_per_task, gpus_per_node, mem_gb and name map onto them.
    `entry` is the module the job runs: submitit's own, or LEAN_ENTRY (affvx.cluster.pbs_entry,
    leaner: for callables that need nothing of submitit in the job).
    """

    job_class = PbsJob

    def __init__(
        self,
        folder: str | Path,
        max_num_timeout: int = 3,
        max_pickle_size_gb: float = 1.0,
        python: str | None = None,
        entry: str = SUBMITIT_ENTRY,
    ) -> None:
        super().__init__(
            folder, max_num_timeout=max_num_timeout, max_pickle_size_gb=max_pickle_size_gb
        )
        self.python = shlex.quote(sys.executable) if python is None else python
        self.entry = entry

    @classmethod
    def _equivalence_dict(cls) -> core.EquivalenceDict:
        return {
            "name": "job_name",
            "timeout_min": "walltime_min",
            "mem_gb": "mem_gb",
            "cpus_per_task": "ncpus",
            "gpus_per_node": "ngpus",
            "nodes": "nodes",
            "tasks_per_node": "tasks_per_node",
        }

    @classmethod
    def _valid_parameters(cls) -> set[str]:
        return set(_DEFAULTS) | {"nodes", "tasks_per_node"}

    def _internal_update_parameters(self, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - self._valid_parameters())
        if unknown:
            raise ValueError(f"unknown PBS parameter(s) {unknown}; valid: {sorted(_DEFAULTS)}")
        for key in ("nodes", "tasks_per_node"):
            if kwargs.pop(key, 1) != 1:
                raise ValueError(f"{key}: the PBS executor runs one task on one node")
        qsub_script("check", self.folder, **{**self.parameters, **kwargs})
        super()._internal_update_parameters(**kwargs)

    @property
    def _submitit_command_str(self) -> str:
        return submitit_command(self.python, self.folder, self.entry)

    def _make_submission_file_text(self, command: str, uid: str) -> str:
        flavour = self.parameters.get("flavour") or detect_flavour()
        return qsub_script(command, self.folder, **{**self.parameters, "flavour": flavour})

    def _num_tasks(self) -> int:
        return 1

    def _make_submission_command(self, submission_file_path: Path) -> list[str]:
        return ["qsub", str(submission_file_path)]

    @staticmethod
    def _get_job_id_from_submission_command(string: bytes | str) -> str:
        text = string.decode() if isinstance(string, bytes) else string
        if not _SUBMITTED_ID.match(text):
            raise utils.FailedSubmissionError(
                f"could not read a job id from qsub's output {text!r}"
            )
        return text.strip()

    def _internal_process_submissions(
        self, delayed_submissions: list[utils.DelayedSubmission]
    ) -> list[core.Job[Any]]:
        if len(delayed_submissions) == 1:
            return super()._internal_process_submissions(delayed_submissions)
        folder = utils.JobPaths.get_first_id_independent_folder(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        pickles = []
        for delayed in delayed_submissions:
            path = folder / f"{uuid.uuid4().hex}.pkl"
            delayed.set_timeout(self.parameters.get("walltime_min", 60), self.max_num_timeout)
            delayed.dump(path)
            pickles.append(path)
        array = PbsExecutor(self.folder, self.max_num_timeout, python=self.python)
        array.update_parameters(**self.parameters, array_size=len(pickles))
        self._throttle()
        parent = array._submit_command(self._submitit_command_str)
        jobs: list[core.Job[Any]] = [
            PbsJob(folder=self.folder, job_id=job_id)
            for job_id in subjob_ids(parent.job_id, len(pickles))
        ]
        for job, path in zip(jobs, pickles):
            job.paths.move_temporary_file(path, "submitted_pickle")
        return jobs

    @classmethod
    def affinity(cls) -> int:
        return 2 if shutil.which("qsub") and shutil.which("pbsnodes") else -1


_DEFAULTS: dict[str, Any] = {
    name: parameter.default
    for name, parameter in inspect.signature(qsub_script).parameters.items()
    if name not in ("command", "folder")
}


@functools.cache
def detect_flavour() -> str:
    """torque if `qstat --version` says Torque's `Version: x`, else pbspro."""
    try:
        done = subprocess.run(["qstat", "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "pbspro"
    text = (done.stdout + done.stderr).lower()
    return "pbspro" if "pbs_version" in text or not text.startswith("version") else "torque"
