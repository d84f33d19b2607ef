"""Known answer: every model on the default synthetic corpus against the oracle CCC.

Fold 0 under abaw2 (validation = Validation_Set). For each model x modality set x emotion it
trains one job and prints its validation CCC, the manifest's oracle CCC for that modality set,
and their ratio (target: at least 0.85 for every row; lfan on visual,mfcc,vggish above the best
single modality for both emotions).

    python benchmarks/known_answer.py [--store PATH] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, machine, markdown_table  # noqa: E402

from affvx.orchestrator.train import single_job_spec  # noqa: E402
from affvx.storage.reader import FeatureStore  # noqa: E402
from affvx.storage.synth import SynthConfig, make_synthetic_store, oracle_for  # noqa: E402
from affvx.trainers.job import run_job  # noqa: E402

FUSION = ("visual", "mfcc", "vggish")
CASES = [
    ("tcn", ("visual",), "valence"),
    ("tcn", ("visual",), "arousal"),
    ("tcn", ("mfcc",), "valence"),
    ("tcn", ("mfcc",), "arousal"),
    ("tcn", ("vggish",), "valence"),
    ("tcn", ("vggish",), "arousal"),
    ("tcn", ("egemaps",), "valence"),
    ("tcn", ("egemaps",), "arousal"),
    ("tcn", FUSION, "valence"),
    ("tcn", FUSION, "arousal"),
    ("lfan", ("visual",), "valence"),
    ("lfan", ("visual",), "arousal"),
    ("lfan", FUSION, "valence"),
    ("lfan", FUSION, "arousal"),
    ("gru", ("visual",), "both"),
    ("gru", FUSION, "both"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    store_path = args.store or OUT / "demo-store"
    if not (store_path / "manifest.json").exists():
        make_synthetic_store(store_path, SynthConfig())
    manifest = FeatureStore(store_path).manifest
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        for model, modalities, emotion in CASES:
            spec = single_job_spec(
                store_path,
                fold=0,
                emotion=emotion,
                modalities=modalities,
                model=model,
                threads=args.threads,
            )
            started = time.perf_counter()
            result = run_job(
                spec, Path(scratch) / f"{model}-{'+'.join(modalities)}-{emotion}"
            ).result
            seconds = time.perf_counter() - started
            oracle = oracle_for(manifest, list(modalities))["Validation_Set"]
            for name, value in result["val_ccc"].items():
                results[(model, modalities, name)] = value
                rows.append(
                    [
                        model,
                        "+".join(modalities),
                        name if emotion != "both" else f"{name} (multi-task)",
                        f"{value:.3f}",
                        f"{oracle[name]:.3f}",
                        f"{value / oracle[name]:.2f}",
                        result["best_epoch"] + 1,
                        result["epochs_run"],
                        f"{seconds:.0f}",
                    ]
                )
            print(f"done {model} {'+'.join(modalities)} {emotion}", file=sys.stderr, flush=True)
    print(
        f"machine: {machine()}; store: {store_path}; fold 0 (abaw2), validation = Validation_Set\n"
    )
    print(
        markdown_table(
            [
                "model",
                "modalities",
                "emotion",
                "val CCC",
                "oracle",
                "ratio",
                "best epoch",
                "epochs",
                "seconds",
            ],
            rows,
        )
    )
    for emotion in ("valence", "arousal"):
        best_single = max(
            v for (m, mods, e), v in results.items() if len(mods) == 1 and e == emotion
        )
        print(
            f"\n{emotion}: lfan on {'+'.join(FUSION)} {results[('lfan', FUSION, emotion)]:.3f} vs best single "
            f"modality {best_single:.3f}",
            end="",
        )
    print()


if __name__ == "__main__":
    main()
