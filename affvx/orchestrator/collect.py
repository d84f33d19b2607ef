"""`affvx collect`: a run's results as CCC tables, plots and ABAW submission files.

    RUN/report/
      folds.csv                  one row per job and emotion: val_ccc, best_epoch, ...
      summary.csv, summary.md    per emotion x modality set: n_folds, ccc_mean, ccc_sd,
                                 ccc_official (fold 0 under abaw2)
      ccc_by_fold.png            validation CCC of every fold, per emotion and modality set
      predictions.png            predictions against labels for a few validation trials
      submission/VA_Set/<trial>.txt
                                 every test trial: the fold ensemble of the best modality set
                                 per emotion, header `valence,arousal`, one line per frame

A tuning run's report is the same over the best trial of each study (its fold jobs), plus
trials.csv, best_params.toml and Optuna's plots (affvx.orchestrator.tune_report).

With several seeds, a fold's CCC is the mean over its seeds. The sd is over folds (ddof 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from affvx.orchestrator.errors import ConfigError
from affvx.orchestrator.ledger import JobFiles
from affvx.orchestrator.plan import PlannedJob
from affvx.orchestrator.rundir import RunDir
from affvx.storage.atomic import atomic_file, atomic_write_text

ENSEMBLES = ("mean", "ccc-centering")
EMOTIONS = ("valence", "arousal")


@dataclass
class CollectReport:
    """What collect wrote and what it could not include."""

    report_dir: Path
    summary: list[dict[str, Any]]
    missing: list[str]
    submission_trials: int = 0
    submission_sources: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def collect(
    run_path: Path,
    *,
    ensemble: str = "mean",
    smooth: dict[str, int] | None = None,
    on_step: Callable[[str], None] = lambda step: None,
) -> CollectReport:
    if ensemble not in ENSEMBLES:
        raise ConfigError(f"unknown ensemble {ensemble!r}: choose from {', '.join(ENSEMBLES)}")
    for emotion, width in (smooth or {}).items():
        if emotion not in EMOTIONS or width < 1:
            raise ConfigError(
                f"--smooth {emotion}={width}: give a width >= 1 for valence and/or arousal"
            )
    run = RunDir.open(run_path)
    jobs, notes = run.jobs, []
    if run.saved_config.tune is not None:  # a tuning run: the report of each best trial
        from affvx.orchestrator.tune_report import collect_tuning

        on_step("reading the studies")
        jobs, notes = collect_tuning(run)
    on_step("reading results")
    results = {job.job_id: JobFiles(run.job_dir(job.job_id)).result() for job in jobs}
    missing = [job.job_id for job in jobs if results[job.job_id] is None]
    if len(missing) == len(jobs):
        raise ConfigError(
            f"{run.path}: no job of this run has finished yet, so there is nothing to collect; "
            f"see where they are with `affvx status {run.path}`"
        )
    rows = fold_rows(jobs, results, oracle_lookup(run))
    summary = summarise(rows, run.config.protocol)
    report_dir = run.report_dir
    report_dir.mkdir(exist_ok=True)
    on_step("writing tables")
    write_csv(report_dir / "folds.csv", rows, FOLD_COLUMNS)
    write_csv(report_dir / "summary.csv", summary, SUMMARY_COLUMNS)
    atomic_write_text(report_dir / "summary.md", summary_markdown(run, summary, missing))
    report = CollectReport(report_dir=report_dir, summary=summary, missing=missing, notes=notes)
    if rows:
        on_step("plotting")
        plot_ccc_by_fold(report_dir / "ccc_by_fold.png", rows)
        plot_predictions(report_dir / "predictions.png", run, jobs, results, summary)
    on_step("writing the submission")
    write_submission(report, run, jobs, results, summary, ensemble, smooth or {})
    return report


# -- tables ------------------------------------------------------------------------------------

FOLD_COLUMNS = (
    "job_id",
    "fold",
    "emotion",
    "target",
    "modalities",
    "model",
    "seed",
    "val_ccc",
    "best_epoch",
    "oracle_ccc",
)
SUMMARY_COLUMNS = (
    "emotion",
    "target",
    "modalities",
    "n_folds",
    "n_seeds",
    "ccc_mean",
    "ccc_sd",
    "ccc_official",
    "oracle_mean",
    "ratio_to_oracle",
)

OracleLookup = Callable[[PlannedJob, str], float]


def oracle_lookup(run: RunDir) -> OracleLookup | None:
    """For a synthetic store: the best achievable CCC of a job's validation trials."""
    from affvx.storage.reader import FeatureStore

    store = FeatureStore(run.config.store)
    if (
        store.oracle_ccc(store.trial_names[:1], [next(iter(store.modalities))], EMOTIONS[0])
        is None
    ):
        return None
    folds = run.folds
    return lambda job, emotion: store.oracle_ccc(
        list(folds.fold(job.fold).validation), list(job.modalities), emotion
    )


