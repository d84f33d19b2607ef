"""The run directory: everything about a run, so any machine that mounts it can see, resume
or collect it, and the process that launched it can die at any time.

    RUN/
      experiment.toml    the resolved configuration (written once)
      folds.json         the fold table used (written once, never recomputed)
      plan.parquet       one row per job (written once)
      driver.json        the process following the run, while one does
      cancel.request     touched by `affvx cancel`: a live driver stops the cancelled jobs
      jobs/<job_id>/     one directory per job (affvx.orchestrator.ledger)
      report/            what `affvx collect` writes
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from functools import cached_property
from pathlib import Path
from typing import Any

from affvx.orchestrator.config import (
    ExperimentConfig,
    build_config,
    differences,
    read_config_file,
    to_toml,
)
from affvx.orchestrator.errors import ConfigError
from affvx.orchestrator.folds import FoldTable
from affvx.orchestrator.plan import LEGACY_COLUMNS, PLAN_COLUMNS, PlannedJob, plan_schema
from affvx.storage.atomic import atomic_write_json, atomic_write_text, create_exclusive_bytes

RUNS_DIR = Path("runs")


class RunDir:
    """Paths and the write-once files of one run directory."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.experiment_file = self.path / "experiment.toml"
        self.folds_file = self.path / "folds.json"
        self.plan_file = self.path / "plan.parquet"
        self.driver_file = self.path / "driver.json"
        self.cancel_request_file = self.path / "cancel.request"
        self.jobs_dir = self.path / "jobs"
        self.report_dir = self.path / "report"

    def exists(self) -> bool:
        return self.experiment_file.exists()

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    # -- reading ------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path | str) -> RunDir:
        run = cls(path)
        if not run.path.is_dir():
            raise ConfigError(f"{run.path}: no such run directory")
        if not run.exists() or not run.plan_file.exists():
            raise ConfigError(
                f"{run.path}: not an affvx run (no experiment.toml and plan.parquet); "
                "start one with `affvx launch`"
            )
        return run

    def saved_config_data(self) -> dict[str, Any]:
        return read_config_file(self.experiment_file)

    @cached_property
    def config(self) -> ExperimentConfig:
        return build_config(self.saved_config_data(), source=str(self.experiment_file))

    @cached_property
    def folds(self) -> FoldTable:
        return FoldTable.from_json(json.loads(self.folds_file.read_text()))

    @cached_property
    def jobs(self) -> list[PlannedJob]:
        import pyarrow.parquet as pq

        table = pq.ParquetFile(self.plan_file).read()  # read_table would import pandas
        columns = {
            name: table.column(
                name if name in table.column_names else LEGACY_COLUMNS.get(name, name)
            ).to_pylist()
            for name in PLAN_COLUMNS
        }
        return [
            PlannedJob.from_row({k: columns[k][i] for k in PLAN_COLUMNS})
            for i in range(table.num_rows)
        ]

    def job(self, job_id: str) -> PlannedJob:
        for job in self.jobs:
            if job.job_id == job_id:
                return job
        raise ConfigError(f"{self.path}: no job {job_id!r} in the plan")

    # -- creating -----------------------------------------------------------------------------

    def check_same_experiment(self, config: ExperimentConfig) -> None:
        """Refuse a launch whose experiment settings differ from the run's."""
        saved = build_config(self.saved_config_data(), source=str(self.experiment_file))
        changed = differences(saved.experiment_part(), config.experiment_part())
        if changed:
            raise ConfigError(
                f"{self.path} is a run of another experiment ({'; '.join(changed[:3])}); "
                "start a new run with --run NEW_DIR, or resume it without those flags"
            )

    def create(self, config: ExperimentConfig, folds: FoldTable, jobs: list[PlannedJob]) -> None:
        """Write experiment.toml, folds.json and plan.parquet (once; the run must be new)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        check_writable(self.path)
        self.jobs_dir.mkdir(exist_ok=True)
        create_exclusive_bytes(
            self.folds_file, (json.dumps(folds.to_json(), indent=1) + "\n").encode()
        )
        rows = [job.row() for job in jobs]
        table = pa.table(
            {name: [row[name] for row in rows] for name in PLAN_COLUMNS}, schema=plan_schema()
        )
        tmp = self.path / ".plan.parquet.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, self.plan_file)
        # experiment.toml last: its presence marks a complete run directory
        create_exclusive_bytes(self.experiment_file, to_toml(config).encode())

    # -- the driver ---------------------------------------------------------------------------

    def claim_driver(self, mode: str) -> None:
        """Record this process as the run's driver; refuse if another live one follows it."""
        current = self.driver()
        if current and current.get("alive"):
            raise ConfigError(
                f"{self.path} is already followed by affvx (pid {current['pid']} on "
                f"{current['host']}, since {current['started_utc']}); wait for it or `affvx cancel`"
            )
        atomic_write_json(
            self.driver_file,
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "mode": mode,
                "started_utc": now_iso(),
            },
        )

    def request_cancel(self) -> None:
        """Tell a live driver to look for cancelled jobs (they are marked in their files)."""
        atomic_write_text(
            self.cancel_request_file, f"{now_iso()} {socket.gethostname()} {os.getpid()}\n"
        )

    def cancel_requested_at(self) -> float | None:
        """When the newest cancel request was made (a file time), or None."""
        try:
            return self.cancel_request_file.stat().st_mtime
        except FileNotFoundError:
            return None

    def release_driver(self) -> None:
        current = self.driver()
        if current and current["pid"] == os.getpid() and current["host"] == socket.gethostname():
            self.driver_file.unlink(missing_ok=True)

    def driver(self) -> dict[str, Any] | None:
        """The recorded driver, with `alive` (known only for drivers on this host)."""
        try:
            data = json.loads(self.driver_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        data["alive"] = data.get("host") != socket.gethostname() or pid_alive(int(data["pid"]))
        return data


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_writable(path: Path) -> None:
    """Create `path` if needed and prove it can be written; ConfigError otherwise."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ConfigError(
            f"{path}: cannot write the run directory ({error.strerror or error})"
        ) from None


def new_run_path(base: Path = RUNS_DIR) -> Path:
    """runs/<UTC timestamp>, unique even for two launches in the same second."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = base / stamp
    n = 1
    while path.exists():
        n += 1
        path = base / f"{stamp}-{n}"
    return path


def newest_run(base: Path = RUNS_DIR) -> Path:
    """The most recently started run under `base` (ConfigError if there is none)."""
    candidates = (
        [p for p in base.glob("*") if (p / "experiment.toml").exists()] if base.is_dir() else []
    )
    if not candidates:
        raise ConfigError(f"no run under {base}/: start one with `affvx launch`, or give RUN")
    return max(candidates, key=lambda p: ((p / "experiment.toml").stat().st_mtime, p.name))
