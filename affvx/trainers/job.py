"""`run_job`: one training job in one job directory, resumable at any moment.

    JOB_DIR/
      checkpoint.pt          latest checkpoint (+ checkpoint.prev.pt, the one before)
      metrics.csv            one row per finished epoch
      predictions.parquet    per frame: validation trials of the fold and every test trial
      result.json            written last, never overwritten: its presence means complete
      failure.json           why the last attempt failed (absent once the job completes)

On SIGTERM, SIGUSR2 or SIGINT the job finishes its current batch, checkpoints and returns
REQUEUE (exit status 75 in a worker process); with `time_limit_s` it does the same by itself
before the limit, counting how long the next step and a checkpoint take.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
import os
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from affvx.protocol import (
    EXIT_COMPLETE,
    EXIT_REQUEUE,
    GPU_MEMORY_FRACTION,
    STOP_SIGNALS,
    JobEnvironment,
)
from affvx.storage.atomic import (
    atomic_file,
    atomic_write_json,
    atomic_write_text,
    create_exclusive_bytes,
)
from affvx.storage.errors import StorageError
from affvx.storage.reader import FeatureStore
from affvx.trainers.checkpoint import load_checkpoint, save_checkpoint
from affvx.trainers.errors import TrainerInputError
from affvx.trainers.evaluate import partition_ccc
from affvx.trainers.loop import StopRequested, Trainer, TrainingObserver
from affvx.trainers.spec import TrainSpec

RESULT_FILE = "result.json"
FAILURE_FILE = "failure.json"
METRICS_FILE = "metrics.csv"
PREDICTIONS_FILE = "predictions.parquet"


class JobOutcome(str, Enum):
    COMPLETE = "complete"
    REQUEUE = "requeue"


@dataclass
class JobResult:
    """How an attempt ended: COMPLETE with the result, or REQUEUE after a checkpoint, with
    what stopped it (`stop_reason`: "time limit", or the signal's name)."""

    outcome: JobOutcome
    result: dict[str, Any] | None = None
    stop_reason: str = ""

    @property
    def exit_code(self) -> int:
        return EXIT_COMPLETE if self.outcome is JobOutcome.COMPLETE else EXIT_REQUEUE


class StopPolicy:
    """Decides when a job must checkpoint and stop: after a stop signal, or before its time
    limit runs out (`must_stop(upcoming_s)` is True when the next `upcoming_s` seconds of work
    would end past the limit, less a small safety margin)."""

    def __init__(self, time_limit_s: float | None, margin_s: float = 2.0) -> None:
        self.deadline = (
            None if time_limit_s is None else time.monotonic() + time_limit_s - margin_s
        )
        self.signal_received: int | None = None
        self.stop_reason = ""  # what stopped the job first: "time limit" or a signal's name

    def must_stop(self, upcoming_s: float) -> bool:
        if self.stop_reason:
            return True
        if self.deadline is not None and time.monotonic() + upcoming_s > self.deadline:
            self.stop_reason = "time limit"
        return bool(self.stop_reason)

    @contextlib.contextmanager
    def catching_signals(self) -> Iterator[None]:
        """Turn stop signals into a flag for the duration (main thread only).

        Schedulers start jobs with these signals blocked; one that arrived during start-up is
        delivered here, once the handler is in place, and stops the job at its first check.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

        def handler(signum: int, frame: Any) -> None:
            self.signal_received = signum
            self.stop_reason = self.stop_reason or signal.Signals(signum).name

        for sig in STOP_SIGNALS:
            signal.signal(sig, handler)
        previous_mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
            for sig, old in previous.items():
                signal.signal(sig, old)


def run_job(
    spec: TrainSpec | dict[str, Any],
    job_dir: Path | str,
    *,
    observer: TrainingObserver | None = None,
    provenance: dict[str, Any] | None = None,
) -> JobResult:
    """Run or resume one job in `job_dir`; a complete job is never run again.

    `provenance` (who ran it: attempt, scheduler id, node) is stored in result.json as is.
    Raises the job's error after recording it in failure.json (TrainerInputError or
    StorageError for bad settings or data, including DivergenceError for a non-finite loss).
    """
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    existing = read_result(job_dir)
    if existing is not None:
        return JobResult(JobOutcome.COMPLETE, existing)
    policy = StopPolicy(spec.get("time_limit_s") if isinstance(spec, dict) else spec.time_limit_s)
    with policy.catching_signals():
        try:
            spec = spec if isinstance(spec, TrainSpec) else TrainSpec.from_dict(spec)
            result = _train(
                spec, job_dir, policy, observer or TrainingObserver(), provenance or {}
            )
        except StopRequested:
            return JobResult(JobOutcome.REQUEUE, stop_reason=policy.stop_reason)
        except BaseException as error:
            if not isinstance(error, (KeyboardInterrupt, SystemExit)):
                record_failure(job_dir, error)
            raise
    (job_dir / FAILURE_FILE).unlink(missing_ok=True)
    return JobResult(JobOutcome.COMPLETE, result)


def _train(
    spec: TrainSpec,
    job_dir: Path,
    policy: StopPolicy,
    observer: TrainingObserver,
    provenance: dict[str, Any],
) -> dict[str, Any]:
    device = choose_device(spec.device)
    threads = configure_torch(spec, device)
    store = FeatureStore(spec.store)
    config_hash = spec.config_hash(store.fingerprint)
    trainer = Trainer(
        spec,
        store,
        device=device,
        config_hash=config_hash,
        save=lambda state: _save(job_dir, state),
        must_stop=policy.must_stop,
        observer=observer,
    )
    state = load_checkpoint(job_dir, config_hash)
    if state is not None:
        trainer.load_state_dict(state)
    trainer.fit(resumed=state is not None)
    observer.on_phase("predicting")
    validation = trainer.validation_predictions()
    test_trials = (
        spec.test_trials if spec.test_trials is not None else tuple(store.trials_in("Test_Set"))
    )
    test = trainer.predict(test_trials)
    write_predictions(
        job_dir / PREDICTIONS_FILE, store, spec.emotions, {"Validation": validation, "Test": test}
    )
    val_ccc = partition_ccc(store, validation, spec.emotions)
    progress = trainer.progress
    result = {
        "fold": spec.fold,
        "emotions": list(spec.emotions),
        "modalities": list(spec.modalities),
        "model": spec.model.name,
        "seed": spec.seed,
        "protocol": spec.protocol,
        "best_epoch": progress.best_epoch,
        "epochs_run": progress.epoch,
        "val_ccc": val_ccc,
        "val_ccc_mean": float(np.mean(list(val_ccc.values()))),
        "train_seconds": round(sum(row["seconds"] for row in progress.history), 3),
        "n_parameters": sum(p.numel() for p in trainer.model.parameters()),
        "config_hash": config_hash,
        "store": str(store.path),
        "store_fingerprint": store.fingerprint,
        "device": device.type,
        "threads": threads,
        "finished_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "provenance": provenance,
    }
    create_exclusive_bytes(job_dir / RESULT_FILE, (json.dumps(result, indent=2) + "\n").encode())
    return read_result(job_dir) or result


def _save(job_dir: Path, state: dict[str, Any]) -> None:
    save_checkpoint(job_dir, state)
    write_metrics(job_dir / METRICS_FILE, state["progress"]["history"])


def read_result(job_dir: Path) -> dict[str, Any] | None:
    """The job's result, or None while it is not complete."""
    try:
        return json.loads((job_dir / RESULT_FILE).read_text())
    except FileNotFoundError:
        return None


