"""Ray's state API, read over HTTP: what a Ray cluster says of one driver's tasks.

`affvx status` runs in a process that did not submit the tasks and must stay fast, so it
does not import ray (3 s): it asks the dashboard's REST endpoint (`/api/v0/tasks`, what
`ray list tasks` reads) for the tasks of the driver's Ray job, with the cluster's token when
one is at hand (Ray 2.5x clusters want one).
"""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from pathlib import Path

from affvx.cluster.base import JobStatus, SchedulerState
from affvx.cluster.errors import ClusterError

QUERY_TIMEOUT_S = 3.0
MAX_TASKS = 10_000  # the most Ray's API server answers with
_RUNNING = {"RUNNING", "RUNNING_IN_RAY_GET", "RUNNING_IN_RAY_WAIT", "GETTING_AND_PINNING_ARGS"}


def ray_auth_token() -> str | None:
    """The cluster's token as Ray's own clients find it: RAY_AUTH_TOKEN, the file
    RAY_AUTH_TOKEN_PATH names, or ~/.ray/auth_token; None when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        return token_file.read_text().strip() or None
    except OSError:
        return None


def task_states(dashboard_url: str, ray_job_id: str) -> dict[str, SchedulerState]:
    """Each task of Ray job `ray_job_id` by task id (hex), as of its newest attempt.

    Raises ClusterError when the dashboard does not answer."""
    rows = _task_rows(dashboard_url, ray_job_id)
    newest: dict[str, dict[str, object]] = {}
    for row in rows:
        task_id = str(row.get("task_id", ""))
        if task_id not in newest or _attempt(row) >= _attempt(newest[task_id]):
            newest[task_id] = row
    return {task_id: _state(row) for task_id, row in newest.items()}


def _task_rows(dashboard_url: str, ray_job_id: str) -> list[dict[str, object]]:
    base = dashboard_url if "://" in dashboard_url else f"http://{dashboard_url}"
    query = urllib.parse.urlencode(
        {
            "limit": MAX_TASKS,
            "filter_keys": "job_id",
            "filter_predicates": "=",
            "filter_values": ray_job_id,
            "timeout": int(QUERY_TIMEOUT_S),
        }
    )
    request = urllib.request.Request(f"{base}/api/v0/tasks?{query}")
    token = ray_auth_token()
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=QUERY_TIMEOUT_S) as response:
            answer = json.load(response)
        return list(answer["data"]["result"]["result"])
    except (OSError, ValueError, KeyError, TypeError) as error:  # URLError is an OSError
        raise ClusterError(f"Ray's state API at {base} did not answer: {error}") from None


def _attempt(row: dict[str, object]) -> int:
    return int(str(row.get("attempt_number") or 0))


def _state(row: dict[str, object]) -> SchedulerState:
    ray_state = str(row.get("state") or "")
    attempt = _attempt(row)
    reason = f"ray: {ray_state}" + (f" (retry {attempt})" if attempt else "")
    if ray_state in _RUNNING:
        return SchedulerState(JobStatus.RUNNING, reason=reason)
    if ray_state == "FINISHED":
        return SchedulerState(JobStatus.EXITED, reason=reason)
    if ray_state == "FAILED":
        error = str(row.get("error_type") or "")
        return SchedulerState(JobStatus.UNKNOWN, reason=f"{reason} {error}".strip())
    return SchedulerState(JobStatus.PENDING, reason=reason)  # PENDING_*, SUBMITTED_TO_WORKER
