"""The progress display of `affvx train`."""

from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from affvx.cli._console import stderr


class EpochProgress:
    """Shows one bar per epoch (batches) and the validation CCC of each finished epoch."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=stderr,
        )
        self.task: Any = None
        self.max_epochs = 0
        self.best = float("-inf")

    def __enter__(self) -> EpochProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def on_start(self, *, epoch: int, max_epochs: int, resumed: bool) -> None:
        self.max_epochs = max_epochs
        if resumed:
            self.progress.console.print(f"resuming from its checkpoint at epoch {epoch + 1}")

    def on_batch(self, *, epoch: int, done: int, total: int) -> None:
        description = f"epoch {epoch + 1}/{self.max_epochs}"
        if self.task is None or self.progress.tasks[self.task].description != description:
            self.task = self.progress.add_task(description, total=total, status="training")
        self.progress.update(self.task, completed=done)

    def on_phase(self, phase: str) -> None:
        if self.task is not None:
            self.progress.update(self.task, status=phase)

    def on_epoch(self, row: dict[str, Any]) -> None:
        self.best = max(self.best, row["val_ccc_mean"])
        scores = " ".join(
            f"{k[8:]} {v:.3f}"
            for k, v in row.items()
            if k.startswith("val_ccc_") and k != "val_ccc_mean"
        )
        if self.task is not None:
            self.progress.update(self.task, status=f"val CCC {scores} (best mean {self.best:.3f})")
