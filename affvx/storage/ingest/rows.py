"""What the rows of a video-rate feature array stand for: video frames or labelled frames.

LFAN's preprocessing (seed 002) keeps only the frames whose annotation has both values other
than -5: its `npy_data/<trial>/*.npy` hold one row per LABELLED frame, in frame order, and its
`label.npy` holds no -5. Such rows must be put back on their frames (`expand_labelled_rows`);
read as one row per video frame they would shift every frame after the first unlabelled run.

`--rows` decides, for every video-rate stream of a trial that has an annotation with unlabelled
frames (anywhere else both readings are the same):

- `frames`: a row is a video frame (a short stream is padded at its end);
- `labelled`: a row is a labelled frame; every stream must have exactly one per labelled frame;
- `auto` (default): a stream with one row per frame is `frames`, one with one row per labelled
  frame is `labelled`; an `npy_data/` array with any other count, or `npy_data/` arrays of one
  trial (label.npy included) that disagree, are refused, naming `--rows`. A `features/` array
  with another count is read as frames, as documented for that layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from affvx.storage.errors import InputDataError
from affvx.storage.ingest.align import FRAMES, LABELLED

ROW_CHOICES = ("auto", FRAMES, LABELLED)
_LABEL_TOLERANCE = 1e-4


@dataclass(frozen=True)
class StreamRows:
    """One video-rate feature array of a trial: its modality, file, row count and layout."""

    modality: str
    path: Path
    rows: int
    lfan: bool  # from npy_data/, whose arrays LFAN may have cut down to the labelled frames


@dataclass(frozen=True)
class TrialFrames:
    """A trial's frames as its annotation gives them: which ones are labelled (both values)."""

    trial: str
    labels: np.ndarray  # (frames, 2) float32, NaN where the annotation says -5

    @cached_property
    def labelled(self) -> np.ndarray:
        return np.isfinite(self.labels).all(axis=1)

    @property
    def n_frames(self) -> int:
        return int(self.labelled.size)

    @property
    def n_labelled(self) -> int:
        return int(np.count_nonzero(self.labelled))

    def describe(self) -> str:
        return f"trial {self.trial} has {self.n_frames} frames, {self.n_labelled} labelled"


def decide_row_layouts(
    choice: str,
    frames: TrialFrames,
    streams: list[StreamRows],
    label_array: tuple[Path, np.ndarray] | None,
) -> dict[str, str]:
    """{modality: FRAMES | LABELLED} for the video-rate streams of an annotated trial.

    `label_array` is the trial's LFAN label file and its values (NaN where invalid), checked
    against the annotation in whichever layout it has. Raises InputDataError, naming --rows,
    where the layout cannot be decided.
    """
    label_layout = _check_label_array(frames, label_array) if label_array else None
    if frames.n_labelled == frames.n_frames:
        return {s.modality: FRAMES for s in streams}
    if choice == FRAMES:
        return {s.modality: FRAMES for s in streams}
    if choice == LABELLED:
        for stream in streams:
            if stream.rows != frames.n_labelled:
                raise InputDataError(
                    f"{stream.path}: {stream.rows} rows, but --rows labelled needs one per "
                    f"labelled frame ({frames.describe()}); use --rows auto or --rows frames"
                )
        return {s.modality: LABELLED for s in streams}
    layouts = {s.modality: _guess(frames, s) for s in streams}
    _check_lfan_agree(frames, streams, layouts, label_array, label_layout)
    return layouts


def _guess(frames: TrialFrames, stream: StreamRows) -> str:
    if stream.rows == frames.n_labelled:
        return LABELLED
    if stream.rows >= frames.n_frames or not stream.lfan:
        return FRAMES
    raise InputDataError(
        f"{stream.path}: {stream.rows} rows, but {frames.describe()}: cannot tell whether a row "
        "is a video frame (the rest padded at the end) or a labelled frame (LFAN's layout has "
        "exactly one per labelled frame); pass --rows frames to pad it, or fix the array"
    )


def _check_lfan_agree(
    frames: TrialFrames,
    streams: list[StreamRows],
    layouts: dict[str, str],
    label_array: tuple[Path, np.ndarray] | None,
    label_layout: str | None,
) -> None:
    """LFAN writes all arrays of a trial one way: refuse a trial whose arrays disagree."""
    seen = [(s.path, layouts[s.modality]) for s in streams if s.lfan]
    if label_array is not None and label_layout is not None:
        seen.append((label_array[0], label_layout))
    first_path, first_layout = seen[0] if seen else (None, None)
    for path, layout in seen[1:]:
        if layout != first_layout:
            assert first_path is not None
            raise InputDataError(
                f"{path.parent}: {first_path.name} has one row per {_row_word(first_layout)} "
                f"but {path.name} one per {_row_word(layout)} ({frames.describe()}); cannot "
                "tell which the trial's arrays follow: pass --rows frames or --rows labelled"
            )


def _row_word(layout: str | None) -> str:
    return "labelled frame" if layout == LABELLED else "video frame"


def _check_label_array(frames: TrialFrames, label_array: tuple[Path, np.ndarray]) -> str:
    """The layout of an LFAN label file, after checking that it agrees with the annotation.

    A label file that does not match the annotation was made from other annotations, and the
    feature arrays beside it most likely too: their rows cannot be trusted to sit on the
    annotation's frames.
    """
    path, values = label_array
    invalid = ~np.isfinite(values).all(axis=1)
    if len(values) == frames.n_frames and (invalid.any() or frames.n_labelled == frames.n_frames):
        layout, expected = FRAMES, frames.labels
    elif len(values) == frames.n_labelled and not invalid.any():
        layout, expected = LABELLED, frames.labels[frames.labelled]
    else:
        raise InputDataError(
            f"{path}: {len(values)} rows, but {frames.describe()} in the annotation: it was "
            "made from other annotations; ingest it with the annotations it was made from"
        )
    same = np.isclose(values, expected, rtol=0.0, atol=_LABEL_TOLERANCE, equal_nan=True)
    if not same.all():
        row = int(np.flatnonzero(~same.all(axis=1))[0])
        frame = row if layout == FRAMES else int(np.flatnonzero(frames.labelled)[row])
        raise InputDataError(
            f"{path}: row {row} ({values[row, 0]:g}, {values[row, 1]:g}) differs from the "
            f"annotation's frame {frame} ({expected[row, 0]:g}, {expected[row, 1]:g}): it was "
            "made from other annotations; ingest it with the annotations it was made from"
        )
    return layout
