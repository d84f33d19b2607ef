"""A synthetic Aff-Wild2-shaped corpus whose best achievable CCC is known.

How the data are made (per trial, at the trial's frame rate):

- valence and arousal come from hidden smooth Gaussian processes z (unit variance, a Gaussian
  kernel of `LATENT_SMOOTHING_S` seconds): label = tanh(KAPPA * z + offset), rounded to 3
  decimals like the real annotation files; runs of frames are invalid (NaN), as many as the
  trial list's labelled-frame count implies.
- every modality m sees each emotion e through y = z_e + NOISE_SD[m][e] * eps, where eps is
  an independent process with the *same* kernel as z. Signal and noise then have proportional
  spectra, so no temporal filter can separate them: the best estimate of z from any set of
  modalities is a per-frame weighted average (precision weighting), and its quality is known.
- a modality's features are a fixed random linear mix of its views y and a few nuisance
  processes (unrelated to the labels), at the modality's width.

Visual sees valence best, the audio modalities see arousal best, and since independent views
add precision, fusion beats every single modality. The oracle for a set of modalities is the
posterior mean of the label given their views, calibrated to the label's mean and variance;
its CCC on every partition (test included: the generator knows the hidden test labels) goes
into the manifest.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from affvx.storage import format as fmt
from affvx.storage.errors import InputDataError
from affvx.storage.oracle import N_MOMENTS, ORACLE_FILE, ccc_from_moments, column_name, moments
from affvx.storage.triallist import TrialRow, builtin_trial_list, read_trial_list
from affvx.storage.writer import ModalitySpec, StoreWriter

GENERATOR_VERSION = 2
LATENT_SMOOTHING_S = 1.0
NUISANCE_SMOOTHING_S = 0.4
KAPPA = 0.9
LABEL_OFFSET = {"valence": 0.1, "arousal": 0.25}
MIN_FRAMES = 32
DEFAULT_TRIALS = 60
DEFAULT_SCALE = 0.1

AUDIO_DIMS = {"mfcc": 39, "vggish": 128, "egemaps": 23}
NOISE_SD = {
    "visual": {"valence": 0.8, "arousal": 1.5},
    "mfcc": {"valence": 1.2, "arousal": 0.8},
    "vggish": {"valence": 1.0, "arousal": 0.7},
    "egemaps": {"valence": 1.5, "arousal": 0.9},
}
NUISANCE_CHANNELS = {"visual": 6, "mfcc": 4, "vggish": 4, "egemaps": 3}


@dataclass(frozen=True)
class SynthConfig:
    """What `affvx data synth` makes: which trials, how long, which seed, how wide `visual` is.

    `n_trials` None means every trial of `trial_list`, or DEFAULT_TRIALS of the built-in
    list; `scale` None means 1.0 with a trial list and DEFAULT_SCALE for the built-in one.
    """

    trial_list: Path | None = None
    n_trials: int | None = None
    scale: float | None = None
    seed: int = 0
    visual_dim: int = 128

    def resolved_scale(self) -> float:
        if self.scale is not None:
            return self.scale
        return 1.0 if self.trial_list is not None else DEFAULT_SCALE

    def modality_dims(self) -> dict[str, int]:
        return {"visual": self.visual_dim, **AUDIO_DIMS}


def make_synthetic_store(
    path: Path | str,
    config: SynthConfig,
    *,
    on_trial: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a synthetic store at `path` (which must not exist) and return its path."""
    trials = select_trials(config)
    dims = config.modality_dims()
    generator = _Generator(config.seed, dims)
    oracle = _OracleAccumulator(list(dims))
    specs = [ModalitySpec(name, dim, source="synthetic") for name, dim in dims.items()]
    provenance = {
        "generator": "affvx.storage.synth",
        "generator_version": GENERATOR_VERSION,
        "seed": config.seed,
        "trial_list": str(config.trial_list) if config.trial_list else "built-in va_trials.csv",
        "n_trials": len(trials),
        "scale": config.resolved_scale(),
        "noise_sd": NOISE_SD,
        "latent_smoothing_s": LATENT_SMOOTHING_S,
    }
    with StoreWriter(path, specs, provenance=provenance) as writer:
        for done, row in enumerate(trials, start=1):
            sample = generator.trial(row, config.resolved_scale())
            oracle.add(row.trial, row.partition, sample)
            labels = sample.labels.copy()
            if row.partition == "Test_Set":
                labels[:] = np.nan
            writer.add_trial(
                trial=row.trial,
                partition=row.partition,
                video=row.video,
                fps=row.fps,
                labels=labels,
                features=sample.features,
            )
            if on_trial:
                on_trial(done, len(trials))
        writer.extra_manifest = oracle.manifest_entries()
        writer.add_table(ORACLE_FILE, oracle.table())
    return Path(path)


