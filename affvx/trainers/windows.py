"""Windows over trials and the batches built from them.

A trial of n frames is cut into windows of length L starting at 0, H, 2H, ... while they fit,
plus one window aligned to the trial's end (seed 002); a trial shorter than L gives one padded
window whose padding is masked out of loss and metric. Batches are filled by copying
zero-copy views of the store straight into preallocated buffers, normalising on the way;
`BatchStream` fills the next batch while the GPU still works on the current one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from affvx.storage.reader import FeatureStore


def window_starts(n_frames: int, length: int, hop: int) -> list[int]:
    """Start frames of the windows that cover a trial of `n_frames`."""
    if n_frames <= length:
        return [0]
    starts = list(range(0, n_frames - length + 1, hop))
    if starts[-1] + length < n_frames:
        starts.append(n_frames - length)
    return starts


@dataclass(frozen=True)
class Window:
    """Frames [start, start + length) of one trial (fewer at its end: the rest is padding)."""

    trial: str
    start: int


@dataclass
class Batch:
    """Inputs per modality (batch, frames, dim), labels and masks (batch, frames, emotions)."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    label_mask: torch.Tensor
    frame_mask: torch.Tensor  # (batch, frames): 1 for real frames, 0 for padding
    windows: list[Window]

    def to(self, device: torch.device) -> Batch:
        if device.type == "cpu":
            return self
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return Batch(
            {m: move(x) for m, x in self.inputs.items()},
            move(self.labels),
            move(self.label_mask),
            move(self.frame_mask),
            self.windows,
        )


class WindowReader:
    """Fills batches from a store: normalised features of the chosen modalities, labels.

    Normalisation statistics are fixed at construction (the fold's training frames). Buffers
    are reused between batches (pinned when `pin_memory`), so a batch is valid until the next
    call to `batch()`; `copy()` makes a reader with buffers of its own.
    """

    def __init__(
        self,
        store: FeatureStore,
        *,
        modalities: tuple[str, ...],
        emotions: tuple[str, ...],
        normalisation: dict[str, tuple[np.ndarray, np.ndarray]],
        length: int,
        batch_size: int,
        pin_memory: bool = False,
    ) -> None:
        self.store = store
        self.modalities = modalities
        self.emotions = emotions
        self.length = length
        self.normalisation = normalisation
        self.pin_memory = pin_memory
        self.mean = {m: normalisation[m][0] for m in modalities}
        self.inv_std = {m: (1.0 / normalisation[m][1]).astype(np.float32) for m in modalities}

        def buffer(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, dtype=torch.float32, pin_memory=pin_memory)

        self._inputs = {m: buffer(batch_size, length, store.modalities[m]) for m in modalities}
        self._labels = buffer(batch_size, length, len(emotions))
        self._label_mask = buffer(batch_size, length, len(emotions))
        self._frame_mask = buffer(batch_size, length)

    def copy(self, batch_size: int) -> WindowReader:
        """A reader of the same windows, with buffers of its own for `batch_size` windows."""
        return WindowReader(
            self.store,
            modalities=self.modalities,
            emotions=self.emotions,
            normalisation=self.normalisation,
            length=self.length,
            batch_size=batch_size,
            pin_memory=self.pin_memory,
        )

    def batch(self, windows: list[Window], pad_to: int | None = None) -> Batch:
        """The batch of `windows` (at most batch_size of them); with `pad_to`, followed by
        empty windows up to that many (all zero, masks 0: they change no loss)."""
        count = len(windows)
        inputs = {m: t.numpy() for m, t in self._inputs.items()}
        labels, label_mask = self._labels.numpy(), self._label_mask.numpy()
        frame_mask = self._frame_mask.numpy()
        for b, window in enumerate(windows):
            views = self.store.window(
                window.trial, window.start, self.length, list(self.modalities)
            )
            n = len(views[0])
            for modality, view in zip(self.modalities, views):
                out = inputs[modality][b]
                np.subtract(view, self.mean[modality], out=out[:n])
                np.multiply(out[:n], self.inv_std[modality], out=out[:n])
                out[n:] = 0.0
            for e, emotion in enumerate(self.emotions):
                column = self.store.label_column(window.trial, emotion)[
                    window.start : window.start + n
                ]
                valid = np.isfinite(column)
                label_mask[b, :n, e] = valid
                labels[b, :n, e] = np.where(valid, column, 0.0)
            label_mask[b, n:] = 0.0
            labels[b, n:] = 0.0
            frame_mask[b, :n] = 1.0
            frame_mask[b, n:] = 0.0
        rows = count if pad_to is None else pad_to
        for array in (*inputs.values(), labels, label_mask, frame_mask):
            array[count:rows] = 0.0
        return Batch(
            {m: t[:rows] for m, t in self._inputs.items()},
            self._labels[:rows],
            self._label_mask[:rows],
            self._frame_mask[:rows],
            windows,
        )


class BatchStream:
    """The batches of a sequence of window lists, in order, on `device`.

    With one reader (on the CPU) each batch is filled in that reader's buffers when it is
    asked for and is valid until the next one. With two readers of pinned buffers (on CUDA)
    they take turns: a batch is filled on the CPU while the GPU still runs the steps already
    queued, copied to the device without blocking, and an event recorded after the copy. A
    reader's buffers are filled again only once their previous copy's event has passed, so a
    copy in flight never reads a buffer that is being overwritten (and the CPU stays a couple
    of steps ahead of the GPU, no more). Either way the batches are the same.
    `pad_to` pads every batch to that many windows (see WindowReader.batch).
    """

    def __init__(
        self, readers: list[WindowReader], device: torch.device, pad_to: int | None = None
    ) -> None:
        self.readers = readers
        self.device = device
        self.pad_to = pad_to

    def batches(self, chosen: Iterable[list[Window]]) -> Iterator[Batch]:
        copied: list[torch.cuda.Event | None] = [None] * len(self.readers)
        for index, windows in enumerate(chosen):
            slot = index % len(self.readers)
            if copied[slot] is not None:
                copied[slot].synchronize()  # type: ignore[union-attr]
            batch = self.readers[slot].batch(windows, self.pad_to).to(self.device)
            if self.device.type == "cuda":
                copied[slot] = torch.cuda.Event()
                copied[slot].record()  # type: ignore[union-attr]
            yield batch


def trial_windows(
    store: FeatureStore, trials: tuple[str, ...] | list[str], length: int, hop: int
) -> list[Window]:
    """Every window of every trial, in trial order."""
    return [
        Window(trial, start)
        for trial in trials
        for start in window_starts(store.n_frames(trial), length, hop)
    ]


def has_labels(
    store: FeatureStore, window: Window, length: int, emotions: tuple[str, ...]
) -> bool:
    """Whether a window holds at least two labelled frames of some emotion (it can teach)."""
    for emotion in emotions:
        column = store.label_column(window.trial, emotion)[window.start : window.start + length]
        if np.count_nonzero(np.isfinite(column)) >= 2:
            return True
    return False


def epoch_order(n_windows: int, seed: int, epoch: int) -> list[int]:
    """The shuffled window order of one epoch, a pure function of (seed, epoch).

    Because it depends on nothing else, a resumed job finds the rest of an interrupted epoch
    from the epoch number and the count of batches already done.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_windows, generator=generator).tolist()
