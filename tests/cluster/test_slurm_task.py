"""The SLURM task (RunCommand) passes stop signals on to its job, whichever thread of the
batch shell the kernel hands them to. No cluster needed: the task runs as a plain process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from affvx.protocol import EXIT_REQUEUE
from tests.support.runs import wait_until

# the job: holds its stop signals until its handler is in place (as the trainer does), then
# waits up to 20 s for USR2 and exits with the requeue code if it came
JOB = """
import signal, sys, time
from pathlib import Path
got = []
signal.signal(signal.SIGUSR2, lambda signum, frame: got.append(signum))
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
Path(sys.argv[1]).write_text("ready")
deadline = time.monotonic() + 20
while not got and time.monotonic() < deadline:
    time.sleep(0.01)
sys.exit(REQUEUE if got else 3)
"""

# the batch shell: a thread that blocks no signal (submitit imports numpy, whose BLAS threads
# are such threads), and stop signals blocked in the main thread, so that the kernel must
# deliver them to the other thread -- the case a blocking waitpid() never notices
TASK = """
import signal, sys, threading
from affvx.cluster.slurm import RunCommand
from affvx.cluster.task import TaskCommand
from affvx.protocol import STOP_SIGNALS
threading.Thread(target=threading.Event().wait, daemon=True).start()
signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
job, ready, log_dir = sys.argv[1:]
RunCommand(TaskCommand(command=(sys.executable, job, ready), workdir=".", env=(), log_dir=log_dir))()
"""


def test_a_signal_that_lands_on_another_thread_still_reaches_the_job(tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text(textwrap.dedent(JOB).replace("REQUEUE", str(EXIT_REQUEUE)))
    ready = tmp_path / "ready"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    task = subprocess.Popen(
        [sys.executable, "-c", TASK, str(job), str(ready), str(tmp_path / "log")],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(ready.exists, timeout_s=60, what="the job to be ready for signals")
    task.send_signal(signal.SIGUSR2)
    _, stderr = task.communicate(timeout=60)
    # 3 would mean the job waited 20 s and USR2 never came
    assert task.returncode == EXIT_REQUEUE, stderr
