"""Reading one source file: an annotation file, a feature array, a partition list.

Every reader checks what it reads and raises InputDataError with the file (and line) at fault,
so that the user sees one line saying what to fix.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from affvx.storage import format as fmt
from affvx.storage.errors import InputDataError

ANNOTATION_HEADER = "valence,arousal"


def read_annotation(path: Path) -> np.ndarray:
    """An Aff-Wild2 VA annotation file as (frames, 2) float32, NaN where it says -5.

    The first line must be exactly `valence,arousal`; every other line is one video frame,
    `v,a` with values in [-1, 1] or -5 (invalid).
    """
    text = _read_text(path)
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise InputDataError(
            f"{path}: empty annotation file; expected the header '{ANNOTATION_HEADER}' "
            "and one 'valence,arousal' line per frame"
        )
    header = lines[0].strip().replace(" ", "")
    if header != ANNOTATION_HEADER:
        raise InputDataError(
            f"{path}:1: the first line must be the header '{ANNOTATION_HEADER}', found "
            f"{lines[0].strip()[:40]!r}"
        )
    if len(lines) == 1:
        raise InputDataError(f"{path}: no frames after the header")
    values = np.empty((len(lines) - 1, 2), dtype=np.float32)
    for row, line in enumerate(lines[1:]):
        values[row] = _parse_annotation_line(path, row + 2, line)
    values[values == fmt.INVALID_LABEL] = np.nan
    return values


def _parse_annotation_line(path: Path, line_no: int, line: str) -> tuple[float, float]:
    fields = line.split(",")
    if len(fields) != 2:
        raise InputDataError(
            f"{path}:{line_no}: expected 2 values 'valence,arousal', found {len(fields)}"
        )
    parsed = []
    for name, field in zip(fmt.EMOTIONS, fields):
        try:
            value = float(field)
        except ValueError:
            raise InputDataError(
                f"{path}:{line_no}: {name} {field.strip()[:20]!r} is not a number"
            ) from None
        if value != fmt.INVALID_LABEL and not (-1.0 <= value <= 1.0):
            raise InputDataError(
                f"{path}:{line_no}: {name} {field.strip()} is outside [-1, 1] "
                "(only -5 may mark an invalid frame)"
            )
        parsed.append(value)
    return parsed[0], parsed[1]


def read_label_array(path: Path) -> np.ndarray:
    """An LFAN `label.npy` / `continuous_label.npy`: (frames, 2), -5 or NaN where invalid."""
    values = read_feature_file(path, allow_nan=True)
    if values.shape[1] != 2:
        raise InputDataError(
            f"{path}: labels must have 2 columns (valence, arousal), found {values.shape[1]}"
        )
    values = values.astype(np.float32)
    invalid = (values == fmt.INVALID_LABEL) | np.isnan(values)
    outside = ~invalid & ((values < -1.0) | (values > 1.0))
    if outside.any():
        row, col = np.argwhere(outside)[0]
        raise InputDataError(
            f"{path}: row {row}: {fmt.EMOTIONS[col]} {values[row, col]:g} is outside [-1, 1] "
            "(only -5 may mark an invalid frame)"
        )
    values[invalid] = np.nan
    return values


def read_feature_file(path: Path, *, allow_nan: bool = False) -> np.ndarray:
    """A feature array from `.npy` or `.csv`, as (rows, dim); trailing axes are flattened.

    A CSV may start with one header line; every other cell must be a number.
    """
    if path.suffix == ".npy":
        values = _read_npy(path)
    elif path.suffix == ".csv":
        values = _read_csv(path)
    else:
        raise InputDataError(f"{path}: unsupported feature file type (use .npy or .csv)")
    if values.ndim == 0 or values.shape[0] == 0:
        raise InputDataError(f"{path}: holds no rows")
    if values.ndim == 1:
        values = values[:, None]
    values = values.reshape(values.shape[0], -1)
    if values.shape[1] == 0:
        raise InputDataError(f"{path}: rows have no values")
    if values.dtype.kind not in "fiub":
        raise InputDataError(f"{path}: values of type {values.dtype} are not numbers")
    if not allow_nan and values.dtype.kind == "f":
        finite = np.isfinite(values).all(axis=1)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            raise InputDataError(
                f"{path}: row {row} holds NaN or inf; features must be finite "
                "(fill or drop those frames before ingesting)"
            )
    return values


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise InputDataError(f"{path}: cannot read ({_reason(error)})") from None


def _read_csv(path: Path) -> np.ndarray:
    text = _read_text(path)
    first = text.split("\n", 1)[0]
    has_header = not _all_numbers(first.split(","))
    try:
        frame = pd.read_csv(io.StringIO(text), header=0 if has_header else None, dtype=np.float64)
    except (ValueError, pd.errors.ParserError) as error:
        raise InputDataError(f"{path}: not a numeric CSV ({_reason(error)})") from None
    return frame.to_numpy(dtype=np.float32)


def _all_numbers(cells: list[str]) -> bool:
    try:
        [float(cell) for cell in cells]
    except ValueError:
        return False
    return True


def read_partition_pickle(path: Path) -> dict[str, str]:
    """{trial: partition} from LFAN's `dataset_info.pkl`, read without running any code.

    The pickle must hold `{'partition': {'Train_Set' | 'Validation_Set' | 'Test_Set' |
    'Target_Set': {trial: length}}}`; only plain containers and numpy scalars are accepted.
    """
    try:
        data = _SafeUnpickler(io.BytesIO(path.read_bytes())).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise InputDataError(f"{path}: cannot read ({_reason(error)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("partition"), dict):
        raise InputDataError(f"{path}: expected a dict with a 'partition' entry")
    result: dict[str, str] = {}
    for key, trials in data["partition"].items():
        partition = "Test_Set" if key == "Target_Set" else key
        if partition not in fmt.PARTITIONS or not isinstance(trials, dict):
            raise InputDataError(f"{path}: unknown partition {key!r}")
        for trial in trials:
            if trial in result and result[trial] != partition:
                raise InputDataError(
                    f"{path}: trial {trial} is in both {result[trial]} and {partition}"
                )
            result[str(trial)] = partition
    return result


class _SafeUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("collections", "OrderedDict"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise InputDataError(f"{path}: cannot read ({_reason(error)})") from None


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
