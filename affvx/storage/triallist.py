"""Trial lists: the CSV that names trials, their partition, frame count and frame rate.

The format is that of `va_trials.csv` (the real Aff-Wild2 VA list, shipped with affvx):

    trial,partition,video,frames,fps,labelled_frames
    10-60-1280x720,Train_Set,10-60-1280x720,2501,30.0,2502

`video` and `labelled_frames` are optional.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from affvx.storage import format as fmt
from affvx.storage.errors import InputDataError

REQUIRED_COLUMNS = ("trial", "partition", "frames", "fps")


@dataclass(frozen=True)
class TrialRow:
    """One trial of a trial list."""

    trial: str
    partition: str
    video: str
    frames: int
    fps: float
    labelled_frames: int | None = None


def builtin_trial_list() -> Path:
    """The Aff-Wild2 VA trial list that ships with affvx (561 trials)."""
    return Path(str(resources.files("affvx.storage") / "data" / "va_trials.csv"))


def read_trial_list(path: Path | str) -> list[TrialRow]:
    """Parse and validate a trial list; raise InputDataError naming the line at fault."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as error:
        raise InputDataError(f"{path}: cannot read the trial list ({_reason(error)})") from None
    if not rows:
        raise InputDataError(f"{path}: empty trial list (expected a header line)")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise InputDataError(
            f"{path}: header lacks column(s) {', '.join(missing)}; expected at least "
            f"{','.join(REQUIRED_COLUMNS)}"
        )
    col = {name: header.index(name) for name in header}
    trials: list[TrialRow] = []
    seen: dict[str, int] = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        where = f"{path}:{line_no}"
        if len(row) != len(header):
            raise InputDataError(f"{where}: {len(row)} fields, the header has {len(header)}")
        trial = fmt.check_trial_name(row[col["trial"]].strip(), where)
        if trial in seen:
            raise InputDataError(f"{where}: duplicate trial {trial} (first on line {seen[trial]})")
        seen[trial] = line_no
        partition = row[col["partition"]].strip()
        if partition not in fmt.PARTITIONS:
            raise InputDataError(
                f"{where}: unknown partition {partition!r}; use one of {', '.join(fmt.PARTITIONS)}"
            )
        frames = _positive_int(row[col["frames"]], "frames", where)
        fps = _positive_float(row[col["fps"]], "fps", where)
        labelled = None
        if "labelled_frames" in col and row[col["labelled_frames"]].strip():
            labelled = _non_negative_int(row[col["labelled_frames"]], "labelled_frames", where)
        video = row[col["video"]].strip() if "video" in col else ""
        trials.append(
            TrialRow(
                trial=trial,
                partition=partition,
                video=video or fmt.video_of_trial(trial),
                frames=frames,
                fps=fps,
                labelled_frames=labelled,
            )
        )
    if not trials:
        raise InputDataError(f"{path}: the trial list holds no trials")
    return trials


def _positive_int(text: str, name: str, where: str) -> int:
    value = _non_negative_int(text, name, where)
    if value == 0:
        raise InputDataError(f"{where}: {name} must be > 0")
    return value


def _non_negative_int(text: str, name: str, where: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise InputDataError(f"{where}: {name} {text.strip()!r} is not a whole number") from None
    if value < 0:
        raise InputDataError(f"{where}: {name} must be >= 0, got {value}")
    return value


def _positive_float(text: str, name: str, where: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise InputDataError(f"{where}: {name} {text.strip()!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise InputDataError(f"{where}: {name} must be a positive number, got {text.strip()}")
    return value


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)
