"""Does pruning pay, and does tuning help? The same study (sampler seed, 20 trials, 6 folds,
a space with poor regions: learning rate 1e-6 to 1e-1) tuned on the local backend without a
pruner and with the Wilcoxon pruner, in one run of this script, and the default parameters
launched on the same folds.

Printed per study: fold jobs started, fold jobs cancelled, epochs trained (every epoch a fold
job finished, cancelled ones included), trials by state, and the best trial's mean CCC; then
the ratios of the pruned studies to the unpruned one, and the default parameters' mean CCC.

To stay within minutes on 2 cores every job is small: a 36-trial synthetic corpus of the
demo's generator at 3% of the Aff-Wild2 lengths, 16-dimensional visual features, the visual
modality, a tcn, 6 epochs, valence only.

    python benchmarks/tune_pruning.py [--trials 20] [--epochs 6] [--wilcoxon-p 0.1 0.3]
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import affvx_command, machine, markdown_table  # noqa: E402

SPACE = """
[tune.space]
lr = {low = 1e-6, high = 1e-1, log = true}
weight_decay = {low = 1e-6, high = 1e-2, log = true}
dropout = {low = 0.0, high = 0.5}
window = {choices = [150, 300, 450]}
channels = {choices = [32, 64, 128]}
"""


def studies(wilcoxon_p: list[float]) -> dict[str, str]:
    """label -> [tune] settings: no pruner, then the Wilcoxon pruner at each p threshold."""
    found = {"no pruner": 'pruner = "none"'}
    for p in wilcoxon_p:
        found[f"wilcoxon p={p:g}"] = f'pruner = "wilcoxon"\nwilcoxon_p = {p}'
    return found


def grid(store: Path, run: Path, epochs: int) -> list[str]:
    return [
        "--store",
        str(store),
        "--run",
        str(run),
        "--folds",
        "6",
        "--emotions",
        "valence",
        "--modalities",
        "visual",
        "--model",
        "tcn",
        "--epochs",
        str(epochs),
        "--max-parallel",
        "2",
    ]


def study_figures(run: Path) -> dict[str, object]:
    """Fold jobs started / cancelled, epochs trained, trial states, best mean CCC."""
    started = cancelled = epochs = 0
    for job in (run / "jobs").iterdir():
        started += (job / "state.json").exists()
        cancelled += '"cancelled_utc": "' in (job / "submission.json").read_text()
        metrics = job / "metrics.csv"
        epochs += max(0, len(metrics.read_text().splitlines()) - 1) if metrics.exists() else 0
    with open(run / "report" / "trials.csv") as handle:
        trials = list(csv.DictReader(handle))
    states: dict[str, int] = {}
    for trial in trials:
        states[trial["state"]] = states.get(trial["state"], 0) + 1
    best = max(float(t["value"]) for t in trials if t["state"] == "COMPLETE")
    return {
        "jobs": started,
        "cancelled": cancelled,
        "epochs": epochs,
        "states": states,
        "best": best,
    }


def mean_ccc(run: Path) -> float:
    with open(run / "report" / "summary.csv") as handle:
        return float(next(csv.DictReader(handle))["ccc_mean"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument(
        "--wilcoxon-p",
        type=float,
        nargs="+",
        default=[0.3],
        help="p thresholds of the pruned studies (affvx's default is 0.3, Optuna's 0.1)",
    )
    args = parser.parse_args()
    from affvx.storage.synth import SynthConfig, make_synthetic_store

    figures: dict[str, dict[str, object]] = {}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        store = make_synthetic_store(
            work / "store", SynthConfig(n_trials=36, scale=0.03, seed=7, visual_dim=16)
        )
        default_run = work / "default"
        subprocess.run(
            affvx_command("launch", *grid(store, default_run, args.epochs)),
            check=True,
            capture_output=True,
        )
        subprocess.run(affvx_command("collect", str(default_run)), check=True, capture_output=True)
        for label, settings in studies(args.wilcoxon_p).items():
            config = work / f"{len(figures)}.toml"
            config.write_text(f"[tune]\nsampler_seed = 0\n{settings}\n{SPACE}")
            run = work / f"tune{len(figures)}"
            started = time.perf_counter()
            command = ["tune", *grid(store, run, args.epochs), "--trials", str(args.trials)]
            subprocess.run(
                affvx_command(*command, "--config", str(config)), check=True, capture_output=True
            )
            seconds[label] = time.perf_counter() - started
            subprocess.run(affvx_command("collect", str(run)), check=True, capture_output=True)
            figures[label] = study_figures(run)
        default_ccc = mean_ccc(default_run)
    print(f"machine: {machine()}\n")
    base = figures["no pruner"]
    rows = []
    for label, f in figures.items():
        rows.append(
            [
                label,
                f["jobs"],
                f["cancelled"],
                f["epochs"],
                f"{f['jobs'] / base['jobs']:.0%}",  # type: ignore[operator]
                f"{f['epochs'] / base['epochs']:.0%}",  # type: ignore[operator]
                ", ".join(f"{n} {s.lower()}" for s, n in sorted(f["states"].items())),  # type: ignore[union-attr]
                f"{f['best']:.4f}",
                f"{f['best'] - base['best']:+.4f}",  # type: ignore[operator]
                f"{seconds[label] / 60:.1f} min",
            ]
        )
    header = [
        "study",
        "fold jobs started",
        "cancelled",
        "epochs trained",
        "jobs vs unpruned",
        "epochs vs unpruned",
        "trials",
        "best mean CCC",
        "vs unpruned",
        "wall time",
    ]
    print(markdown_table(header, rows))
    print(
        f"\ndefault parameters (lr 3e-4, launch) on the same 6 folds: mean CCC {default_ccc:.4f}; "
        f"best tuned (no pruner) {base['best']:.4f}"
    )


if __name__ == "__main__":
    main()
