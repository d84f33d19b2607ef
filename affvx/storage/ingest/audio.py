"""Real audio features with openSMILE: eGeMAPS low-level descriptors and MFCCs.

Both are computed at openSMILE's 10 ms hop (100 rows per second) and later aligned to the
video frame rate like any other feature stream. `_left` / `_right` trials share the audio of
their video.

- egemaps: the 23 eGeMAPS v01a LLDs (the set seed 002 extracted with SMILExtract).
- mfcc: 13 cepstral coefficients (0-12) with deltas and accelerations, 39 values, from
  `mfcc39.conf` next to this file (25 ms Hamming frames, 26 mel bands).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from affvx.storage.errors import InputDataError, MissingDependencyError

AUDIO_RATE_HZ = 100.0
MFCC_CONFIG = Path(__file__).with_name("mfcc39.conf")


@dataclass(frozen=True)
class AudioFeature:
    """One openSMILE feature stream: its width and how openSMILE is configured for it."""

    name: str
    dim: int
    description: str


AUDIO_FEATURES = {
    "egemaps": AudioFeature("egemaps", 23, "openSMILE eGeMAPSv01a LLD, 10 ms"),
    "mfcc": AudioFeature("mfcc", 39, "openSMILE MFCC 0-12 + delta + accel, 10 ms"),
}


def check_audio_features(names: list[str] | tuple[str, ...]) -> list[AudioFeature]:
    """The AudioFeature of every name; an unknown name raises InputDataError."""
    unknown = [n for n in names if n not in AUDIO_FEATURES]
    if unknown:
        raise InputDataError(
            f"unknown audio feature {unknown[0]!r}: choose from {', '.join(AUDIO_FEATURES)}"
        )
    return [AUDIO_FEATURES[n] for n in names]


def find_wav(wav_dir: Path, video: str) -> Path:
    """`wav_dir/<video>.wav`, or `wav_dir/<partition>/<video>.wav` as seed 002 lays it out."""
    candidates = [wav_dir / f"{video}.wav", *sorted(wav_dir.glob(f"*/{video}.wav"))]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise InputDataError(
        f"{wav_dir}: no audio for video {video}; expected {wav_dir / (video + '.wav')}"
    )


class AudioExtractor:
    """Computes openSMILE features for wav files; remembers the last few videos.

    The cache matters because `_left` and `_right` trials of one video come one after the
    other and share the same audio.
    """

    def __init__(self, features: list[AudioFeature], cache_size: int = 4) -> None:
        self.features = features
        self._smiles = {f.name: _make_smile(f.name) for f in features}
        self._cache: dict[Path, dict[str, np.ndarray]] = {}
        self._cache_size = cache_size

    def extract(self, wav: Path) -> dict[str, np.ndarray]:
        """{feature: (rows at 100 Hz, dim) float32} for one wav file."""
        if wav not in self._cache:
            if len(self._cache) >= self._cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[wav] = {name: _run(smile, wav) for name, smile in self._smiles.items()}
        return self._cache[wav]


def _make_smile(name: str) -> Any:
    try:
        import opensmile
    except ImportError:
        raise MissingDependencyError(
            "audio features need the opensmile package: pip install 'affvx[audio]'"
        ) from None
    if name == "egemaps":
        # v01a on purpose: its 23 LLDs are what seed 002 extracted (v02 has 25).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is deprecated", category=UserWarning)
            return opensmile.Smile(
                feature_set=opensmile.FeatureSet.eGeMAPSv01a,
                feature_level=opensmile.FeatureLevel.LowLevelDescriptors,
            )
    return opensmile.Smile(feature_set=str(MFCC_CONFIG), feature_level="lld")


def _run(smile: Any, wav: Path) -> np.ndarray:
    try:
        frame = smile.process_file(str(wav))
    except Exception as error:  # opensmile/audiofile raise many kinds for unreadable audio
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputDataError(f"{wav}: cannot extract audio features ({reason})") from None
    values = frame.to_numpy(dtype=np.float32)
    if values.shape[0] == 0:
        raise InputDataError(f"{wav}: too short for audio features (no 10 ms frame)")
    return np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