def record_failure(job_dir: Path, error: BaseException) -> None:
    """Write why the attempt failed where `affvx status` looks for it."""
    atomic_write_json(
        job_dir / FAILURE_FILE,
        {
            "reason": " ".join(str(error).split()) or type(error).__name__,
            "kind": type(error).__name__,
            "user_error": isinstance(error, (TrainerInputError, StorageError)),
            "traceback": traceback.format_exception(error)[-12:],
            "time_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )


def write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """metrics.csv from the epoch history (floats in their exact shortest form)."""
    if not history:
        return
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(history[0]), lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
    atomic_write_text(path, out.getvalue())


def write_predictions(
    path: Path,
    store: FeatureStore,
    emotions: tuple[str, ...],
    partitions: dict[str, dict[str, np.ndarray]],
) -> None:
    """predictions.parquet: trial, partition, frame, then per emotion the prediction and label."""
    columns: dict[str, list[np.ndarray]] = {"trial": [], "partition": [], "frame": []}
    for emotion in emotions:
        columns[emotion] = []
        columns[f"{emotion}_label"] = []
    for partition, predictions in partitions.items():
        for trial, values in predictions.items():
            n = len(values)
            columns["trial"].append(np.full(n, trial, dtype=object))
            columns["partition"].append(np.full(n, partition, dtype=object))
            columns["frame"].append(np.arange(n, dtype=np.int32))
            for e, emotion in enumerate(emotions):
                columns[emotion].append(values[:, e])
                columns[f"{emotion}_label"].append(np.asarray(store.label_column(trial, emotion)))
    table = pa.table(
        {
            "trial": pa.array(
                np.concatenate(columns.pop("trial")), pa.string()
            ).dictionary_encode(),
            "partition": pa.array(
                np.concatenate(columns.pop("partition")), pa.string()
            ).dictionary_encode(),
            **{name: np.concatenate(parts) for name, parts in columns.items()},
        }
    )
    with atomic_file(path, "wb") as handle:
        pq.write_table(table, handle)


def warm_up() -> None:
    """Import now what a job imports lazily on its way -- torch's compiler stack, which the
    first optimizer pulls in (over a second), and pandas, which pyarrow pulls in -- for a
    process that forks jobs (affvx.cluster.warm). Runs no tensor operation, so it starts no
    thread pool, initialises no device and draws no random number."""
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    np.asarray(pa.array([0.0]))  # pyarrow's first conversion to numpy imports pandas


def choose_device(requested: str) -> torch.device:
    """cpu, or cuda when asked for (or `auto`) and a CUDA device is really usable."""
    usable = torch.cuda.is_available() and torch.cuda.device_count() > 0
    if requested == "cuda" and not usable:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)")
        raise TrainerInputError(
            f"--device cuda: no usable CUDA device (CUDA_VISIBLE_DEVICES={visible}); use --device cpu"
        )
    return torch.device("cuda" if requested in ("cuda", "auto") and usable else "cpu")


def job_cpu_count() -> int:
    """CPUs this job may use: what the scheduler granted (AFFVX_CPUS, set by every backend),
    else this process's CPU affinity."""
    return JobEnvironment.from_environ().cpus or len(os.sched_getaffinity(0))


def configure_torch(spec: TrainSpec, device: torch.device) -> int:
    """Threads, seeds and determinism for this job; returns the thread count."""
    threads = spec.threads or job_cpu_count()
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only allowed before the first parallel op
        torch.set_num_interop_threads(1)
    if device.type == "cuda":
        memory_share = os.environ.get(GPU_MEMORY_FRACTION)
        if memory_share:  # N jobs share this GPU: each keeps to its part of the memory
            torch.cuda.set_per_process_memory_fraction(float(memory_share), device)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    np.random.seed(spec.seed)
    torch.manual_seed(spec.seed)
    return threads
