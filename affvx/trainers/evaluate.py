"""Whole-trial inference: overlapping windows, averaged per frame; CCC over a partition."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch

from affvx.storage.reader import FeatureStore
from affvx.trainers.ccc import ccc
from affvx.trainers.windows import WindowReader, trial_windows


class Interrupted(Exception):
    """Raised inside inference when the job was asked to stop."""


def predict_trials(
    model: torch.nn.Module,
    reader: WindowReader,
    trials: list[str] | tuple[str, ...],
    *,
    hop: int,
    batch_size: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,  # type: ignore[type-arg]
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, np.ndarray]:
    """{trial: (n_frames, emotions)}: every frame's prediction is the mean over its windows."""
    store: FeatureStore = reader.store
    windows = trial_windows(store, trials, reader.length, hop)
    n_out = len(reader.emotions)
    sums = {t: np.zeros((store.n_frames(t), n_out), dtype=np.float64) for t in trials}
    counts = {t: np.zeros(store.n_frames(t), dtype=np.int64) for t in trials}
    model.eval()
    with torch.no_grad():
        for first in range(0, len(windows), batch_size):
            if should_stop():
                raise Interrupted
            chunk = windows[first : first + batch_size]
            batch = reader.batch(chunk).to(device)
            with autocast():
                output = model(batch.inputs)
            output = output.float().cpu().numpy()
            for b, window in enumerate(chunk):
                n = min(reader.length, store.n_frames(window.trial) - window.start)
                sums[window.trial][window.start : window.start + n] += output[b, :n]
                counts[window.trial][window.start : window.start + n] += 1
    return {t: (sums[t] / counts[t][:, None]).astype(np.float32) for t in trials}


def partition_ccc(
    store: FeatureStore, predictions: dict[str, np.ndarray], emotions: tuple[str, ...]
) -> dict[str, float]:
    """CCC per emotion over all valid frames of the predicted trials, concatenated."""
    result = {}
    for e, emotion in enumerate(emotions):
        predicted = np.concatenate([predictions[t][:, e] for t in predictions])
        labels = np.concatenate([store.label_column(t, emotion) for t in predictions])
        result[emotion] = ccc(predicted, labels)
    return result
