"""The run directory: everything about a run, so any machine that mounts it can see, resume
or collect it, and the process that launched it can die at any time.

    RUN/
      experiment.toml    the resolved configuration (written once)
      store.json         where the feature store was last found, relative to the run and
                         absolute, and its fingerprint (so a run moved with its store finds it)
      folds.json         the fold table used (written once, never recomputed)
      plan.parquet       one row per job (written once)
      driver.json        the process following the run, while one does (and how to reach its scheduler)
      cancel.request     touched by `affvx cancel`: a live driver stops the cancelled jobs
      jobs/<job_id>/     one directory per job (affvx.orchestrator.ledger)
      tuning/            a tuning run's (affvx tune): journal.log, Optuna's journal (unless
                         experiment.toml names a database), and candidates/<cell>-cand<N>.json,
                         one per trial asked: its parameters and fold jobs (written before
                         they are submitted, never changed)
      report/            what `affvx collect` writes
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import socket
from dataclasses import dataclass
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
from affvx.storage.format import read_fingerprint

RUNS_DIR = Path("runs")


@dataclass(frozen=True)
class CandidateRecord:
    """One tuning candidate (Optuna trial `candidate` of the cell's study `study`): its
    parameters and its jobs, in the order they were submitted (folds shuffled per trial)."""

    study: str
    emotion: str
    modalities: tuple[str, ...]
    candidate: int
    params: dict[str, Any]
    jobs: list[PlannedJob]

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "emotion": self.emotion,
            "modalities": list(self.modalities),
            "candidate": self.candidate,
            "params": self.params,
            "jobs": [job.row() for job in self.jobs],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CandidateRecord:
        params = dict(data["params"])
        jobs = [
            dataclasses.replace(PlannedJob.from_row(row), params=tuple(sorted(params.items())))
            for row in data["jobs"]
        ]
        return cls(
            study=data["study"],
            emotion=data["emotion"],
            modalities=tuple(data["modalities"]),
            candidate=int(data["candidate"]),
            params=params,
            jobs=jobs,
        )


class RunDir:
    """Paths and the write-once files of one run directory.

    A run is portable: moved together with its feature store (to another directory, a shared
    file system, another machine) it finds the store again through store.json, and refuses a
    store whose fingerprint is not the one it was made with (`config`, `locate_store`).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.experiment_file = self.path / "experiment.toml"
        self.store_file = self.path / "store.json"
        self.folds_file = self.path / "folds.json"
        self.plan_file = self.path / "plan.parquet"
        self.driver_file = self.path / "driver.json"
        self.cancel_request_file = self.path / "cancel.request"
        self.jobs_dir = self.path / "jobs"
        self.report_dir = self.path / "report"
        self.tuning_dir = self.path / "tuning"
        self.candidates_dir = self.tuning_dir / "candidates"

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
    def saved_config(self) -> ExperimentConfig:
        """The configuration as experiment.toml has it, the store at the path recorded when
        the run was made (enough for what never opens the store: status, cancel)."""
        return build_config(self.saved_config_data(), source=str(self.experiment_file))

    @cached_property
    def config(self) -> ExperimentConfig:
        """The configuration with the store where it is now (`locate_store`): what the
        workers and collect open. ConfigError when the run's store is nowhere to be found."""
        return self.with_store(self.saved_config, self.locate_store())

    def with_store(self, config: ExperimentConfig, store: Path) -> ExperimentConfig:
        """`config` opening the store at `store`, still naming the path the run recorded."""
        recorded = self.saved_config.store
        return dataclasses.replace(
            config, store=str(store), recorded_store=None if str(store) == recorded else recorded
        )

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
        planned = [
            PlannedJob.from_row({k: columns[k][i] for k in PLAN_COLUMNS})
            for i in range(table.num_rows)
        ]
        return planned + [job for record in self.candidates() for job in record.jobs]

    # -- tuning candidates --------------------------------------------------------------------

    def candidate_file(self, emotion: str, modalities: tuple[str, ...], candidate: int) -> Path:
        return self.candidates_dir / f"{emotion}-{'+'.join(modalities)}-cand{candidate}.json"

    def write_candidate(self, record: CandidateRecord) -> None:
        """Record a tuning candidate (once: an existing record is kept as it is)."""
        path = self.candidate_file(record.emotion, record.modalities, record.candidate)
        if path.exists():
            return
        self.candidates_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, record.to_json())

    def candidate(
        self, emotion: str, modalities: tuple[str, ...], candidate: int
    ) -> CandidateRecord | None:
        path = self.candidate_file(emotion, modalities, candidate)
        try:
            return CandidateRecord.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            return None

    def candidates(self) -> list[CandidateRecord]:
        """Every tuning candidate recorded, by cell and number."""
        if not self.candidates_dir.is_dir():
            return []
        records = [
            CandidateRecord.from_json(json.loads(path.read_text()))
            for path in self.candidates_dir.glob("*.json")
        ]
        return sorted(records, key=lambda r: (r.emotion, r.modalities, r.candidate))

    def job(self, job_id: str) -> PlannedJob:
        for job in self.jobs:
            if job.job_id == job_id:
                return job
        raise ConfigError(f"{self.path}: no job {job_id!r} in the plan")

    # -- the feature store --------------------------------------------------------------------

    def store_record(self) -> dict[str, Any]:
        """store.json, or {} for a run made before affvx wrote one."""
        try:
            return json.loads(self.store_file.read_text())
        except FileNotFoundError:
            return {}
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(
                f"{self.store_file}: damaged ({error}); delete it, and the run looks for its "
                "store at the path in experiment.toml"
            ) from None

    def record_store(self, store: Path | str) -> None:
        """Record in store.json (when it changed) where the run's store is: relative to the
        run directory, absolute, and the store's fingerprint."""
        absolute = Path(store).resolve()
        record = {
            "relative": os.path.relpath(absolute, self.path.resolve()),
            "absolute": str(absolute),
            "fingerprint": read_fingerprint(absolute),
        }
        if record != self.store_record():
            atomic_write_json(self.store_file, record)

    def locate_store(self, given: Path | str | None = None) -> Path:
        """Where the run's feature store is now: `given` (launch --store) if it holds the
        store, else the first recorded place that does -- relative to the run first, so that
        a run moved together with its store finds it, then the absolute paths.

        A store "holds" when its fingerprint is the recorded one. A run made before
        store.json has no fingerprint: its one path is returned unchecked (the job hashes
        that launch compares still cover the store's content).
        """
        record = self.store_record()
        expected = record.get("fingerprint")
        places = [Path(given).resolve()] if given is not None else self._store_places(record)
        if expected is None:
            return places[0]
        for place in places:
            if read_fingerprint(place) == expected:
                return place
        raise ConfigError(self._store_not_found(record, places, given is not None))

    def _store_places(self, record: dict[str, Any]) -> list[Path]:
        places = []
        if record.get("relative"):
            places.append((self.path / record["relative"]).resolve())
        places += [Path(p) for p in (record.get("absolute"), self.saved_config.store) if p]
        return list(dict.fromkeys(places))

    def _store_not_found(self, record: dict[str, Any], places: list[Path], given: bool) -> str:
        expected = record["fingerprint"]
        found = [(place, fp) for place in places if (fp := read_fingerprint(place))]
        if given:
            there = f"a store of fingerprint {found[0][1]}" if found else "no feature store there"
            return (
                f"--store {places[0]}: {there}, but run {self.path} was made with the store of "
                f"fingerprint {expected}: pass that one"
            )
        shown = [str(place) for place in places]
        if record.get("relative"):
            shown[0] = f"{record['relative']} from the run ({places[0]})"
        others = "; ".join(f"fingerprint {fp} at {place}" for place, fp in found)
        return (
            f"run {self.path} expects its feature store (fingerprint {expected}) at "
            f"{' or '.join(shown)}: found {'another store, ' + others if found else 'none'}; "
            "move the store back, or pass --store PATH to `affvx launch --resume`"
        )

    # -- creating -----------------------------------------------------------------------------

    def check_same_experiment(self, config: ExperimentConfig) -> None:
        """Refuse a launch whose experiment settings differ from the run's."""
        changed = differences(self.saved_config.experiment_part(), config.experiment_part())
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
        self.record_store(config.store)
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

    def record_scheduler_reach(self, reach: dict[str, str]) -> None:
        """Add to this process's driver record how another process asks the scheduler about
        its jobs (`Backend.reach`), for `affvx status`."""
        if not reach:
            return
        current = self.driver()
        mine = (
            current and current["pid"] == os.getpid() and current["host"] == socket.gethostname()
        )
        if not mine or current.get("scheduler") == reach:
            return
        current.pop("alive", None)
        atomic_write_json(self.driver_file, {**current, "scheduler": reach})

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
