"""Shared output helpers: one stderr console for diagnostics and progress, stdout for results."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console


def _console(**options: Any) -> Console:
    """A console; in a pipe or a log (no terminal to measure) tables get 120 columns."""
    console = Console(highlight=False, **options)
    if not console.is_terminal:
        console = Console(highlight=False, width=120, **options)
    return console


stderr = _console(stderr=True)
stdout = _console()


def print_json(data: Any) -> None:
    """Machine-readable output: plain JSON on stdout, nothing else (indented on a terminal;
    compact in a pipe, where the C encoder makes 10,000 jobs a matter of milliseconds)."""
    indent = 2 if sys.stdout.isatty() else None
    sys.stdout.write(json.dumps(data, indent=indent) + "\n")


def note(message: str) -> None:
    """A one-line remark for the user, on stderr, printed as is (a reason that quotes
    `[training]` must not be read as console markup)."""
    stderr.print(message, soft_wrap=True, markup=False)


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr; yields `update(done, total)`. Silent when not a terminal."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=False,
        disable=not stderr.is_terminal,
    )
    task = progress.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    with progress:
        yield update