def select_trials(config: SynthConfig) -> list[TrialRow]:
    """The trials of the corpus: the whole list, or a seeded sample stratified by partition."""
    source = config.trial_list or builtin_trial_list()
    rows = read_trial_list(source)
    n_wanted = config.n_trials
    if n_wanted is None and config.trial_list is None:
        n_wanted = DEFAULT_TRIALS
    scale = config.resolved_scale()
    if not (0 < scale <= 1):
        raise InputDataError(f"--scale {scale}: must be in (0, 1]")
    if config.visual_dim < 1:
        raise InputDataError(f"--visual-dim {config.visual_dim}: must be >= 1")
    if n_wanted is None or n_wanted == len(rows):
        return _store_order(rows)
    if not (7 <= n_wanted <= len(rows)):
        raise InputDataError(
            f"--trials {n_wanted}: choose between 7 and {len(rows)} (the trials in {source})"
        )
    rng = np.random.default_rng(config.seed)
    chosen: list[TrialRow] = []
    for partition, share in _partition_shares(rows, n_wanted).items():
        pool = [r for r in rows if r.partition == partition]
        picks = rng.choice(len(pool), size=min(share, len(pool)), replace=False)
        chosen.extend(pool[i] for i in sorted(picks))
    return _store_order(chosen)


def _store_order(rows: list[TrialRow]) -> list[TrialRow]:
    """Partition by partition, trials in the order of their annotation file names."""
    return sorted(rows, key=lambda r: (fmt.PARTITIONS.index(r.partition), r.trial + ".txt"))


def _partition_shares(rows: list[TrialRow], n_wanted: int) -> dict[str, int]:
    counts = {p: sum(r.partition == p for r in rows) for p in fmt.PARTITIONS}
    minimum = {"Train_Set": 5, "Validation_Set": 1, "Test_Set": 1}
    shares = {
        p: min(counts[p], max(minimum[p], round(n_wanted * counts[p] / len(rows))))
        for p in fmt.PARTITIONS
    }
    shares["Train_Set"] = min(
        counts["Train_Set"], n_wanted - shares["Validation_Set"] - shares["Test_Set"]
    )
    return shares


@dataclass
class _TrialSample:
    labels: np.ndarray  # (n, 2) float32, NaN where invalid, hidden labels kept for test
    views: dict[str, np.ndarray]  # modality -> (n, 2) noisy views of z (valence, arousal)
    features: dict[str, np.ndarray]


