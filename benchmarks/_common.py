"""Helpers shared by the benchmark scripts: machine description, tables, child processes."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "out"
VA_TRIALS = Path(__file__).resolve().parents[1] / "affvx" / "storage" / "data" / "va_trials.csv"


def machine() -> str:
    """One line naming the machine the figures come from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(
                line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} CPUs, {mem_gb:.0f} GiB, Python {platform.python_version()}"


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class CommandRun:
    """Wall time and peak resident memory of one child process."""

    seconds: float
    max_rss_mb: float
    returncode: int


def run_measured(args: list[str], **kwargs: object) -> CommandRun:
    """Run a command; report its wall time and its own peak RSS (from wait4)."""
    start = time.perf_counter()
    process = subprocess.Popen(args, **kwargs)  # type: ignore[call-overload]
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    return CommandRun(seconds, usage.ru_maxrss / 1024, process.returncode)


def affvx_command(*args: str) -> list[str]:
    """The affvx CLI of the interpreter running the benchmark."""
    return [sys.executable, "-m", "affvx", *args]


def best_of(repeats: int, fn) -> float:  # type: ignore[no-untyped-def]
    """The best (smallest) of `repeats` timings of fn(), in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.min(times))


def trivial_requests(work: Path, n: int) -> list:  # type: ignore[type-arg]
    """`n` JobRequests that run `true`, one CPU each."""
    from affvx.cluster.base import JobRequest, Resources

    return [
        JobRequest(
            key=f"t{i}",
            command=("true",),
            workdir=work,
            log_dir=work / "logs",
            resources=Resources(cpus=1, time_limit_min=10),
        )
        for i in range(n)
    ]


def trivial_tasks_through(backend, work: Path, n: int) -> float:  # type: ignore[no-untyped-def]
    """Seconds from submitting `n` tasks that run `true` on `backend` until none is active."""
    requests = trivial_requests(work, n)
    started = time.perf_counter()
    ids = backend.submit(requests)
    while any(s.status.is_active() for s in backend.poll(ids).values()):
        time.sleep(0.5)
    return time.perf_counter() - started


def demo_grid_against_local(
    backend_args: list[str], local_run: Path
) -> tuple[float, int, int, str]:
    """Run the README's demo grid with `backend_args` (`--backend pbs ...`) in a scratch run and
    compare its report with the local run's: (launch seconds, report files equal, report
    files, `affvx collect`'s summary)."""
    import subprocess
    import tempfile

    from tests.support.runs import report_files

    with tempfile.TemporaryDirectory() as scratch:
        run = Path(scratch) / "run"
        grid = ("launch", "--folds", "6", "--emotions", "valence,arousal", "--run", str(run))
        started = time.perf_counter()
        subprocess.run(affvx_command(*grid, *backend_args), check=True)
        launch_s = time.perf_counter() - started
        summary = subprocess.run(
            affvx_command("collect", str(run)), check=True, capture_output=True, text=True
        ).stdout
        if not (local_run / "report").exists():
            subprocess.run(affvx_command("collect", str(local_run)), check=True)
        theirs, local_files = report_files(run), report_files(local_run)
    same = sum(theirs.get(name) == local_files[name] for name in local_files)
    return launch_s, same, len(local_files), summary


def demo_grid_table(backend: str, launch_s: float, same: int, total: int) -> str:
    return markdown_table(
        ["backend", "`affvx launch` wall time", "report files equal to the local run's"],
        [[backend, f"{launch_s / 60:.0f} min {launch_s % 60:.0f} s", f"{same} of {total}"]],
    )
