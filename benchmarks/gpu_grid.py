"""The demo grid on one GPU against all CPU cores, in one run: wall time, speed-up, SM
utilisation and mean CCC of each way of running it, and affvx's step against a bare loop.

Every grid is the README's demo grid (`affvx launch` with its defaults on the demo corpus:
6 folds x valence, arousal x visual, visual+mfcc+vggish = 24 LFAN jobs), each a separate
foreground launch into its own temporary run directory:

- all CPU cores, one CPU per job (`--cpus 1 --max-parallel <cores>`);
- the GPU, one job at a time (`--gpus 1`);
- N jobs sharing the GPU (`--gpus 1 --jobs-per-gpu N`), with and without `--mps`;
- the best N again with `--cuda-graphs on` and `--cuda-graphs off`.

Every GPU grid sees one GPU (`--gpu`, pinned through CUDA_VISIBLE_DEVICES). While it runs,
`nvidia-smi` samples that GPU's utilisation (the share of time a kernel ran) every 200 ms.
The step times come from `benchmarks/gpu_step.py --json`. Without a GPU only the CPU grid
runs, and docs/benchmarks.md is written only with --write-docs (the GPU run is the one that
writes). On an H100 with 16 cores expect about a quarter of an hour, most of it the grid of
one job at a time (research/gpu.md projected about 7 minutes for it).

    python benchmarks/gpu_grid.py [--jobs-per-gpu 4,8,12] [--write-docs]
    python benchmarks/gpu_grid.py --quick        # 2 folds, 1 epoch: the plumbing only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import OUT, affvx_command, machine, markdown_table  # noqa: E402

from affvx.orchestrator.demo import ensure_demo_store  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks.md"
SECTION = "## GPU: the demo grid"
STEP_SCRIPT = REPO / "benchmarks" / "gpu_step.py"
SM_QUERY = ["--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"]
WAYS = ("affvx-eager", "affvx-graph", "bare-eager", "bare-graph")
CELLS_PER_FOLD = 4  # the demo grid: 2 emotions x 2 modality sets
TARGET_SPEEDUP, AIM_SPEEDUP, TARGET_SM_PCT, TARGET_CCC_DIFF, TARGET_GRAPH_RATIO = 3, 5, 60, 0.01, 2


@dataclass
class Gpu:
    """The GPU the grids run on: `uuid` goes into CUDA_VISIBLE_DEVICES and `nvidia-smi -i`."""

    uuid: str
    description: str


@dataclass
class Grid:
    label: str
    flags: list[str]
    on_gpu: bool


@dataclass
class GridRun:
    """What one launch of the grid did."""

    grid: Grid
    outcome: str  # "ok", "timed out after ...", "exit N: ..."
    wall_s: float
    jobs_total: int
    ccc_by_job: dict[str, float]
    devices: set[str]
    sm_pct: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.outcome == "ok" and len(self.ccc_by_job) == self.jobs_total

    @property
    def mean_ccc(self) -> float:
        return float(np.mean(list(self.ccc_by_job.values()))) if self.ccc_by_job else float("nan")


# --- the machine ------------------------------------------------------------------------------


def find_gpu(index: str) -> tuple[Gpu | None, str]:
    """The GPU `index` of nvidia-smi if torch can use it; else None and why not."""
    if shutil.which("nvidia-smi") is None:
        return None, "nvidia-smi not found"
    query = ["nvidia-smi", "-i", index, "--query-gpu=uuid,name,memory.total,driver_version"]
    try:
        answer = subprocess.run(
            [*query, "--format=csv,noheader"],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        return None, "nvidia-smi did not answer in 60 s"
    if answer.returncode != 0 or not answer.stdout.strip():
        return None, f"nvidia-smi -i {index}: {answer.stderr.strip() or 'no such GPU'}"
    uuid, name, memory, driver = (part.strip() for part in answer.stdout.split(",")[:4])
    torch_says = torch_cuda(uuid)
    if not torch_says.startswith("True"):
        return None, f"torch.cuda.is_available() is false on {name} ({torch_says})"
    _, torch_version, cuda_version = torch_says.split()
    description = (
        f"{name} ({memory}, driver {driver}), PyTorch {torch_version} + CUDA {cuda_version}"
    )
    return Gpu(uuid, description), ""


def torch_cuda(uuid: str) -> str:
    """`True <torch> <cuda>` when torch sees the GPU, asked in a child (the benchmark itself
    holds no CUDA context, which could stand in the way of an MPS daemon)."""
    code = "import torch; print(torch.cuda.is_available(), torch.__version__, torch.version.cuda)"
    answer = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": uuid},
    )
    return answer.stdout.strip() or (answer.stderr.strip().splitlines() or ["no answer"])[-1]


# --- the grids --------------------------------------------------------------------------------


def cpu_grid(cores: int) -> Grid:
    return Grid(f"CPU, {cores} cores", ["--cpus", "1", "--max-parallel", str(cores)], False)


def gpu_grids(jobs_per_gpu: list[int]) -> list[Grid]:
    """One job at a time, then N jobs per GPU without and with MPS."""
    grids = [Grid("GPU, 1 job at a time", ["--cpus", "1", "--gpus", "1"], True)]
    for n in jobs_per_gpu:
        shared = ["--cpus", "1", "--gpus", "1", "--jobs-per-gpu", str(n)]
        grids.append(Grid(f"GPU, {n} jobs", shared, True))
        grids.append(Grid(f"GPU, {n} jobs, MPS", [*shared, "--mps"], True))
    return grids


def graph_grids(best: Grid) -> list[Grid]:
    """The best shared grid again, with the step captured as a CUDA graph and without."""
    return [
        Grid(f"{best.label}, graphs {mode}", [*best.flags, "--cuda-graphs", mode], True)
        for mode in ("on", "off")
    ]


def best_shared(runs: list[GridRun]) -> Grid | None:
    """The fastest complete grid with --jobs-per-gpu."""
    shared = [r for r in runs if r.complete and "--jobs-per-gpu" in r.grid.flags]
    return min(shared, key=lambda r: r.wall_s).grid if shared else None


# --- one launch -------------------------------------------------------------------------------


def run_grid(
    grid: Grid, base: list[str], jobs_total: int, timeout_s: float, gpu: Gpu | None
) -> GridRun:
    """`affvx launch` of `grid` in a temporary run directory, SM sampled while it runs."""
    with tempfile.TemporaryDirectory(prefix="affvx-gpu-grid-") as scratch:
        run, log = Path(scratch) / "run", Path(scratch) / "launch.log"
        sampler = SmSampler(gpu, Path(scratch) / "sm.csv") if grid.on_gpu and gpu else None
        if sampler:
            sampler.start()
        started = time.perf_counter()
        try:
            outcome = follow_launch(
                grid, [*base, *grid.flags], run, log, jobs_total, timeout_s, gpu
            )
        finally:
            wall_s = time.perf_counter() - started
            sm_pct = sampler.stop() if sampler else []
        ccc_by_job, devices = job_results(run)
        return GridRun(
            grid, outcome, wall_s, jobs_total, ccc_by_job, devices, sm_pct, launch_notes(log)
        )


def follow_launch(
    grid: Grid,
    flags: list[str],
    run: Path,
    log: Path,
    jobs_total: int,
    timeout_s: float,
    gpu: Gpu | None,
) -> str:
    """Run the launch in the foreground, print progress, stop it at the timeout."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu.uuid if gpu and grid.on_gpu else ""}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            affvx_command("launch", "--run", str(run), *flags),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        finished = wait_for_launch(process, run, Progress(grid.label, jobs_total), timeout_s)
    if not finished:
        return f"timed out after {timeout_s:.0f} s"
    if process.returncode != 0:
        return f"exit {process.returncode}: {launch_failure(log)}"
    return "ok"