class _Generator:
    """Per-corpus fixed mixing matrices; per-trial randomness from (seed, trial name)."""

    def __init__(self, seed: int, dims: dict[str, int]) -> None:
        self.seed = seed
        rng = np.random.default_rng([seed, 0x5EED])
        self.mixing: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, dim in dims.items():
            n_in = 2 + NUISANCE_CHANNELS[name]
            matrix = rng.standard_normal((n_in, dim)) / np.sqrt(n_in)
            offset = 0.5 * rng.standard_normal(dim)
            self.mixing[name] = (matrix, offset)

    def trial(self, row: TrialRow, scale: float) -> _TrialSample:
        rng = np.random.default_rng([self.seed, zlib.crc32(row.trial.encode())])
        n = max(MIN_FRAMES, round(row.frames * scale))
        latent_sigma = LATENT_SMOOTHING_S * row.fps
        z = smooth_noise(rng, n, 2, latent_sigma)
        labels = np.empty((n, 2), dtype=np.float32)
        for i, emotion in enumerate(fmt.EMOTIONS):
            labels[:, i] = np.round(np.tanh(KAPPA * z[:, i] + LABEL_OFFSET[emotion]), 3)
        labels[_invalid_mask(rng, n, row)] = np.nan
        views: dict[str, np.ndarray] = {}
        features: dict[str, np.ndarray] = {}
        for name, (matrix, offset) in self.mixing.items():
            noise_sd = np.array([NOISE_SD[name][e] for e in fmt.EMOTIONS])
            views[name] = z + noise_sd * smooth_noise(rng, n, 2, latent_sigma)
            nuisance = smooth_noise(
                rng, n, NUISANCE_CHANNELS[name], NUISANCE_SMOOTHING_S * row.fps
            )
            mixed = np.concatenate([views[name], nuisance], axis=1) @ matrix + offset
            features[name] = mixed.astype(np.float32)
        return _TrialSample(labels=labels, views=views, features=features)


