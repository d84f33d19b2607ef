"""Time per training step on a GPU: affvx's step against a bare loop, CUDA graphs on and off.

    affvx-eager   Trainer's pipelined step (--cuda-graphs off): batches filled from the store
                  into pinned buffers while the GPU runs, copied without blocking, eager step
    affvx-graph   the same with the step captured as one CUDA graph (--cuda-graphs on)
    bare-eager    a plain PyTorch loop over batches already on the GPU
    bare-graph    that loop captured as one CUDA graph (PyTorch's whole-network recipe)

Same model, batch size, CCC loss, AdamW and bf16 autocast everywhere. affvx-graph near
bare-graph means the loader keeps up with the captured step.

    python benchmarks/gpu_step.py [--batches 8,64] [--steps 200] [--store PATH] [--json PATH]

`--json PATH` writes a list of rows {"model", "batch", "way", "ms_per_step"}. Without CUDA it
prints one line saying so, writes an empty list to --json and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

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
from affvx.trainers.spec import TrainSpec  # noqa: E402

MODELS = {
    "tcn": ("visual",),
    "lfan": ("visual", "mfcc", "vggish"),
    "gru": ("visual", "mfcc", "vggish"),
}
WAYS = ("affvx-eager", "affvx-graph", "bare-eager", "bare-graph")
WARMUP_STEPS = 20
DEVICE = torch.device("cuda")


def make_trainer(store_path: Path, model: str, batch: int, cuda_graphs: str) -> Trainer:
    spec = single_job_spec(
        store_path,
        fold=0,
        emotion="valence",
        modalities=MODELS[model],
        model=model,
        batch_size=batch,
        device="cuda",
        cuda_graphs=cuda_graphs,
    )
    configure_torch(spec, DEVICE)
    return Trainer(
        spec,
        FeatureStore(store_path),
        device=DEVICE,
        config_hash="benchmark",
        save=lambda state: None,
        must_stop=lambda upcoming: False,
        observer=TrainingObserver(),
    )


def time_affvx(trainer: Trainer, steps: int) -> float:
    """Seconds per step of the trainer's own loop: batch stream and step (capture excluded)."""
    size = trainer.spec.batch_size
    chosen = [
        [trainer.windows[(i * size + j) % len(trainer.windows)] for j in range(size)]
        for i in range(WARMUP_STEPS + steps)
    ]
    batches = trainer.batches.batches(chosen)
    trainer.model.train()
    for _ in range(WARMUP_STEPS):
        trainer._train_step(next(batches))
    torch.cuda.synchronize()
    started = time.perf_counter()
    for batch in batches:
        trainer._train_step(batch)
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def time_bare(trainer: Trainer, steps: int, graph: bool) -> float:
    """Seconds per step of a plain loop over batches prepared on the GPU beforehand."""
    spec: TrainSpec = trainer.spec
    size = spec.batch_size
    prepared = []
    for i in range(8):  # a few distinct batches, reused in turn
        windows = [trainer.windows[(i * size + j) % len(trainer.windows)] for j in range(size)]
        b = trainer.reader.batch(windows)
        prepared.append(
            (
                {m: x.to(DEVICE) for m, x in b.inputs.items()},
                b.labels.to(DEVICE),
                b.label_mask.to(DEVICE),
            )
        )
    torch.manual_seed(spec.seed)
    dims = {m: trainer.store.modalities[m] for m in spec.modalities}
    model = build_model(spec.model, dims, len(spec.emotions), spec.leader).to(DEVICE).train()
    lr = torch.tensor(spec.lr, device=DEVICE) if graph else spec.lr
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=lr, weight_decay=spec.weight_decay, capturable=graph
    )

    def step(inputs: dict[str, torch.Tensor], labels: torch.Tensor, mask: torch.Tensor) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            output = model(inputs)
        ccc_loss(output.float(), labels, mask).backward()
        optimizer.step()

    if graph:
        static = tuple(
            {m: x.clone() for m, x in item.items()} if isinstance(item, dict) else item.clone()
            for item in prepared[0]
        )
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                optimizer.zero_grad(set_to_none=True)
                step(*static)
        torch.cuda.current_stream().wait_stream(side)
        optimizer.zero_grad(set_to_none=True)
        captured = torch.cuda.CUDAGraph()
        with torch.cuda.graph(captured):
            step(*static)

        def run(inputs: dict[str, torch.Tensor], labels: torch.Tensor, mask: torch.Tensor) -> None:
            for m, x in inputs.items():
                static[0][m].copy_(x)
            static[1].copy_(labels)
            static[2].copy_(mask)
            captured.replay()
    else:

        def run(inputs: dict[str, torch.Tensor], labels: torch.Tensor, mask: torch.Tensor) -> None:
            optimizer.zero_grad(set_to_none=True)
            step(inputs, labels, mask)

    for i in range(WARMUP_STEPS):
        run(*prepared[i % len(prepared)])
    torch.cuda.synchronize()
    started = time.perf_counter()
    for i in range(steps):
        run(*prepared[i % len(prepared)])
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def measure(store_path: Path, model: str, batch: int, way: str, steps: int) -> float:
    """Milliseconds per step of one way (the best of three runs)."""
    times = []
    for _ in range(3):
        if way.startswith("affvx"):
            cuda_graphs = "on" if way == "affvx-graph" else "off"
            times.append(time_affvx(make_trainer(store_path, model, batch, cuda_graphs), steps))
        else:
            trainer = make_trainer(store_path, model, batch, "off")
            times.append(time_bare(trainer, steps, graph=way == "bare-graph"))
    return 1000 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--batches", default="8", help="Comma-separated batch sizes, e.g. 8,64.")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None, help="Also write the rows here.")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(
            "gpu_step.py needs a CUDA GPU (torch.cuda.is_available() is False); nothing measured"
        )
        if args.json is not None:
            args.json.write_text("[]\n")
        return
    batch_sizes = [int(b) for b in args.batches.split(",") if b.strip()]
    store_path = args.store or OUT / "store-scale0.25"
    if not (store_path / "manifest.json").exists():
        make_synthetic_store(store_path, SynthConfig(trial_list=VA_TRIALS, scale=0.25))
    rows = []
    for model in MODELS:
        for batch in batch_sizes:
            for way in WAYS:
                ms = measure(store_path, model, batch, way, args.steps)
                rows.append({"model": model, "batch": batch, "way": way, "ms_per_step": ms})
                print(f"{model} batch {batch} {way}: {ms:.2f} ms/step", file=sys.stderr)
    print(f"machine: {machine()}; GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    print(f"store: {store_path}; {args.steps} steps per way, best of 3\n")
    table = []
    for model in MODELS:
        for batch in batch_sizes:
            ms = {
                r["way"]: r["ms_per_step"]
                for r in rows
                if (r["model"], r["batch"]) == (model, batch)
            }
            table.append(
                [model, batch, *(f"{ms[way]:.2f}" for way in WAYS)]
                + [f"{ms['affvx-eager'] / ms['affvx-graph']:.2f}x"]
            )
    print(markdown_table(["model", "batch", *(f"{w} ms" for w in WAYS), "graph speed-up"], table))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
