"""Memory of several reader processes over one store: the features are shared, not copied.

Each reader (a separate, spawned process) opens the store and reads every row of `visual`,
`mfcc` and `vggish`, then holds still while the parent measures it. Memory is reported as PSS
(proportional set size: a page shared by k processes counts 1/k in each), summed over the
readers; RSS would count the shared page cache once per reader. The baseline is a loader that
copies the features into each process's own memory (what np.load-per-worker does).

    python benchmarks/store_memory.py --store PATH [--readers 4]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, markdown_table  # noqa: E402
from store_windows import MODALITIES, ensure_store  # noqa: E402


def reader(store_path: str, mode: str, ready, release) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from affvx.storage.reader import FeatureStore

    store = FeatureStore(store_path)
    kept = []
    for trial in store.trial_names:
        for modality in MODALITIES:
            view = store.features(trial, modality)
            if mode == "copy":
                kept.append(np.array(view))
            else:
                np.add.reduce(view, axis=0)  # touches every page of the view
    if mode == "copy":
        del store, view  # unmap: the copies are all this process keeps
    ready.wait()
    release.wait()


def measure(store_path: Path, n_readers: int, mode: str) -> tuple[float, float]:
    """(sum of PSS, sum of RSS) in MiB of `n_readers` readers all holding their data."""
    context = mp.get_context("spawn")
    ready = context.Barrier(n_readers + 1)
    release = context.Barrier(n_readers + 1)
    processes = [
        context.Process(target=reader, args=(str(store_path), mode, ready, release))
        for _ in range(n_readers)
    ]
    for process in processes:
        process.start()
    ready.wait()
    infos = [psutil.Process(p.pid).memory_full_info() for p in processes]
    release.wait()
    for process in processes:
        process.join()
    return sum(i.pss for i in infos) / 2**20, sum(i.rss for i in infos) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--readers", type=int, default=4)
    args = parser.parse_args()
    store_path = ensure_store(args.store, args.scale)
    rows = []
    results = {}
    for mode, label in (("mmap", "affvx store (shared mmap)"), ("copy", "copy into each process")):
        one_pss, one_rss = measure(store_path, 1, mode)
        many_pss, many_rss = measure(store_path, args.readers, mode)
        results[mode] = many_pss / one_pss
        rows.append(
            [
                label,
                f"{one_pss:,.0f}",
                f"{many_pss:,.0f}",
                f"{many_rss:,.0f}",
                f"{many_pss / one_pss:.2f}",
            ]
        )
    print(f"machine: {machine()}")
    print(f"store: {store_path}; modalities read: {', '.join(MODALITIES)}\n")
    n = args.readers
    print(
        markdown_table(
            [
                "loader",
                "1 reader PSS MiB",
                f"{n} readers PSS MiB (sum)",
                f"{n} readers RSS MiB (sum)",
                f"{n} / 1",
            ],
            rows,
        )
    )
    print(f"\nstore: {n} readers use {results['mmap']:.2f}x one reader (target <= 1.5x)")


if __name__ == "__main__":
    main()
