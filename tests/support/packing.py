"""Jobs for the tests of packed jobs (several sharing one GPU in one array task) on a real
scheduler."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from affvx.cluster.base import JobRequest
from tests.support.backend_suite import python_job

# a job that waits (at most 60 s) for its pack mate to have started: it completes only if
# the two run side by side
SIDE_BY_SIDE = """
import os, pathlib, sys, time
me, mate = os.environ["AFFVX_TEST_KEY"], os.environ["AFFVX_TEST_MATE"]
pathlib.Path(me + ".id").write_text(os.environ["AFFVX_SCHEDULER_JOB_ID"])
pathlib.Path(me + ".started").touch()
deadline = time.monotonic() + 60
while not pathlib.Path(mate + ".started").exists():
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.05)
"""

# a job that checkpoints (exits 75) on SIGTERM, and completes at once when run again
UNTIL_REQUEUED = """
import os, pathlib, signal, sys, time
me = os.environ["AFFVX_TEST_KEY"]
if int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0:
    pathlib.Path(me + ".rerun").touch()
    sys.exit(0)
def stop(signum, frame):
    pathlib.Path(me + ".stopped").touch()
    sys.exit(75)
signal.signal(signal.SIGTERM, stop)
signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
pathlib.Path(me + ".started").touch()
while True:
    time.sleep(0.05)
"""


def shared_job(tmp_path: Path, key: str, code: str, mate: str = "") -> JobRequest:
    """A job of one CPU that shares a GPU two ways."""
    request = python_job(tmp_path, key, code, cpus=1, gpus=1, jobs_per_gpu=2)
    return dataclasses.replace(request, env=(*request.env, ("AFFVX_TEST_MATE", mate)))
