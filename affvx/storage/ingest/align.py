"""Aligning a feature stream to a trial's video frames.

Feature row for video frame i of a trial at `fps`, from a stream at `rate_hz`:
round(i / fps * rate_hz), clamped to the last row; a stream that ends early is thereby padded
by repeating its last row. A stream already at the video rate maps row i to frame i.
"""

from __future__ import annotations

import numpy as np

from affvx.storage.errors import InputDataError

# The manifest key of the per-trial alignment report: {trial: {"frames", "labelled_frames",
# "streams": {modality: {"rows", "layout", "padded", "filled"}}}}.
ALIGNMENT_KEY = "alignment"
FRAMES = "frames"  # one row per video frame
LABELLED = "labelled"  # one row per labelled frame (LFAN's npy_data), re-expanded
RATE = "rate"  # rows at the modality's own rate, aligned by time


def stream_record(rows: int, layout: str, padded: int, filled: int) -> dict[str, int | str]:
    """How one feature stream of a trial became its frames, as the manifest records it."""
    return {"rows": int(rows), "layout": layout, "padded": int(padded), "filled": int(filled)}


def align_to_frames(
    values: np.ndarray,
    *,
    n_frames: int,
    fps: float | None,
    rate_hz: float | None,
    max_pad_s: float,
    source: str,
) -> tuple[np.ndarray, int]:
    """Rows of `values` for frames 0..n_frames-1, and how many frames had to be padded.

    Raises InputDataError when the stream covers far fewer frames than the trial has (more
    than `max_pad_s` seconds of padding) or far more rows than its rate implies (a wrong
    rate is the usual cause).
    """
    rows = values.shape[0]
    frame_rate = fps if fps and fps > 0 else 30.0
    if rate_hz is None:
        index = np.arange(n_frames)
        needed = n_frames
        describe = f"{rows} rows (one per video frame)"
    else:
        if not fps:
            raise InputDataError(
                f"{source}: the trial's frame rate is unknown, so features at {rate_hz:g} Hz "
                "cannot be aligned; pass --trial-list with an fps column"
            )
        index = np.rint(np.arange(n_frames) / fps * rate_hz).astype(np.int64)
        needed = int(index[-1]) + 1
        describe = f"{rows} rows at {rate_hz:g} Hz ({rows / rate_hz:.1f} s)"
    padded = int(np.count_nonzero(index >= rows))
    if padded / frame_rate > max_pad_s:
        raise InputDataError(
            f"{source}: {describe} cover far fewer than the trial's {n_frames} frames "
            f"({n_frames / frame_rate:.1f} s); at most {max_pad_s:g} s may be padded "
            "(--max-pad-s)"
        )
    if rows > 2 * needed + 2:
        raise InputDataError(
            f"{source}: {describe} is {rows / needed:.1f}x what {n_frames} frames need; "
            "is the declared rate right (--rate MODALITY=HZ)?"
        )
    np.minimum(index, rows - 1, out=index)
    return np.asarray(values[index]), padded


def expand_labelled_rows(values: np.ndarray, labelled: np.ndarray) -> tuple[np.ndarray, int]:
    """Rows of `values`, one per labelled frame, put back on all frames of their trial.

    `labelled` marks the frames that the rows stand for, in order (len(values) of them). An
    unlabelled frame has no row of its own: it repeats the row of the labelled frame before it
    (the first labelled row for a leading run), the rule for any frame without a feature row,
    and its label stays NaN, so loss and metric never see it. Returns the rows for every frame
    and how many frames were filled.
    """
    labelled = np.asarray(labelled, dtype=bool)
    n_labelled = int(np.count_nonzero(labelled))
    assert values.shape[0] == n_labelled, (values.shape, n_labelled)
    index = np.maximum(np.cumsum(labelled) - 1, 0)
    return np.asarray(values[index]), int(labelled.size - n_labelled)