def smooth_noise(
    rng: np.random.Generator, n: int, channels: int, sigma_frames: float
) -> np.ndarray:
    """`channels` independent stationary Gaussian processes of unit variance, length `n`.

    White noise filtered by a Gaussian kernel of standard deviation `sigma_frames` (with
    enough margin that the ends are as smooth as the middle).
    """
    sigma = max(float(sigma_frames), 0.5)
    half = int(np.ceil(4 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    kernel /= np.sqrt(np.sum(kernel**2))
    total = n + 2 * half
    size = 1 << int(np.ceil(np.log2(total + len(kernel))))
    white = rng.standard_normal((total, channels))
    spectrum = np.fft.rfft(white, size, axis=0) * np.fft.rfft(kernel, size)[:, None]
    filtered = np.fft.irfft(spectrum, size, axis=0)
    return filtered[2 * half : 2 * half + n]


def _invalid_mask(rng: np.random.Generator, n: int, row: TrialRow) -> np.ndarray:
    """Frames without a valid label, in one to three contiguous runs."""
    mask = np.zeros(n, dtype=bool)
    if row.labelled_frames is None:
        invalid_fraction = 0.02
    else:
        invalid_fraction = 1.0 - min(row.labelled_frames, row.frames) / row.frames
    n_invalid = int(round(invalid_fraction * n))
    if n_invalid == 0:
        return mask
    n_invalid = min(n_invalid, n - 1)  # keep at least one labelled frame
    runs = int(rng.integers(1, 4))
    lengths = np.diff(
        np.sort(np.concatenate([[0, n_invalid], rng.integers(0, n_invalid + 1, runs - 1)]))
    )
    for length in lengths:
        if length == 0:
            continue
        start = int(rng.integers(0, n - length + 1))
        mask[start : start + length] = True
    shortfall = n_invalid - int(mask.sum())
    if shortfall > 0:
        mask[np.flatnonzero(~mask)[:shortfall]] = True
    return mask


class _OracleAccumulator:
    """Oracle moments per trial, modality subset and emotion (summed per partition too)."""

    def __init__(self, modalities: list[str]) -> None:
        self.modalities = modalities
        self.subsets = [
            combo
            for size in range(1, len(modalities) + 1)
            for combo in itertools.combinations(modalities, size)
        ]
        self.predictors = {
            (subset, emotion): _OraclePredictor(
                precision=sum(NOISE_SD[m][emotion] ** -2 for m in subset),
                offset=LABEL_OFFSET[emotion],
            )
            for subset in self.subsets
            for emotion in fmt.EMOTIONS
        }
        self.sums: dict[tuple[str, tuple[str, ...], str], np.ndarray] = {}
        self.rows: dict[str, list[Any]] = {"trial": []}

    def add(self, trial: str, partition: str, sample: _TrialSample) -> None:
        self.rows["trial"].append(trial)
        for (subset, emotion), predictor in self.predictors.items():
            e = fmt.EMOTIONS.index(emotion)
            label = sample.labels[:, e].astype(np.float64)
            valid = np.isfinite(label)
            weighted = sum(sample.views[m][:, e] / NOISE_SD[m][emotion] ** 2 for m in subset)
            trial_moments = moments(predictor(weighted[valid]), label[valid])
            self.rows.setdefault(column_name(emotion, subset), []).append(trial_moments)
            key = (partition, subset, emotion)
            self.sums[key] = self.sums.get(key, 0) + trial_moments

    def table(self) -> pa.Table:
        columns = {"trial": pa.array(self.rows["trial"], pa.string())}
        for name, values in self.rows.items():
            if name != "trial":
                columns[name] = pa.array(
                    [list(v) for v in values], pa.list_(pa.float64(), N_MOMENTS)
                )
        return pa.table(columns)

    def manifest_entries(self) -> dict[str, Any]:
        by_modalities: dict[str, dict[str, dict[str, float]]] = {}
        for subset in self.subsets:
            entry = by_modalities.setdefault("+".join(subset), {})
            for partition in fmt.PARTITIONS:
                for emotion in fmt.EMOTIONS:
                    total = self.sums.get((partition, subset, emotion))
                    if total is not None:
                        ccc = round(ccc_from_moments(total), 4)
                        entry.setdefault(partition, {})[emotion] = ccc
        return {
            "oracle_ccc": by_modalities["+".join(self.modalities)],
            "oracle_ccc_by_modalities": by_modalities,
        }


class _OraclePredictor:
    """Posterior-mean label given a precision-weighted sum of views, calibrated for CCC.

    With z ~ N(0, 1) and views y_m = z + s_m * eps_m, the posterior of z given
    w = sum(y_m / s_m^2) is N(w / (1 + P), 1 / (1 + P)) with P = sum(1 / s_m^2). The label's
    posterior mean g(w) is computed by Gauss-Hermite quadrature on a grid; the result is then
    mapped affinely to the label's population mean and standard deviation, which maximises
    CCC for a given correlation.
    """

    def __init__(self, precision: float, offset: float) -> None:
        self.precision = precision
        nodes, weights = np.polynomial.hermite_e.hermegauss(60)
        weights = weights / weights.sum()
        post_sd = np.sqrt(1.0 / (1.0 + precision))
        self.grid = np.linspace(-8.0, 8.0, 4001)
        self.values = np.tanh(KAPPA * (self.grid[:, None] + post_sd * nodes) + offset) @ weights
        label = np.tanh(KAPPA * nodes + offset)
        label_mean = float(label @ weights)
        label_sd = float(np.sqrt((label - label_mean) ** 2 @ weights))
        m_sd = np.sqrt(precision / (1.0 + precision))
        g = np.interp(m_sd * nodes, self.grid, self.values)
        g_mean = float(g @ weights)
        g_sd = float(np.sqrt((g - g_mean) ** 2 @ weights))
        self.scale = label_sd / g_sd
        self.shift = label_mean - self.scale * g_mean

    def __call__(self, weighted_views: np.ndarray) -> np.ndarray:
        posterior_mean = weighted_views / (1.0 + self.precision)
        return self.shift + self.scale * np.interp(posterior_mean, self.grid, self.values)


def oracle_for(
    manifest: dict[str, Any], modalities: list[str]
) -> dict[str, dict[str, float]] | None:
    """The oracle CCCs {partition: {emotion: ccc}} of a modality set, if the store has them."""
    table = manifest.get("oracle_ccc_by_modalities")
    if not table:
        return None
    order = list(manifest["modalities"])
    key = "+".join(sorted(modalities, key=lambda m: order.index(m) if m in order else len(order)))
    return table.get(key)
