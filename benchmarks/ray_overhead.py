"""Ray overhead: 1,000 trivial jobs through affvx's ray backend against 1,000 bare Ray tasks
that run the same command, on one local Ray instance started for the run.

Both run `true` as a child process of a Ray task with one CPU. A bare task is
`subprocess.run(["true"])`; an affvx job is the task shim (affvx.cluster.task: log files,
AFFVX_* environment, stop signals held and forwarded, a polling wait), submitted and
watched as a run does (`backend.wait`, then `backend.poll`). Time: from the first submission
until every task has ended, rounds alternating bare / affvx. Target: at most 1.3x.

    python benchmarks/ray_overhead.py [--tasks 1000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import machine, markdown_table, trivial_requests  # noqa: E402

from affvx.cluster.ray import RayBackend  # noqa: E402


def run_true() -> int:
    return subprocess.run(["true"]).returncode


def bare_tasks(n: int) -> float:
    import ray

    remote = ray.remote(num_cpus=1)(run_true)
    started = time.perf_counter()
    codes = ray.get([remote.remote() for _ in range(n)])
    assert codes == [0] * n
    return time.perf_counter() - started


def through_affvx(work: Path, n: int) -> float:
    backend = RayBackend()  # joins the instance the benchmark started
    requests = trivial_requests(work, n)
    started = time.perf_counter()
    ids = backend.submit(requests)
    while any(s.status.is_active() for s in backend.poll(ids).values()):
        backend.wait(1.0)
    elapsed = time.perf_counter() - started
    assert {s.exit_code for s in backend.poll(ids).values()} == {0}
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    owner = RayBackend(num_cpus=cpus)
    owner._connect()
    bare_tasks(20)  # start the workers once before timing anything
    bare, affvx = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.rounds):
            bare.append(bare_tasks(args.tasks))
            affvx.append(through_affvx(Path(scratch), args.tasks))
    owner.close()
    import ray

    n = args.tasks
    print(f"machine: {machine()}; local Ray {ray.__version__}, {cpus} CPUs, one CPU a task\n")
    rows = []
    for label, times in (("bare Ray tasks", bare), ("affvx ray backend", affvx)):
        mean = statistics.mean(times)
        ratio = mean / statistics.mean(bare)
        shown = ", ".join(f"{t:.1f}" for t in times)
        rows.append([label, shown, f"{1000 * mean / n:.1f}", f"{ratio:.2f}"])
    print(markdown_table(["way", f"{n} tasks, s (each round)", "per task, ms", "vs bare"], rows))


if __name__ == "__main__":
    main()