def wait_for_launch(
    process: subprocess.Popen[bytes], run: Path, progress: Progress, timeout_s: float
) -> bool:
    """True if the launch ended by itself; stopped at the timeout (or on Ctrl-C, which the
    launch, in a session of its own, would not see), False."""
    deadline = time.monotonic() + timeout_s
    try:
        while process.poll() is None:
            if time.monotonic() > deadline:
                stop_launch(process)
                return False
            progress.update(count_complete(run))
            time.sleep(1)
    except KeyboardInterrupt:
        stop_launch(process)
        raise
    return True


class Progress:
    """A line when the number of complete jobs changes, or every 30 s."""

    def __init__(self, label: str, jobs_total: int) -> None:
        self.label, self.jobs_total = label, jobs_total
        self.started = self.printed_at = time.monotonic()
        self.done = -1

    def update(self, done: int) -> None:
        now = time.monotonic()
        if done != self.done or now - self.printed_at >= 30:
            self.done, self.printed_at = done, now
            elapsed_s = now - self.started
            print(
                f"    {self.label}: {done}/{self.jobs_total} jobs, {elapsed_s:.0f} s", flush=True
            )


def stop_launch(process: subprocess.Popen[bytes]) -> None:
    """Ctrl-C the launch (it stops its jobs), then kill it if it does not end in a minute."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def count_complete(run: Path) -> int:
    return sum(1 for _ in run.glob("jobs/*/result.json"))


def job_results(run: Path) -> tuple[dict[str, float], set[str]]:
    """Each complete job's mean validation CCC, and the devices the jobs trained on."""
    ccc_by_job, devices = {}, set()
    for path in sorted(run.glob("jobs/*/result.json")):
        result = json.loads(path.read_text())
        ccc_by_job[path.parent.name] = float(np.mean(list(result["val_ccc"].values())))
        devices.add(str(result.get("device", "?")))
    return ccc_by_job, devices


