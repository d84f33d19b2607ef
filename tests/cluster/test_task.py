"""The task shim ends its job once the scheduler has let go of the task (its parent, the
batch shell, is gone): PBS ends a job when its top shell dies and may leave the rest running.
No scheduler needed: the task runs as a plain process under a shell that exits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.runs import process_state, wait_until

# a job that never unblocks its stop signals (a hung job): only SIGKILL ends it
JOB = "import os, sys, time\nopen(sys.argv[1], 'w').write(str(os.getpid()))\nwhile True: time.sleep(0.1)"

TASK = """
import sys
from affvx.cluster.task import TaskCommand
from affvx.protocol import JobEnvironment
job, pid_file, log_dir, code_file = sys.argv[1:]
task = TaskCommand(command=(sys.executable, "-c", job, pid_file), workdir=".", env=(), log_dir=log_dir)
code = task.run(JobEnvironment(), "task")
open(code_file, "w").write(str(code))
"""

# the shell starts the task in the background and exits once the job runs, as PBS's top
# shell dies of a SIGTERM that the task and its job outlive
SHELL = '"$0" -c "$1" "$2" "$3" "$4" "$5" & while [ ! -s "$3" ]; do sleep 0.05; done'


def test_a_task_whose_batch_shell_died_ends_its_job(tmp_path: Path) -> None:
    pid_file, code_file = tmp_path / "job.pid", tmp_path / "code"
    arguments = [sys.executable, TASK, JOB, pid_file, tmp_path / "log", code_file]
    repo = Path(__file__).resolve().parents[2]
    subprocess.run(
        ["sh", "-c", SHELL, *map(str, arguments)],
        check=True,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    job_pid = int(pid_file.read_text())
    # SIGTERM (held by the job), then SIGKILL after the grace: the job is gone, the task too
    wait_until(lambda: process_state(job_pid) in ("", "Z"), timeout_s=60, what="the job to end")
    wait_until(code_file.exists, timeout_s=30, what="the task to end")
    assert int(code_file.read_text()) == -9
