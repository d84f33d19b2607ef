"""Per-job fixed cost: what one small job pays besides its training, in a baseline tree and
in this one (first used for the cuts of issue 14 item 1), and through the warm starter
(affvx.cluster.warm).

One job of the demo grid -- the demo corpus, fold 0, valence, visual+mfcc+vggish, tcn,
1 epoch, 1 CPU thread -- is run as the local backend runs it, `python -m
affvx.orchestrator.worker RUN JOB_ID`, from a clean job directory each time:

    baseline   a plain process of the tree at --baseline-tree (e.g. main before a change)
    after      a plain process of this tree
    warm       forked by a WarmStarter of this tree (one starter for all repeats; its
               first job, which waits for the server's imports, is reported apart)

plus a bare `python -c "import torch"`. The ways take turns within each repeat, so that
the machine's load falls on all alike. Wall time is from the start request to the exit
status; the epoch (training + validation, metrics.csv `seconds`) is taken off to give the
fixed cost. The plain processes run under a probe (this script's --probe mode) that
timestamps the phases of the job; the predictions of every run are compared byte for byte.

    git -C /work/main worktree add /tmp/affvx-baseline 43a8a32
    python benchmarks/job_fixed_cost.py --baseline-tree /tmp/affvx-baseline [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TREE = Path(__file__).resolve().parents[1]
JOB_SETTINGS = {
    "folds": 6,
    "emotions": ("valence",),
    "modalities": (("visual", "mfcc", "vggish"),),
    "model": {"name": "tcn"},
    "training": {"max_epochs": 1},
}
JOB_ENV = {"AFFVX_BACKEND": "local", "AFFVX_DEVICE": "cpu", "AFFVX_CPUS": "1"}
PHASES = (
    ("python", "interpreter start (and the probe's own imports)"),
    ("import_worker", "import the worker (numpy, pyarrow, affvx)"),
    ("import_job", "import torch and the job code"),
    ("store", "open the store"),
    ("configure_torch", "torch settings (imports torch._dynamo)"),
    ("trainer", "statistics, windows, model, optimizer"),
    ("epoch", "train 1 epoch + validate (less checkpoint)"),
    ("checkpoint", "checkpoint + metrics.csv"),
    ("predict", "predict validation + test"),
    ("write_predictions", "write predictions.parquet"),
    ("other", "run dir, ledger, heartbeat, progress, result"),
    ("exit", "interpreter exit"),
)


# -- the probe: runs in the job's process, before anything heavy is imported ----------------


def probe(run: str, job_id: str, out: str, spawned: float) -> None:
    """Run the worker in this process with timestamps around its phases; write them to `out`."""
    seconds: dict[str, float] = {"python": time.time() - spawned}
    mark = time.perf_counter()
    import affvx.orchestrator.worker as worker

    seconds["import_worker"] = time.perf_counter() - mark
    mark = time.perf_counter()
    import affvx.storage.reader as reader
    import affvx.trainers.job as job
    import affvx.trainers.loop as loop

    seconds["import_job"] = time.perf_counter() - mark

    def timed(owner: object, name: str, phase: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args: object, **kwargs: object) -> object:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[phase] = seconds.get(phase, 0.0) + time.perf_counter() - started

        setattr(owner, name, wrapper)

    timed(reader.FeatureStore, "__init__", "store")
    timed(job, "configure_torch", "configure_torch")
    timed(loop.Trainer, "__init__", "trainer")
    timed(loop.Trainer, "fit", "epoch")
    timed(job, "_save", "checkpoint")
    timed(loop.Trainer, "predict", "predict")
    timed(job, "write_predictions", "write_predictions")
    mark = time.perf_counter()
    try:
        worker.main([run, job_id])
    except SystemExit as exit_:
        code = exit_.code
    total = time.perf_counter() - mark
    seconds["epoch"] -= seconds.get("checkpoint", 0.0)
    named = ("store", "configure_torch", "trainer", "epoch", "checkpoint", "predict")
    seconds["other"] = total - sum(seconds.get(k, 0.0) for k in (*named, "write_predictions"))
    seconds["ended"] = time.time()
    Path(out).write_text(json.dumps(seconds))
    sys.exit(code)


# -- the benchmark ----------------------------------------------------------------------------


def make_run(work: Path) -> tuple[Path, str]:
    """A run with the one job of JOB_SETTINGS on the demo corpus."""
    from affvx.orchestrator.demo import ensure_demo_store
    from affvx.orchestrator.launch import prepare

    flags = {"store": str(ensure_demo_store(print)), **JOB_SETTINGS}
    plan = prepare(flags=flags, config_file=None, run_path=work / "run", resume=False, note=print)
    plan.run.create(plan.config, plan.folds, plan.jobs)
    return plan.run.path.resolve(), plan.jobs[0].job_id


def tree_env(tree: Path) -> dict[str, str]:
    return {**os.environ, **JOB_ENV, "PYTHONPATH": str(tree)}


def clean(job_dir: Path) -> None:
    subprocess.run(["rm", "-rf", str(job_dir)], check=True)


def epoch_seconds(job_dir: Path) -> float:
    header, row = (job_dir / "metrics.csv").read_text().splitlines()[:2]
    return float(dict(zip(header.split(","), row.split(",")))["seconds"])


def plain_job(tree: Path, run: Path, job_id: str, work: Path) -> tuple[float, dict[str, float]]:
    """(wall seconds, phases) of one plain worker process of `tree`, under the probe."""
    phases_file = work / "phases.json"
    spawned = time.time()
    started = time.perf_counter()
    command = [sys.executable, __file__, "--probe", str(run), job_id, str(phases_file)]
    done = subprocess.run(
        [*command, str(spawned)], cwd=work, env=tree_env(tree), capture_output=True
    )
    wall = time.perf_counter() - started
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    phases = json.loads(phases_file.read_text())
    phases["exit"] = time.time() - phases.pop("ended")
    return wall, phases


def warm_job(starter, run: Path, job_id: str, work: Path) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    with open(work / "warm.log", "ab") as log:
        process = starter.start(
            [sys.executable, "-m", "affvx.orchestrator.worker", str(run), job_id],
            cwd=work,
            env=tree_env(TREE),
            stdout=log,
            stderr=log,
        )
    assert type(process).__name__ == "WarmProcess", starter.last_refusal
    assert process.wait() == 0, (work / "warm.log").read_text()[-2000:]
    return time.perf_counter() - started


def bare_import(tree: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], env=tree_env(tree), check=True)
    return time.perf_counter() - started


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def commit(tree: Path) -> str:
    """The short commit a tree has checked out."""
    done = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or str(tree)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-tree", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(TREE / "benchmarks"))
    sys.path.insert(0, str(TREE))
    os.environ["PYTHONPATH"] = str(TREE)  # the warm server's, as its jobs'
    from _common import machine, markdown_table

    from affvx.cluster.warm import WarmStarter

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        run, job_id = make_run(work)
        job_dir = run / "jobs" / job_id
        walls: dict[str, list[float]] = {"import": [], "baseline": [], "after": [], "warm": []}
        epochs: dict[str, list[float]] = {"baseline": [], "after": [], "warm": []}
        phases: dict[str, list[dict[str, float]]] = {"baseline": [], "after": []}
        predictions: set[bytes] = set()

        def record(way: str, wall: float) -> None:
            walls[way].append(wall)
            epochs[way].append(epoch_seconds(job_dir))
            predictions.add((job_dir / "predictions.parquet").read_bytes())

        with WarmStarter(["affvx.orchestrator.worker"]) as starter:
            clean(job_dir)
            first_warm = warm_job(starter, run, job_id, work)
            first_epoch = epoch_seconds(job_dir)
            for repeat in range(args.repeats):
                walls["import"].append(bare_import(TREE))
                for way, tree in (("baseline", args.baseline_tree), ("after", TREE)):
                    clean(job_dir)
                    wall, seen = plain_job(tree, run, job_id, work)
                    phases[way].append(seen)
                    record(way, wall)
                clean(job_dir)
                record("warm", warm_job(starter, run, job_id, work))
                print(
                    f"repeat {repeat + 1}: "
                    + ", ".join(f"{w} {v[-1]:.2f}" for w, v in walls.items())
                )

    fixed = {way: [w - e for w, e in zip(walls[way], epochs[way])] for way in epochs}
    base = statistics.median(walls["baseline"])
    rows = [['`python -c "import torch"`', spread(walls["import"]), "", "", ""]]
    for way, label in (
        ("baseline", f"plain process, baseline tree ({commit(args.baseline_tree)})"),
        ("after", f"plain process, this tree ({commit(TREE)})"),
        ("warm", "forked by the warm starter"),
    ):
        rows.append(
            [
                label,
                spread(walls[way]),
                f"{statistics.median(epochs[way]):.2f}",
                spread(fixed[way]),
                f"{statistics.median(walls[way]) / base:.2f}",
            ]
        )
    rows.append(
        [
            "first job of a new warm starter (waits for its imports)",
            f"{first_warm:.2f}",
            f"{first_epoch:.2f}",
            f"{first_warm - first_epoch:.2f}",
            f"{first_warm / base:.2f}",
        ]
    )
    print(
        f"\n{machine()}; {args.repeats} repeats; predictions identical: {len(predictions) == 1}\n"
    )
    header = ["1-epoch demo job (tcn, 1 thread)", "wall s, median (min-max)", "epoch s"]
    print(markdown_table([*header, "fixed cost s", "wall vs before"], rows))
    phase_rows = [
        [
            label,
            *(
                f"{statistics.median(p.get(key, 0.0) for p in phases[way]):.2f}"
                for way in ("baseline", "after")
            ),
        ]
        for key, label in PHASES
    ]
    print()
    print(markdown_table(["phase (median s)", "baseline", "this tree"], phase_rows))


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--probe":
        probe(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
    else:
        main()
