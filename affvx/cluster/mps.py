"""A private NVIDIA MPS daemon for the jobs that share this machine's GPUs (`--mps`).

MPS lets the CUDA work of several processes run on one GPU at once instead of time-sliced.
The daemon is this run's own: its pipe and log directories are in a private temporary
directory (never the system-wide /tmp/nvidia-mps), jobs find it through
CUDA_MPS_PIPE_DIRECTORY, and it is told to quit when the jobs are done.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from affvx.cluster.errors import ClusterError

CONTROL = "nvidia-cuda-mps-control"


def mps_unavailable(gpus: Sequence[str]) -> str:
    """Why MPS cannot run here ("" when it can)."""
    if not gpus:
        return "--mps: no GPU on this machine; the jobs run without MPS"
    if shutil.which(CONTROL) is None:
        return f"--mps: {CONTROL} is not on the PATH; the jobs run without MPS"
    return ""


class MpsDaemon:
    """One MPS control daemon: `start` once, `environment` for each job, `stop` at the end."""

    def __init__(self) -> None:
        self.directory: Path | None = None

    def environment(self) -> dict[str, str]:
        """What a job needs to reach the daemon ({} before `start`)."""
        if self.directory is None:
            return {}
        return {
            "CUDA_MPS_PIPE_DIRECTORY": str(self.directory / "pipe"),
            "CUDA_MPS_LOG_DIRECTORY": str(self.directory / "log"),
        }

    def start(self) -> None:
        if self.directory is not None:
            return
        self.directory = Path(tempfile.mkdtemp(prefix="affvx-mps-"))
        for name in ("pipe", "log"):
            (self.directory / name).mkdir()
        answer = self._control(["-d"])
        if answer.returncode != 0:
            self.stop()
            raise ClusterError(
                f"--mps: {CONTROL} -d failed ({answer.stderr.strip() or answer.returncode}); "
                "run without --mps"
            )

    def stop(self) -> None:
        """Tell the daemon to quit and remove its directories."""
        if self.directory is None:
            return
        self._control([], stdin="quit\n")
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None

    def _control(self, args: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CONTROL, *args],
            input=stdin,
            env={**os.environ, **self.environment()},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