def fold_rows(
    jobs: list[PlannedJob],
    results: dict[str, dict[str, Any] | None],
    oracle: OracleLookup | None = None,
) -> list[dict[str, Any]]:
    rows = []
    for job in jobs:
        result = results[job.job_id]
        if result is None:
            continue
        for emotion, value in result["val_ccc"].items():
            rows.append(
                {
                    "job_id": job.job_id,
                    "fold": job.fold,
                    "emotion": emotion,
                    "target": job.emotion,
                    "modalities": job.modality_set,
                    "model": job.model,
                    "seed": job.seed,
                    "val_ccc": value,
                    "best_epoch": result["best_epoch"],
                    "oracle_ccc": oracle(job, emotion) if oracle else float("nan"),
                }
            )
    return rows


def summarise(rows: list[dict[str, Any]], protocol: str) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str], dict[int, list[float]]] = {}
    oracles: dict[tuple[str, str, str], dict[int, float]] = {}
    for row in rows:
        key = (row["emotion"], row["target"], row["modalities"])
        groups.setdefault(key, {}).setdefault(row["fold"], []).append(row["val_ccc"])
        oracles.setdefault(key, {})[row["fold"]] = row.get("oracle_ccc", float("nan"))
    summary = []
    for (emotion, target, modalities), by_fold in groups.items():
        fold_means = [float(np.mean(values)) for _, values in sorted(by_fold.items())]
        oracle_mean = float(np.mean(list(oracles[(emotion, target, modalities)].values())))
        summary.append(
            {
                "emotion": emotion,
                "target": target,
                "modalities": modalities,
                "n_folds": len(fold_means),
                "n_seeds": max(len(v) for v in by_fold.values()),
                "ccc_mean": float(np.mean(fold_means)),
                "ccc_sd": float(np.std(fold_means, ddof=1))
                if len(fold_means) > 1
                else float("nan"),
                "ccc_official": float(np.mean(by_fold[0]))
                if protocol == "abaw2" and 0 in by_fold
                else float("nan"),
                "oracle_mean": oracle_mean,
                "ratio_to_oracle": float(np.mean(fold_means)) / oracle_mean,
            }
        )
    return summary


def write_csv(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    lines = [",".join(columns)]
    for row in rows:
        lines.append(",".join(_cell(row[c]) for c in columns))
    atomic_write_text(path, "\n".join(lines) + "\n")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6f}"
    return str(value)


