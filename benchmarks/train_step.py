"""Time per training step: affvx's loop (windows read from the store) against a bare PyTorch
loop over batches already in memory, same model, batch size, loss and threads.

The affvx step is Trainer._step: fill the batch from zero-copy store views (normalising on
the way), forward, CCC loss, backward, AdamW step. The bare step does the same on tensors
prepared beforehand. Target: affvx at most 1.15x the bare step (the loader is not the
bottleneck).

    python benchmarks/train_step.py [--store PATH] [--steps 60]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, VA_TRIALS, machine, markdown_table  # noqa: E402

from affvx.orchestrator.train import single_job_spec  # noqa: E402
from affvx.storage.reader import FeatureStore  # noqa: E402
from affvx.storage.synth import SynthConfig, make_synthetic_store  # noqa: E402
from affvx.trainers.ccc import ccc_loss  # noqa: E402
from affvx.trainers.job import configure_torch  # noqa: E402
from affvx.trainers.loop import Trainer, TrainingObserver  # noqa: E402
from affvx.trainers.models import build_model  # noqa: E402


def make_trainer(store_path: Path, model: str, modalities: tuple[str, ...]) -> Trainer:
    spec = single_job_spec(
        store_path, fold=0, emotion="valence", modalities=modalities, model=model
    )
    configure_torch(spec, torch.device("cpu"))
    return Trainer(
        spec,
        FeatureStore(store_path),
        device=torch.device("cpu"),
        config_hash="benchmark",
        save=lambda state: None,
        must_stop=lambda upcoming: False,
        observer=TrainingObserver(),
    )


def time_affvx(trainer: Trainer, batches: list[list[int]]) -> float:
    trainer.model.train()
    for batch in batches[:5]:
        trainer._step([trainer.windows[i] for i in batch])
    started = time.perf_counter()
    for batch in batches[5:]:
        trainer._step([trainer.windows[i] for i in batch])
    return (time.perf_counter() - started) / (len(batches) - 5)


def time_bare(trainer: Trainer, batches: list[list[int]]) -> float:
    """The same steps with every batch prepared in memory beforehand."""
    prepared = []
    for batch in batches:
        b = trainer.reader.batch([trainer.windows[i] for i in batch])
        prepared.append(
            ({m: x.clone() for m, x in b.inputs.items()}, b.labels.clone(), b.label_mask.clone())
        )
    spec = trainer.spec
    torch.manual_seed(spec.seed)
    dims = {m: trainer.store.modalities[m] for m in spec.modalities}
    model = build_model(spec.model, dims, len(spec.emotions), spec.leader)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    model.train()

    def step(inputs: dict[str, torch.Tensor], labels: torch.Tensor, mask: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = ccc_loss(model(inputs).float(), labels, mask)
        loss.backward()
        optimizer.step()

    for item in prepared[:5]:
        step(*item)
    started = time.perf_counter()
    for item in prepared[5:]:
        step(*item)
    return (time.perf_counter() - started) / (len(prepared) - 5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    store_path = args.store or OUT / "store-scale0.25"
    if not (store_path / "manifest.json").exists():
        make_synthetic_store(store_path, SynthConfig(trial_list=VA_TRIALS, scale=0.25))
    rows = []
    for model, modalities in (
        ("tcn", ("visual",)),
        ("lfan", ("visual", "mfcc", "vggish")),
        ("gru", ("visual", "mfcc", "vggish")),
    ):
        trainer = make_trainer(store_path, model, modalities)
        rng = np.random.default_rng(0)
        batches = [
            list(rng.choice(len(trainer.windows), trainer.spec.batch_size, replace=False))
            for _ in range(args.steps + 5)
        ]
        # alternate the two ways so that background load touches both alike
        affvx_times, bare_times = [], []
        for _ in range(3):
            affvx_times.append(time_affvx(trainer, batches))
            bare_times.append(time_bare(trainer, batches))
        affvx_s, bare_s = min(affvx_times), min(bare_times)
        rows.append(
            [
                model,
                "+".join(modalities),
                f"{affvx_s * 1000:.1f}",
                f"{bare_s * 1000:.1f}",
                f"{affvx_s / bare_s:.3f}",
            ]
        )
    print(f"machine: {machine()}; torch threads: {torch.get_num_threads()}")
    print(
        f"store: {store_path} ({len(FeatureStore(store_path).trial_names)} trials); batch 8 windows x 300 frames\n"
    )
    print(
        markdown_table(
            ["model", "modalities", "affvx ms/step", "bare ms/step", "affvx / bare"], rows
        )
    )


if __name__ == "__main__":
    main()
