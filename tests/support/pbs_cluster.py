"""A real one-node OpenPBS for the tests: server, scheduler, comm and mom with their own
PostgreSQL datastore, built from the pinned source in ../shared/vendor/openpbs and started
under a private PBS_HOME on private ports, stopped afterwards.

The build (`pbs-one-node.sh deps build`, a few minutes) happens once per machine: it installs
into /opt/pbs and is skipped while /opt/pbs/.openpbs-commit names the pinned commit
(scripts/system-packages.sh runs it; `ensure_built` runs it here if that did not). Every PBS
command finds this instance through PBS_CONF_FILE. OpenPBS needs root and a host name that
resolves to a non-loopback address (the vendor script adds one to /etc/hosts if missing).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.test_readme import REPO

VENDOR = REPO.parent / "shared" / "vendor" / "openpbs"
SCRIPT = VENDOR / "pbs-one-node.sh"
PREFIX = Path("/opt/pbs")
# PBS refuses a PBS_HOME below a world-writable directory such as /tmp
INSTANCES = Path("/var/lib/affvx-tests")
PORT_OFFSETS = (1, 2, 3, 7, 2001)  # server, mom, mom manager, datastore, comm (the script's)


@dataclass
class PbsCluster:
    """A running test server; `env` holds what PBS commands need to find it."""

    root: Path
    env: dict[str, str]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), env={**os.environ, **self.env}, capture_output=True, text=True, check=check
        )

    def qmgr(self, command: str) -> None:
        self.run(str(PREFIX / "bin" / "qmgr"), "-c", command)

    def jobs(self) -> list[str]:
        """Ids of the jobs the server still holds (not finished); an array is its parent
        (`12[].server`) until its last subjob ends. (Not `qstat -t`: OpenPBS 23.06 prints a
        big array's subjobs over and over, gigabytes for 1,000 of them.)"""
        out = self.run("qstat", check=False).stdout
        return [line.split()[0] for line in out.splitlines()[2:] if line.strip()]

    def wait_idle(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.jobs():
            if time.monotonic() > deadline:
                raise TimeoutError(f"PBS jobs still there: {self.jobs()}")
            time.sleep(0.2)

    def mom_pid(self) -> int:
        return int((self.root / "home" / "mom_priv" / "mom.lock").read_text().split()[0])

    def start_mom(self) -> None:
        self.run(str(PREFIX / "sbin" / "pbs_mom"))


def why_not_here() -> str:
    """Why a test server cannot run on this machine ("" if it can)."""
    if not SCRIPT.exists():
        return f"{SCRIPT} is missing (the OpenPBS source comes with shared/)"
    if os.geteuid() != 0:
        return "OpenPBS's daemons need root"
    return ""


def ensure_built() -> None:
    """OpenPBS installed in /opt/pbs at the pinned commit (builds it, minutes, if not)."""
    if not SCRIPT.exists():
        raise RuntimeError(f"{SCRIPT} is missing: the OpenPBS source comes with shared/")
    commit = _pinned_commit()
    installed = PREFIX / ".openpbs-commit"
    if installed.exists() and installed.read_text().strip() == commit:
        return
    for step in ("deps", "build"):
        subprocess.run(["bash", str(SCRIPT), step], check=True, capture_output=True, text=True)


def _pinned_commit() -> str:
    for line in SCRIPT.read_text().splitlines():
        if line.startswith("PBS_COMMIT="):
            return line.split(":-", 1)[1].split("}", 1)[0]
    raise RuntimeError(f"{SCRIPT}: no PBS_COMMIT line")


def _port_base() -> int:
    """A base whose five ports are all free (the script derives them from it)."""
    for base in range(25000, 40000, 100):
        if all(_free(base + offset) for offset in PORT_OFFSETS):
            return base
    raise RuntimeError("no free port range for the test PBS server")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def start_cluster() -> PbsCluster:
    ensure_built()
    INSTANCES.mkdir(parents=True, exist_ok=True)
    INSTANCES.chmod(0o755)
    root = INSTANCES / f"pbs-{os.getpid()}"
    env = {
        "PBS_CI_ROOT": str(root),
        "PBS_PORT_BASE": str(_port_base()),
        "PBS_FAST": "1",
    }
    subprocess.run(
        ["bash", str(SCRIPT), "start"],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    cluster = PbsCluster(
        root,
        {
            "PBS_CONF_FILE": str(root / "pbs.conf"),
            "PATH": f"{PREFIX / 'bin'}:{PREFIX / 'sbin'}:{os.environ['PATH']}",
            **env,
        },
    )
    try:
        configure(cluster)
    except BaseException:
        stop_cluster(cluster)  # a server left running would hold its ports and CPU
        raise
    return cluster


def configure(cluster: PbsCluster) -> None:
    """What a site would set on a new server for these tests."""
    cluster.qmgr("set server operators += root@*")  # qrerun, as a site operator would
    # GPUs that no process can use, only count, as a site defines them (PBS has no ngpus
    # of its own): enough to schedule jobs that ask for one
    node = cluster.run("pbsnodes", "-a").stdout.split("\n", 1)[0].strip()
    qmgr = str(PREFIX / "bin" / "qmgr")
    cluster.run(qmgr, "-c", "create resource ngpus type=long, flag=nh", check=False)  # or had
    cluster.qmgr(f"set node {node} resources_available.ngpus = {FAKE_GPUS}")


FAKE_GPUS = 2


def stop_cluster(cluster: PbsCluster) -> None:
    subprocess.run(
        ["bash", str(SCRIPT), "stop"],
        env={**os.environ, **cluster.env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    shutil.rmtree(cluster.root, ignore_errors=True)


@contextlib.contextmanager
def cluster_in_use() -> Iterator[PbsCluster]:
    """A started server, with PBS_CONF_FILE and PATH pointing at it meanwhile."""
    cluster = start_cluster()
    previous = {key: os.environ.get(key) for key in ("PBS_CONF_FILE", "PATH")}
    os.environ.update({key: cluster.env[key] for key in previous})
    try:
        yield cluster
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        stop_cluster(cluster)