def summary_markdown(run: RunDir, summary: list[dict[str, Any]], missing: list[str]) -> str:
    config = run.config
    lines = [
        f"# {run.path.name}: {config.model.name}, {config.protocol}, {config.folds} folds",
        "",
        "| emotion | modalities | folds | CCC mean ± sd | official (fold 0) | oracle | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        label = row["emotion"] + (" (multi-task)" if row["target"] == "both" else "")
        sd = "" if math.isnan(row["ccc_sd"]) else f" ± {row['ccc_sd']:.3f}"
        official = "" if math.isnan(row["ccc_official"]) else f"{row['ccc_official']:.3f}"
        oracle = "" if math.isnan(row["oracle_mean"]) else f"{row['oracle_mean']:.3f}"
        ratio = "" if math.isnan(row["ratio_to_oracle"]) else f"{row['ratio_to_oracle']:.2f}"
        lines.append(
            f"| {label} | {row['modalities']} | {row['n_folds']} | {row['ccc_mean']:.3f}{sd} | {official} | {oracle} | {ratio} |"
        )
    if any(not math.isnan(row["oracle_mean"]) for row in summary):
        lines += [
            "",
            "oracle: the best achievable CCC on the same validation trials (synthetic store).",
        ]
    if missing:
        lines += [
            "",
            f"Missing: {len(missing)} job(s) without a result: "
            + ", ".join(missing[:20])
            + (" ..." if len(missing) > 20 else ""),
        ]
    return "\n".join(lines) + "\n"


# -- plots -------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ccc_by_fold(path: Path, rows: list[dict[str, Any]]) -> None:
    plt = _pyplot()
    emotions = sorted({row["emotion"] for row in rows}, key=lambda e: EMOTIONS.index(e))
    figure, axes = plt.subplots(1, len(emotions), figsize=(5.5 * len(emotions), 4), squeeze=False)
    for axis, emotion in zip(axes[0], emotions):
        series: dict[str, dict[int, list[float]]] = {}
        for row in rows:
            if row["emotion"] == emotion:
                label = row["modalities"] + (" (multi-task)" if row["target"] == "both" else "")
                series.setdefault(label, {}).setdefault(row["fold"], []).append(row["val_ccc"])
        for label, by_fold in series.items():
            folds = sorted(by_fold)
            means = [np.mean(by_fold[f]) for f in folds]
            line = axis.plot(folds, means, marker="o", label=f"{label} ({np.mean(means):.3f})")[0]
            axis.axhline(np.mean(means), color=line.get_color(), linestyle=":", linewidth=1)
        axis.set_title(f"{emotion}: validation CCC per fold")
        axis.set_xlabel("fold")
        axis.set_ylabel("CCC")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    _save_figure(figure, path)


def plot_predictions(
    path: Path,
    run: RunDir,
    jobs: list[PlannedJob],
    results: dict[str, dict[str, Any] | None],
    summary: list[dict[str, Any]],
    n_trials: int = 3,
) -> None:
    """Predictions against labels for a few validation trials of the best modality sets."""
    import pyarrow.parquet as pq

    plt = _pyplot()
    panels = []
    for emotion in EMOTIONS:
        best = _best_group(summary, emotion)
        if best is None:
            continue
        job = next(
            (
                j
                for j in jobs
                if results[j.job_id]
                and j.modality_set == best["modalities"]
                and j.emotion == best["target"]
            ),
            None,
        )
        if job is None:
            continue
        table = pq.read_table(
            run.job_dir(job.job_id) / "predictions.parquet",
            filters=[("partition", "=", "Validation")],
        )
        frame = table.to_pandas()
        for trial in list(dict.fromkeys(frame["trial"]))[:n_trials]:
            part = frame[frame["trial"] == trial]
            panels.append(
                (
                    f"{emotion}, {job.modality_set}, fold {job.fold}: {trial}",
                    part[emotion_label(emotion)],
                    part[emotion],
                )
            )
    if not panels:
        return
    figure, axes = plt.subplots(len(panels), 1, figsize=(10, 2.2 * len(panels)), squeeze=False)
    for axis, (title, label, prediction) in zip(axes[:, 0], panels):
        axis.plot(np.asarray(label), color="black", linewidth=1, label="label")
        axis.plot(np.asarray(prediction), color="tab:orange", linewidth=1, label="prediction")
        axis.set_title(title, fontsize=9)
        axis.set_ylim(-1.05, 1.05)
        axis.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel("frame")
    figure.tight_layout()
    _save_figure(figure, path)


def emotion_label(emotion: str) -> str:
    return f"{emotion}_label"


def _save_figure(figure: Any, path: Path) -> None:
    with atomic_file(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
    _pyplot().close(figure)


def _best_group(summary: list[dict[str, Any]], emotion: str) -> dict[str, Any] | None:
    candidates = [row for row in summary if row["emotion"] == emotion]
    return max(candidates, key=lambda row: row["ccc_mean"]) if candidates else None


# -- submission --------------------------------------------------------------------------------


def write_submission(
    report: CollectReport,
    run: RunDir,
    jobs: list[PlannedJob],
    results: dict[str, dict[str, Any] | None],
    summary: list[dict[str, Any]],
    ensemble: str,
    smooth: dict[str, int],
) -> None:
    """submission/VA_Set/<trial>.txt for every test trial, if both emotions have results."""
    import pyarrow.parquet as pq

    from affvx.storage.reader import FeatureStore

    per_emotion: dict[str, dict[str, list[np.ndarray]]] = {}
    for emotion in EMOTIONS:
        best = _best_group(summary, emotion)
        if best is None:
            report.notes.append(f"no submission: no complete job predicts {emotion}")
            return
        chosen = [
            j
            for j in jobs
            if results[j.job_id]
            and j.modality_set == best["modalities"]
            and j.emotion == best["target"]
        ]
        report.submission_sources[emotion] = (
            f"{best['modalities']} ({len(chosen)} jobs, {ensemble})"
        )
        series: dict[str, list[np.ndarray]] = {}
        for job in chosen:
            table = pq.read_table(
                run.job_dir(job.job_id) / "predictions.parquet",
                columns=["trial", emotion],
                filters=[("partition", "=", "Test")],
            )
            trials = table.column("trial").to_numpy()
            values = table.column(emotion).to_numpy()
            starts = np.flatnonzero(np.r_[True, trials[1:] != trials[:-1]])
            for start, end in zip(starts, np.r_[starts[1:], len(trials)]):
                series.setdefault(str(trials[start]), []).append(values[start:end])
        per_emotion[emotion] = series
    store = FeatureStore(run.config.store)
    test_trials = store.trials_in("Test_Set")
    folder = report.report_dir / "submission" / "VA_Set"
    folder.mkdir(parents=True, exist_ok=True)
    combine = mean_ensemble if ensemble == "mean" else ccc_centering
    for trial in test_trials:
        n_frames = store.n_frames(trial)
        columns = []
        for emotion in EMOTIONS:
            predictions = per_emotion[emotion].get(trial)
            if not predictions:
                raise ConfigError(
                    f"{run.path}: no test predictions for trial {trial}; the jobs predate the store?"
                )
            values = combine(np.stack(predictions))
            values = moving_average(values, smooth.get(emotion, 1))
            columns.append(np.clip(values, -1.0, 1.0))
        if len(columns[0]) != n_frames:
            raise ConfigError(f"{trial}: {len(columns[0])} predictions for {n_frames} frames")
        text = "valence,arousal\n" + "".join(f"{v:.3f},{a:.3f}\n" for v, a in zip(*columns))
        atomic_write_text(folder / f"{trial}.txt", text)
    report.submission_trials = len(test_trials)


def mean_ensemble(predictions: np.ndarray) -> np.ndarray:
    """The plain mean of (members, frames) predictions."""
    return predictions.mean(axis=0)


def ccc_centering(predictions: np.ndarray) -> np.ndarray:
    """AVEC 2016 / seed 002 CCC centring of (members, frames) predictions of one trial.

    Each member's agreement is its mean CCC with the others; every member is shifted to the
    agreement-weighted mean of the members' means, then the members are averaged.
    """
    k = len(predictions)
    if k == 1:
        return predictions[0]
    means = predictions.mean(axis=1)
    variances = predictions.var(axis=1)
    agreement = np.zeros(k)
    for i in range(k):
        for j in range(k):
            if i != j:
                covariance = np.mean((predictions[i] - means[i]) * (predictions[j] - means[j]))
                denominator = variances[i] + variances[j] + (means[i] - means[j]) ** 2
                agreement[i] += 2 * covariance / denominator if denominator > 0 else 0.0
    agreement /= k - 1
    weights = np.clip(agreement, 0, None)
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(k, 1 / k)
    target = float(weights @ means)
    return (predictions - means[:, None] + target).mean(axis=0)


def moving_average(values: np.ndarray, width: int) -> np.ndarray:
    """A centred moving average of `width` frames; the ends use the frames they have."""
    if width <= 1 or len(values) < 2:
        return values
    kernel = np.ones(width)
    sums = np.convolve(values, kernel, mode="same")
    counts = np.convolve(np.ones_like(values), kernel, mode="same")
    return sums / counts
