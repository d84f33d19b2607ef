"""What `affvx launch` and `affvx tune` share: the grid's command-line options, and the nested
flags they make for the orchestrator (a flag beats the config file, which beats defaults)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from affvx.cluster.registry import backend_names

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C

FOLDS = typer.Option(None, "--folds", help="Number of folds [default: 6].")
MODALITIES = typer.Option(
    None,
    "--modalities",
    help="A modality set, comma-separated; repeat for several [default: visual and visual,mfcc,vggish].",
)
MODEL = typer.Option(None, "--model", help="tcn, lfan or gru [default: lfan].")
PROTOCOL = typer.Option(None, "--protocol", help="abaw2 or kfold [default: abaw2].")
STORE = typer.Option(None, "--store", help="Feature store [default: the demo corpus].")
RUN = typer.Option(None, "--run", help="Run directory [default: runs/<timestamp>].")
BACKEND = typer.Option(None, "--backend", help=f"{' or '.join(backend_names())} [default: local].")
EPOCHS = typer.Option(None, "--epochs", help="Maximum epochs per job [default: 30].")
CPUS = typer.Option(None, "--cpus", help="CPUs per job [default: 1].")
GPUS = typer.Option(
    None,
    "--gpus",
    help="GPUs per job, or a share of one: 0.25 = four jobs per GPU [default: 0].",
)
JOBS_PER_GPU = typer.Option(
    None,
    "--jobs-per-gpu",
    help="Jobs of --gpus 1 that share one GPU, each with 1/N of its memory (local: N at "
    "once; Ray: 1/N GPU each; SLURM/PBS: N per array task) [default: 1].",
)
CUDA_GRAPHS = typer.Option(
    None,
    "--cuda-graphs",
    help="Capture each GPU job's training step as a CUDA graph: auto, on or off "
    "[default: auto = where the model captures].",
)


def grid_flags(
    *,
    store: Path | None,
    protocol: str | None,
    folds: int | None,
    emotions: str | None,
    modalities: list[str] | None,
    seeds: str | None,
    model: str | None,
    epochs: int | None,
    cpus: int | None,
    gpus: float | None,
    time_limit: str | None,
    backend: str | None,
    max_retries: int | None,
    jobs_per_gpu: int | None = None,
    cuda_graphs: str | None = None,
) -> dict[str, Any]:
    """The grid's flags as the orchestrator reads them (None: not given)."""
    return {
        "store": str(store) if store is not None else None,
        "protocol": protocol,
        "folds": folds,
        "emotions": names(emotions),
        "modalities": tuple(names(m) for m in modalities) if modalities else None,  # type: ignore[misc]
        "seeds": _seeds(seeds),
        "model": {"name": model},
        "training": {"max_epochs": epochs},
        "resources": {
            "cpus": cpus,
            **_gpu_share(gpus, jobs_per_gpu),
            "cuda_graphs": _cuda_graphs(cuda_graphs),
            "time_limit_min": _minutes(time_limit),
        },
        "backend": {"name": backend, "max_retries": max_retries},
    }


def names(text: str | None) -> tuple[str, ...] | None:
    """`valence, arousal` -> ("valence", "arousal")."""
    if text is None:
        return None
    return tuple(part.strip() for part in text.split(",") if part.strip())


def existing_run(path: Path | None) -> Path | None:
    """`path` if a run directory has been written there."""
    from affvx.orchestrator.rundir import RunDir

    return path if path is not None and RunDir(path).exists() else None


def _seeds(text: str | None) -> tuple[int, ...] | None:
    from affvx.orchestrator.config import parse_seeds

    return None if text is None else parse_seeds(text)


def _gpu_share(gpus: float | None, jobs_per_gpu: int | None) -> dict[str, int | None]:
    """--gpus (whole GPUs, or a share 1/N) and --jobs-per-gpu as [resources] gpus and
    jobs_per_gpu."""
    from affvx.orchestrator.config import gpu_share
    from affvx.orchestrator.errors import ConfigError

    if jobs_per_gpu is not None and jobs_per_gpu < 1:
        raise ConfigError(f"--jobs-per-gpu {jobs_per_gpu}: give at least 1")
    if gpus is None:
        return {"gpus": None, "jobs_per_gpu": jobs_per_gpu}
    whole, share = gpu_share(gpus, jobs_per_gpu)
    return {"gpus": whole, "jobs_per_gpu": share if share > 1 or jobs_per_gpu else None}


def _cuda_graphs(text: str | None) -> str | None:
    from affvx.orchestrator.errors import ConfigError
    from affvx.protocol import CUDA_GRAPHS_CHOICES

    if text is not None and text not in CUDA_GRAPHS_CHOICES:
        raise ConfigError(f"--cuda-graphs {text}: choose {', '.join(CUDA_GRAPHS_CHOICES)}")
    return text


def _minutes(text: str | None) -> float | None:
    from affvx.orchestrator.config import parse_duration_min

    return None if text is None else parse_duration_min(text)
