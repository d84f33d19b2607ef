"""A real one-node SLURM cluster for the tests: munged, slurmctld and slurmd from Debian's
packages, configured in a temporary directory, on loopback ports, stopped afterwards.

It touches no system-wide state: munged listens on a private socket (AuthInfo=socket=...),
and every slurm command finds the cluster through SLURM_CONF.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGES_HINT = "install slurmctld slurmd slurm-client munge (scripts/system-packages.sh)"


@dataclass
class SlurmCluster:
    """A running test cluster; `env` holds what slurm commands need to find it."""

    root: Path
    conf: Path
    env: dict[str, str]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), env={**os.environ, **self.env}, capture_output=True, text=True, check=check
        )

    def wait_idle(self, timeout_s: float = 60.0) -> None:
        """Until the node is idle (no job left) -- slurmd registered, nothing running."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
            queue = self.run("squeue", "-h", check=False).stdout.strip()
            if state == "idle" and not queue:
                return
            time.sleep(0.2)
        raise TimeoutError(f"the SLURM node did not become idle (sinfo: {state!r})")

    def slurmd_pid(self) -> int:
        return int((self.root / "slurmd.pid").read_text())

    def kill_slurmd(self) -> None:
        os.kill(self.slurmd_pid(), signal.SIGKILL)

    def start_slurmd(self) -> None:
        self.run("slurmd", "-f", str(self.conf))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_accounting(root: Path, munge_socket: Path) -> tuple[str, int]:
    """A private MariaDB and slurmdbd; returns the slurm.conf lines that use them."""
    for program in ("mariadbd", "mariadb-install-db", "slurmdbd"):
        if shutil.which(program) is None:
            raise RuntimeError(f"{program} is missing: install mariadb-server slurmdbd")
    db = root / "db"
    db.mkdir()
    subprocess.run(
        [
            "mariadb-install-db",
            f"--datadir={db / 'data'}",
            "--user=root",
            "--skip-test-db",
            "--auth-root-authentication-method=normal",
        ],
        check=True,
        capture_output=True,
    )
    db_port, dbd_port = free_port(), free_port()
    subprocess.Popen(
        [
            "mariadbd",
            "--no-defaults",
            f"--datadir={db / 'data'}",
            f"--socket={db / 'mysql.sock'}",
            f"--port={db_port}",
            "--bind-address=127.0.0.1",
            "--user=root",
            f"--pid-file={db / 'mariadb.pid'}",
            f"--log-error={db / 'error.log'}",
            "--skip-name-resolve",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    sql = (
        "create database slurm_acct_db; create user 'slurm'@'127.0.0.1' identified by 'slurm'; "
        "grant all on slurm_acct_db.* to 'slurm'@'127.0.0.1';"
    )
    _retry(
        lambda: subprocess.run(
            ["mariadb", "--no-defaults", "-S", str(db / "mysql.sock"), "-u", "root", "-e", sql],
            check=True,
            capture_output=True,
        ),
        what="MariaDB",
    )
    dbd_conf = root / "slurmdbd.conf"
    dbd_conf.write_text(
        f"""AuthType=auth/munge
AuthInfo=socket={munge_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={dbd_port}
SlurmUser=root
PidFile={root / "slurmdbd.pid"}
LogFile={root / "log" / "slurmdbd.log"}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={db_port}
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
"""
    )
    dbd_conf.chmod(0o600)
    subprocess.run(
        ["slurmdbd"], env={**os.environ, "SLURM_CONF": str(root / "slurm.conf")}, check=True
    )
    _retry(lambda: _connect(dbd_port), what="slurmdbd")  # slurmctld needs it up first
    return (
        f"AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=127.0.0.1\n"
        f"AccountingStoragePort={dbd_port}\nAccountingStoragePass={munge_socket}\n"
        "JobAcctGatherType=jobacct_gather/none\n",
        dbd_port,
    )


def _connect(port: int) -> None:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError as error:
        raise subprocess.CalledProcessError(1, ["connect", str(port)]) from error


def _retry(action, what: str, timeout_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            action()
            return
        except subprocess.CalledProcessError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.2)


FAKE_GPUS = 2


def start_cluster(root: Path, *, accounting: bool = False) -> SlurmCluster:
    """Start munged, (with accounting: MariaDB and slurmdbd,) slurmctld and slurmd."""
    for program in ("munged", "slurmctld", "slurmd", "sbatch"):
        if shutil.which(program) is None:
            raise RuntimeError(f"{program} is missing: {PACKAGES_HINT}")
    for name in ("state", "spool", "log", "munge"):
        (root / name).mkdir(parents=True, exist_ok=True)
    munge_socket = root / "munge" / "munge.socket"
    subprocess.run(
        [
            "munged",
            "--force",
            f"--socket={munge_socket}",
            f"--pid-file={root / 'munge' / 'munged.pid'}",
            f"--log-file={root / 'munge' / 'munged.log'}",
            f"--seed-file={root / 'munge' / 'seed'}",
        ],
        check=True,
    )
    host = socket.gethostname().split(".")[0]
    cpus = len(os.sched_getaffinity(0))
    memory_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
    conf = root / "slurm.conf"
    conf.write_text("")  # slurmdbd finds its slurmdbd.conf next to SLURM_CONF
    accounting_lines = (
        start_accounting(root, munge_socket)[0]
        if accounting
        else "JobAcctGatherType=jobacct_gather/none\n"
    )
    conf.write_text(
        f"""ClusterName=affvxtest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket},cred_expire=5
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={root / "log" / "slurmctld.log"}
SlurmdLogFile={root / "log" / "slurmd.log"}
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
{accounting_lines.strip()}
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
KillWait=5
SlurmctldDebug=debug
SlurmdDebug=debug
MinJobAge=600
SchedulerParameters=sched_interval=1
GresTypes=gpu
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} Gres=gpu:{FAKE_GPUS} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""
    )
    # GPUs that are plain files, not devices: enough to schedule jobs that ask for one
    for number in range(FAKE_GPUS):
        (root / f"fake-gpu{number}").touch()
    (root / "gres.conf").write_text(f"Name=gpu File={root}/fake-gpu[0-{FAKE_GPUS - 1}]\n")
    cluster = SlurmCluster(root=root, conf=conf, env={"SLURM_CONF": str(conf)})
    cluster.run("slurmctld", "-i", "-f", str(conf))
    cluster.run("slurmd", "-f", str(conf))
    cluster.wait_idle()
    return cluster


def stop_cluster(cluster: SlurmCluster) -> None:
    """scancel everything, then slurmd, slurmctld and munged (in that order)."""
    cluster.run("scancel", "--user", "root", check=False)
    deadline = time.monotonic() + 30
    while cluster.run("squeue", "-h", check=False).stdout.strip() and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid_file in (
        "slurmd.pid",
        "slurmctld.pid",
        "slurmdbd.pid",
        "db/mariadb.pid",
        "munge/munged.pid",
    ):
        path = cluster.root / pid_file
        try:
            pid = int(path.read_text())
            os.kill(pid, signal.SIGTERM)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            continue
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)


@contextlib.contextmanager
def cluster_in_use(root: Path, *, accounting: bool = False) -> Iterator[SlurmCluster]:
    """A started cluster with SLURM_CONF pointing at it meanwhile; stopped afterwards."""
    cluster = start_cluster(root, accounting=accounting)
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = cluster.env["SLURM_CONF"]
    try:
        yield cluster
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        stop_cluster(cluster)