def launch_notes(log: Path) -> list[str]:
    """The launch's notes about the sharing flags (e.g. `--mps: ... run without MPS`)."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return [
        line.strip()
        for line in lines
        if line.startswith(("--mps", "--cuda-graphs", "--jobs-per-gpu"))
    ]


def launch_failure(log: Path) -> str:
    """The first job failure the launch printed, or its last line that is not a hint."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    failures = [line for line in lines if ": FAILED " in line]
    others = [line for line in lines if line and not line.startswith("details:")]
    return (failures or others or ["no output"])[0 if failures else -1]


class SmSampler:
    """`nvidia-smi ... -lms 200` in the background; `stop` gives the samples in percent."""

    def __init__(self, gpu: Gpu, path: Path) -> None:
        self.gpu, self.path = gpu, path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.path, "wb") as out:
            self.process = subprocess.Popen(
                ["nvidia-smi", "-i", self.gpu.uuid, *SM_QUERY],
                stdout=out,
                stderr=subprocess.DEVNULL,
            )

    def stop(self) -> list[float]:
        assert self.process is not None
        self.process.terminate()
        self.process.wait()
        lines = self.path.read_text().split()
        return [float(line) for line in lines if line.replace(".", "", 1).isdigit()]


# --- step times -------------------------------------------------------------------------------


