"""Training-window throughput: the feature store against seed 002's npy files and memcpy.

For the same random (trial, start) sequence, each way fills one batch buffer per modality
with a 300-frame window of `visual`, `mfcc` and `vggish`:

- store:   views into the memory-mapped Arrow files, copied into the buffers;
- npy:     seed 002's way: one .npy per trial and modality, loaded for every sample;
- memcpy:  the same bytes copied from one array already in memory (the upper bound).

All files are read once before timing, so every way reads from the page cache.

    python benchmarks/store_windows.py [--store PATH] [--scale 0.25]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, VA_TRIALS, machine, markdown_table  # noqa: E402

from affvx.storage.reader import FeatureStore  # noqa: E402
from affvx.storage.synth import SynthConfig, make_synthetic_store  # noqa: E402

MODALITIES = ["visual", "mfcc", "vggish"]
WINDOW = 300


def ensure_store(path: Path | None, scale: float) -> Path:
    if path is not None:
        return path
    path = OUT / f"store-scale{scale:g}"
    if not (path / "manifest.json").exists():
        shutil.rmtree(path, ignore_errors=True)
        make_synthetic_store(path, SynthConfig(trial_list=VA_TRIALS, scale=scale))
    return path


def ensure_npy_tree(store: FeatureStore, root: Path) -> Path:
    """npy_data/<trial>/<modality>.npy, as seed 002 lays its features out."""
    done = root / "complete"
    if done.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for trial in store.trial_names:
        folder = root / trial
        folder.mkdir(parents=True)
        for modality in MODALITIES:
            np.save(folder / f"{modality}.npy", store.features(trial, modality))
    done.write_text("")
    return root


def sample_windows(store: FeatureStore, n: int, seed: int = 0) -> list[tuple[str, int]]:
    """Random windows, trials drawn in proportion to their frames (as windows are)."""
    rng = np.random.default_rng(seed)
    names = [t for t in store.trial_names if store.n_frames(t) >= WINDOW]
    frames = np.array([store.n_frames(t) for t in names], dtype=np.float64)
    picks = rng.choice(len(names), size=n, p=frames / frames.sum())
    return [(names[i], int(rng.integers(0, store.n_frames(names[i]) - WINDOW + 1))) for i in picks]


def run_store(
    store: FeatureStore, windows: list[tuple[str, int]], buffers: list[np.ndarray]
) -> None:
    for trial, start in windows:
        for buffer, view in zip(buffers, store.window(trial, start, WINDOW, MODALITIES)):
            np.copyto(buffer, view)


def run_npy(root: Path, windows: list[tuple[str, int]], buffers: list[np.ndarray]) -> None:
    for trial, start in windows:
        for buffer, modality in zip(buffers, MODALITIES):
            values = np.load(root / trial / f"{modality}.npy")
            np.copyto(buffer, values[start : start + WINDOW])


def run_memcpy(sources: list[np.ndarray], starts: np.ndarray, buffers: list[np.ndarray]) -> None:
    for start in starts:
        for buffer, source in zip(buffers, sources):
            np.copyto(buffer, source[start : start + WINDOW])


def rate(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    """Windows per second of fn(), best of three."""
    best = min(_timed(fn) for _ in range(3))
    return n / best


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--samples", type=int, default=4000)
    args = parser.parse_args()

    store = FeatureStore(ensure_store(args.store, args.scale))
    store.verify()  # reads every byte once: all ways start from a warm page cache
    npy_root = ensure_npy_tree(store, OUT / f"npy-{store.path.name}")
    for path in npy_root.rglob("*.npy"):
        path.read_bytes()

    dims = [store.modalities[m] for m in MODALITIES]
    buffers = [np.empty((WINDOW, d), dtype=np.float32) for d in dims]
    windows = sample_windows(store, args.samples)
    few = windows[: max(args.samples // 10, 100)]
    total_rows = sum(store.n_frames(t) for t in store.trial_names)
    sources = [
        np.random.default_rng(1).standard_normal((total_rows, d), dtype=np.float32) for d in dims
    ]
    starts = np.random.default_rng(2).integers(0, total_rows - WINDOW, size=args.samples)

    store_rate = rate(lambda: run_store(store, windows, buffers), len(windows))
    npy_rate = rate(lambda: run_npy(npy_root, few, buffers), len(few))
    memcpy_rate = rate(lambda: run_memcpy(sources, starts, buffers), len(starts))
    window_mb = sum(WINDOW * d * 4 for d in dims) / 2**20

    print(f"machine: {machine()}")
    print(f"store: {store.path} ({len(store.trial_names)} trials, {total_rows:,} frames)")
    print(f"window: {WINDOW} frames of {', '.join(MODALITIES)} = {window_mb * 1024:.0f} KiB\n")
    rows = [
        [
            "affvx store (mmap views + copy)",
            f"{store_rate:,.0f}",
            f"{store_rate * window_mb / 1024:.2f}",
            "1.00",
        ],
        [
            "seed 002: np.load per sample",
            f"{npy_rate:,.0f}",
            f"{npy_rate * window_mb / 1024:.2f}",
            f"{npy_rate / store_rate:.3f}",
        ],
        [
            "memcpy from RAM (bound)",
            f"{memcpy_rate:,.0f}",
            f"{memcpy_rate * window_mb / 1024:.2f}",
            f"{memcpy_rate / store_rate:.2f}",
        ],
    ]
    print(markdown_table(["way", "windows/s", "GiB/s", "vs store"], rows))
    print(
        f"\nstore / npy = {store_rate / npy_rate:.1f}x (target >= 10x); "
        f"store / memcpy = {store_rate / memcpy_rate:.2f} (target >= 0.5)"
    )


if __name__ == "__main__":
    main()
