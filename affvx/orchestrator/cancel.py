"""`affvx cancel`: stop every unfinished job of a run; complete jobs are kept."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

from affvx.cluster.registry import backend_class, get_backend
from affvx.orchestrator.ledger import JobFiles, JobState
from affvx.orchestrator.rundir import RunDir
from affvx.orchestrator.status import read_views


def cancel_run(run_path: Path) -> list[str]:
    """Mark every unfinished job cancelled and stop it; return the cancelled job ids.

    A live driver stops its own jobs when it sees the request. Without one, jobs of a backend
    whose jobs die with their client (local) that still run on this host get SIGTERM (they
    checkpoint and exit); jobs that outlive their client (a cluster's) are cancelled with the
    scheduler's own command.
    """
    run = RunDir.open(run_path)
    views = read_views(run, run.jobs)
    targets = [v for v in views.values() if not v.state.is_finished()]
    for view in targets:
        JobFiles(run.job_dir(view.job_id)).mark_cancelled()
    run.request_cancel()
    driver = run.driver()
    backend = backend_class(run.saved_config.backend.name)
    if not backend.capabilities.jobs_outlive_client:
        if not (driver and driver.get("alive")):
            for view in targets:
                if (
                    view.state is JobState.RUNNING
                    and view.node == socket.gethostname()
                    and view.pid
                ):
                    try:
                        os.kill(int(view.pid), signal.SIGTERM)
                    except ProcessLookupError:
                        pass
    else:
        ids = [v.scheduler_id for v in targets if v.scheduler_id]
        if ids:
            settings = run.saved_config.backend
            get_backend(settings.name, settings.options_for()).cancel(ids)
    return [v.job_id for v in targets]