def step_times(gpu: Gpu, timeout_s: float) -> tuple[list[dict], str]:
    """Rows of `benchmarks/gpu_step.py --json`, or [] and why there are none."""
    if not STEP_SCRIPT.exists():
        return [], "benchmarks/gpu_step.py not found"
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "steps.json"
        try:
            answer = subprocess.run(
                [sys.executable, str(STEP_SCRIPT), "--json", str(path)],
                env={**os.environ, "CUDA_VISIBLE_DEVICES": gpu.uuid},
                check=False,
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            return [], f"benchmarks/gpu_step.py timed out after {timeout_s:.0f} s"
        if answer.returncode != 0 or not path.exists():
            tail = (answer.stderr.strip().splitlines() or ["no output"])[-1]
            return [], f"benchmarks/gpu_step.py failed (exit {answer.returncode}): {tail}"
        return json.loads(path.read_text()), ""


def step_table(rows: list[dict]) -> tuple[list[list[object]], dict[tuple[str, int], float]]:
    """One row per (model, batch): ms per step of each way, and affvx-graph / bare-graph."""
    ms = {(r["model"], int(r["batch"]), r["way"]): float(r["ms_per_step"]) for r in rows}
    table, ratios = [], {}
    for model, batch in sorted({(m, b) for m, b, _ in ms}):
        cells = [ms.get((model, batch, way), float("nan")) for way in WAYS]
        ratio = cells[1] / cells[3]
        ratios[(model, batch)] = ratio
        table.append([model, batch, *(f"{c:.2f}" for c in cells), f"{ratio:.2f}"])
    return table, ratios


# --- tables, verdicts, docs, plot ---------------------------------------------------------------


def grid_table(runs: list[GridRun], base: list[str]) -> list[list[object]]:
    cpu = runs[0]
    return [grid_row(run, cpu, base) for run in runs]


def grid_row(run: GridRun, cpu: GridRun, base: list[str]) -> list[object]:
    done = f"{len(run.ccc_by_job)}/{run.jobs_total}"
    if run.outcome != "ok":
        done += f" ({run.outcome})"
    if run.notes:
        done += "; " + "; ".join(run.notes)
    speedup = cpu.wall_s / run.wall_s if cpu.complete and run.complete else float("nan")
    sm = f"{np.mean(run.sm_pct):.0f} / {np.percentile(run.sm_pct, 90):.0f}" if run.sm_pct else "—"
    return [
        run.grid.label,
        "`" + " ".join([*base, *run.grid.flags]) + "`",
        f"{run.wall_s:.1f}",
        "1.00" if run is cpu else figure(speedup, ".2f"),
        sm,
        done
        + (
            ""
            if run.devices <= {"cuda"} or not run.grid.on_gpu
            else f"; devices {sorted(run.devices)}"
        ),
        figure(run.mean_ccc, ".4f"),
        "—" if run is cpu else ccc_difference(run, cpu),
    ]


def figure(value: float, spec: str) -> str:
    return "—" if np.isnan(value) else format(value, spec)


def ccc_difference(run: GridRun, cpu: GridRun) -> str:
    """Mean CCC minus the CPU grid's, and the largest difference of one job."""
    shared = sorted(set(run.ccc_by_job) & set(cpu.ccc_by_job))
    if not shared:
        return "—"
    mean = run.mean_ccc - cpu.mean_ccc
    largest = max(abs(run.ccc_by_job[j] - cpu.ccc_by_job[j]) for j in shared)
    return f"{mean:+.4f} (one job at most {largest:.4f})"


GRID_HEADER = [
    "grid",
    "flags (after `affvx launch --run <tmp>`)",
    "wall s",
    "vs CPU",
    "SM % mean / p90",
    "jobs",
    "mean CCC",
    "CCC − CPU",
]
STEP_HEADER = ["model", "batch", *(f"{way} ms" for way in WAYS), "affvx-graph / bare-graph"]


def verdicts(
    runs: list[GridRun], ratios: dict[tuple[str, int], float], gpu: Gpu | None
) -> list[str]:
    """One line per acceptance target: met, not met, or what it needs."""
    if gpu is None:
        return ["needs a GPU: speed-up, SM utilisation, CCC on the GPU and the captured step"]
    cpu, gpu_runs = runs[0], [r for r in runs[1:] if r.complete]
    if not cpu.complete or not gpu_runs:
        return ["no complete CPU grid and GPU grid to compare"]
    fastest = min(gpu_runs, key=lambda r: r.wall_s)
    speedup = cpu.wall_s / fastest.wall_s
    sm = float(np.mean(fastest.sm_pct)) if fastest.sm_pct else float("nan")
    worst_ccc = max(abs(r.mean_ccc - cpu.mean_ccc) for r in gpu_runs)
    return [
        (
            f"speed-up of the fastest GPU grid ({fastest.grid.label}): {speedup:.2f}x "
            f"(target {TARGET_SPEEDUP}x, aim {AIM_SPEEDUP}x): {met(speedup >= TARGET_SPEEDUP)}"
        ),
        (
            f"SM utilisation of that grid: {sm:.0f}% mean "
            f"(target {TARGET_SM_PCT}%): {met(sm >= TARGET_SM_PCT)}"
        ),
        (
            f"mean CCC of every complete GPU grid within {TARGET_CCC_DIFF} of the CPU grid's "
            f"(largest difference {worst_ccc:.4f}): {met(worst_ccc <= TARGET_CCC_DIFF)}"
        ),
        graph_verdict(ratios),
    ]


def graph_verdict(ratios: dict[tuple[str, int], float]) -> str:
    wanted = {
        k: v for k, v in ratios.items() if k[0].lower() in ("tcn", "lfan") and not np.isnan(v)
    }
    if not wanted:
        return "captured step against the graph-only bound: no TCN or LFAN step times"
    worst = max(wanted.values())
    return (
        f"captured step within {TARGET_GRAPH_RATIO}x of the graph-only bound for TCN and LFAN "
        f"(worst affvx-graph / bare-graph {worst:.2f}): {met(worst <= TARGET_GRAPH_RATIO)}"
    )


def met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def report(
    runs: list[GridRun],
    base: list[str],
    steps: list[dict],
    steps_note: str,
    gpu: Gpu | None,
    quick: bool,
) -> str:
    """The section for docs/benchmarks.md, which is also what the script prints."""
    table, ratios = step_table(steps)
    scope = "`--quick`: 2 folds, 1 epoch, the plumbing only" if quick else "24 jobs"
    lines = [
        SECTION,
        "",
        (
            f"`python benchmarks/gpu_grid.py` — the demo grid ({scope}; `affvx launch` with its "
            "defaults on the demo corpus, LFAN), each row a separate launch in a new run "
            "directory; SM utilisation sampled by `nvidia-smi -lms 200` over the whole launch."
        ),
        "",
        f"Machine: {machine()}; GPU: {gpu.description if gpu else 'none'}.",
        "",
        markdown_table(GRID_HEADER, grid_table(runs, base)),
        "",
        (
            "Step times, affvx against a bare loop with batches already on the GPU "
            "(`python benchmarks/gpu_step.py --json`):"
        ),
        "",
        markdown_table(STEP_HEADER, table) if table else f"- {steps_note or 'needs a GPU'}",
        "",
        *(f"- {line}" for line in verdicts(runs, ratios, gpu)),
    ]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace the section (up to the next `## ` heading) or add it at the end."""
    lines = path.read_text().splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == SECTION), None)
    if start is None:
        path.write_text("".join(lines).rstrip("\n") + "\n\n" + section)
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = ["\n", *lines[end:]] if end < len(lines) else []
    path.write_text("".join(lines[:start]) + section + "".join(tail))


def plot_walls(runs: list[GridRun], path: Path) -> str:
    """A bar of wall time per grid; one line saying where it went, or why there is none."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed"
    figure, axis = plt.subplots(figsize=(8, 0.45 * len(runs) + 1.2))
    labels = [r.grid.label + ("" if r.complete else " (incomplete)") for r in runs]
    axis.barh(labels[::-1], [r.wall_s for r in runs][::-1], color="tab:blue")
    axis.set_xlabel("wall time of the grid, s")
    axis.set_title("the demo grid: wall time per configuration")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return f"plot: {path}"


# --- main -------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs-per-gpu", default="4,8,12", help="N jobs per GPU to try [4,8,12]")
    parser.add_argument("--gpu", default="0", help="nvidia-smi index of the GPU to use [0]")
    parser.add_argument("--timeout-min", type=float, default=20, help="per grid [20]")
    parser.add_argument("--quick", action="store_true", help="2 folds, 1 epoch: plumbing only")
    parser.add_argument(
        "--write-docs", action="store_true", help=f"write '{SECTION}' into {DOCS.name}"
    )
    return parser.parse_args()


def run_all(
    grids: list[Grid], base: list[str], jobs_total: int, timeout_s: float, gpu: Gpu | None
) -> list[GridRun]:
    runs = []
    for grid in grids:
        print(f"[{grid.label}] affvx launch {' '.join([*base, *grid.flags])}", flush=True)
        runs.append(run_grid(grid, base, jobs_total, timeout_s, gpu))
        done = runs[-1]
        print(
            f"[{grid.label}] {done.outcome}, {done.wall_s:.1f} s, mean CCC {done.mean_ccc:.4f}",
            flush=True,
        )
    return runs


def main() -> None:
    args = parse_args()
    folds = 2 if args.quick else 6
    base = ["--folds", str(folds), "--epochs", "1"] if args.quick else []
    jobs_total, timeout_s = folds * CELLS_PER_FOLD, args.timeout_min * 60
    cores = os.cpu_count() or 1
    ensure_demo_store(lambda message: print(message, flush=True))
    gpu, why_not = find_gpu(args.gpu)
    runs = run_all([cpu_grid(cores)], base, jobs_total, timeout_s, gpu)
    steps, steps_note = [], "needs a GPU"
    if gpu is None:
        print(f"no GPU ({why_not}); rows that need one: {needs_gpu(args.jobs_per_gpu, cores)}")
    else:
        print(f"GPU: {gpu.description}", flush=True)
        steps, steps_note = step_times(gpu, timeout_s)
        runs += run_all(
            gpu_grids(parse_counts(args.jobs_per_gpu, cores)), base, jobs_total, timeout_s, gpu
        )
        best = best_shared(runs)
        if best is None:
            print("no --jobs-per-gpu grid completed: the --cuda-graphs on / off rows are left out")
        else:
            runs += run_all(graph_grids(best), base, jobs_total, timeout_s, gpu)
    section = report(runs, base, steps, steps_note, gpu, args.quick)
    print("\n" + section)
    print(plot_walls(runs, OUT / "gpu_grid_wall.png"))
    if args.write_docs:
        write_section(DOCS, section)
        print(f"wrote '{SECTION}' into {DOCS}")
    elif gpu is not None:
        print("docs/benchmarks.md left as it was: add --write-docs to write this section")


def needs_gpu(jobs_per_gpu: str, cores: int) -> str:
    labels = [g.label for g in gpu_grids(parse_counts(jobs_per_gpu, cores, quiet=True))]
    return "; ".join([*labels, "graphs on / off", "step times (benchmarks/gpu_step.py)"])


def parse_counts(text: str, cores: int, quiet: bool = False) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    for n in counts:
        if n > cores and not quiet:
            print(f"--jobs-per-gpu {n}: only {cores} cores, so at most {cores} jobs run at once")
    return counts


if __name__ == "__main__":
    main()
