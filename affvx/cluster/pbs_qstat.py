"""PBS's formats: job state from `qstat -x -f -F json` (parsed defensively) and `qstat -f`
text; walltimes, directives and array ids as qsub and qstat write them.

PBS Pro / OpenPBS print JSON that is not always valid: values are typed by whether `strtod`
swallows them (a job named `nan` prints a bare nan), strings can hold escapes JSON does not
know, a key can appear twice. `parse_json` reads what is valid (the last of duplicate keys
wins); anything else raises QstatFormatError, and the caller asks again for the text form,
which `parse_text` reads (`Job Id: <id>` then `    name = value` lines, long values wrapped
onto lines that start with a tab). Both return {job id: {attribute: value}} with nested
resources flattened to `Resource_List.walltime`, and values as strings.

`query` asks qstat about many jobs at once; `job_state` turns one job's attributes into a
SchedulerState (the meaning of PBS's states, exit statuses and comments is in docs/pbs.md).
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from affvx.cluster.base import JobStatus, SchedulerState
from affvx.cluster.errors import ClusterError


class QstatFormatError(ValueError):
    """qstat printed something that is not the JSON it should be."""


Attributes = dict[str, str]

_ACTIVE = {
    "Q": JobStatus.PENDING,
    "H": JobStatus.PENDING,
    "W": JobStatus.PENDING,
    "T": JobStatus.PENDING,
    "M": JobStatus.PENDING,
    "R": JobStatus.RUNNING,
    "E": JobStatus.RUNNING,  # exiting: not ended until F
    "B": JobStatus.RUNNING,  # an array with a subjob begun
    "S": JobStatus.RUNNING,  # suspended (preempted by suspension): it will resume
    "U": JobStatus.RUNNING,
}
_ENDED = ("F", "X", "C")  # finished, subjob finished, Torque's completed

EXIT_WALLTIME = -29  # OpenPBS >= 22.05: JOB_EXEC_KILL_WALLTIME, whatever the script returned
EXIT_TORQUE_WALLTIME = -11  # Torque: JOB_EXEC_OVERLIMIT_WT
SIGNAL_OFFSET = 256  # Exit_status 256 + N: the job's top shell died of signal N


_NOT_THERE = (  # qstat's complaints about ids, not about itself
    "Unknown Job Id",
    "Job has finished",
    "is not configured to maintain job history",
    "illegally formed",
)


def query(ids: list[str], flavour: str = "pbspro") -> dict[str, Attributes] | None:
    """Every job of `ids` that qstat knows (with the subjobs of their arrays), by id; None if
    qstat did not answer (the server is unreachable: ask again later).

    One call for all: arrays are asked for as a whole (`12[].server` with -t). PBS Pro's
    history (-x) and JSON first; the text form when the JSON is invalid or incomplete;
    Torque has only the text form, and no history.
    """
    targets = sorted({array_parent(i) for i in ids})
    history = [] if flavour == "torque" else ["-x"]
    if flavour != "torque":
        done = run(["qstat", *history, "-f", "-F", "json", "-t", *targets])
        if not _answered(done):
            return None
        try:
            jobs = parse_json(done.stdout)
        except QstatFormatError:
            jobs = None  # a strange job name, an escape JSON does not know: ask for text
        if jobs is not None and _covers(jobs, targets, done.stderr):
            return jobs
    unwrapped = [] if flavour == "torque" else ["-w"]
    done = run(["qstat", *history, "-f", *unwrapped, "-t", *targets])
    return parse_text(done.stdout) if _answered(done) else None


def array_parent(job_id: str) -> str:
    """`12[3].server` -> `12[].server` (one query brings every subjob); other ids as they are."""
    head, bracket, rest = job_id.partition("[")
    return f"{head}[]{rest.partition(']')[2]}" if bracket else job_id


def _covers(jobs: dict[str, Attributes], targets: list[str], errors: str) -> bool:
    """Every target is in the answer or named in qstat's complaints. (OpenPBS 23.06's JSON
    holds only the first of several ids; its text form holds them all.)"""
    return all(target in jobs or target in errors for target in targets)


def _answered(done: subprocess.CompletedProcess[str]) -> bool:
    """qstat answered: success, or errors that only say some ids are not (or no longer) known."""
    if done.returncode == 0:
        return True
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    return bool(errors) and all(any(n in line for n in _NOT_THERE) for line in errors)


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    """A PBS command's outcome; a command that hangs counts as failed, never raises."""
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise ClusterError(f"{command[0]} is not on PATH: is this a PBS login node?") from None
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(command, 255, "", f"{command[0]} did not answer")


def parse_json(text: str) -> dict[str, Attributes]:
    """`qstat -f -F json` output -> {job id: attributes}; QstatFormatError if invalid."""
    if not text.strip():
        return {}
    try:
        document = json.loads(text, object_pairs_hook=_last_key_wins, strict=False)
    except ValueError as error:
        raise QstatFormatError(str(error)) from None
    if not isinstance(document, dict):
        raise QstatFormatError("not a JSON object")
    jobs = document.get("Jobs", {})  # absent when no job matched
    if not isinstance(jobs, dict):
        raise QstatFormatError("'Jobs' is not an object")
    return {str(job_id): _flatten(fields) for job_id, fields in jobs.items()}


def parse_text(text: str) -> dict[str, Attributes]:
    """`qstat -f` (or Torque's) text output -> {job id: attributes}."""
    jobs: dict[str, Attributes] = {}
    current: Attributes | None = None
    last_key = ""
    for line in text.splitlines():
        if line.startswith("Job Id:"):
            current = jobs.setdefault(line.split(":", 1)[1].strip(), {})
            last_key = ""
        elif current is None or not line.strip():
            continue
        elif line.startswith("\t") and last_key:
            current[last_key] += line[1:]
        elif " = " in line:
            key, _, value = line.strip().partition(" = ")
            last_key = key.strip()
            current[last_key] = value
    return jobs


def _last_key_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return dict(pairs)


def _flatten(fields: Any, prefix: str = "") -> Attributes:
    if not isinstance(fields, dict):
        return {}
    flat: Attributes = {}
    for key, value in fields.items():
        if isinstance(value, dict) and key != "Variable_List":
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif not isinstance(value, dict):
            flat[f"{prefix}{key}"] = _as_text(value)
    return flat


def _as_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def job_state(attributes: Attributes) -> SchedulerState:
    """What one job's qstat attributes say, in the backend contract's terms.

    An ended job is CANCELLED when it was deleted (comment `... terminated`, or no exit
    status at all: deleted before it ran), TIMEOUT when it was killed at its walltime, else
    EXITED with its exit status (negative: killed by that signal).
    """
    state = attributes.get("job_state", "").strip()
    node = attributes.get("exec_host", "").split("/")[0]
    comment = attributes.get("comment", "")
    if state in _ACTIVE:
        return SchedulerState(_ACTIVE[state], node=node, reason=comment)
    if state not in _ENDED:
        return SchedulerState(JobStatus.UNKNOWN, reason=f"job_state {state!r}")
    code = _exit_status(attributes)
    runtime_s = _duration_s(attributes.get("resources_used.walltime", ""))
    if "terminated" in comment or code is None:
        status = JobStatus.CANCELLED
    elif code in (EXIT_WALLTIME, EXIT_TORQUE_WALLTIME) or "exceeded resource walltime" in comment:
        status = JobStatus.TIMEOUT
    else:
        status = JobStatus.EXITED
    reason = f"{comment} (PBS exit status {code})" if code is not None and code < 0 else comment
    return SchedulerState(
        status, exit_code=_as_exit_code(code), node=node, reason=reason, runtime_s=runtime_s
    )


def _exit_status(attributes: Attributes) -> int | None:
    text = attributes.get("Exit_status", attributes.get("exit_status", "")).strip()
    try:
        return int(text)
    except ValueError:
        return None


def _as_exit_code(code: int | None) -> int | None:
    """PBS's Exit_status as a process exit code: 256 + N means killed by signal N (-N);
    a negative status is PBS's own (the job could not start, the mom restarted: see the
    comment), not the job's, so it gives none."""
    if code is None or code < 0:
        return None
    if code > SIGNAL_OFFSET:
        return -(code - SIGNAL_OFFSET)
    return code


def _duration_s(text: str) -> float | None:
    """`HH:MM:SS` (or `MM:SS`, or seconds) -> seconds; None if unreadable."""
    try:
        seconds = 0.0
        for part in text.strip().split(":"):
            seconds = seconds * 60 + float(part)
        return seconds
    except ValueError:
        return None


def walltime(minutes: float) -> str:
    """A walltime request, `HH:MM:SS`, rounded up to whole seconds."""
    total = max(1, int(-(-minutes * 60 // 1)))
    hours, rest = divmod(total, 3600)
    return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def directive(text: str) -> str:
    """An extra `#PBS` directive's options (`-l place=excl`; a leading `#PBS` is dropped);
    ValueError, saying what to write, if it is not qsub options on one line."""
    text = text.strip()
    if text.startswith("#PBS"):
        text = text[len("#PBS") :].strip()
    if not text.startswith("-") or "\n" in text:
        raise ValueError(f"#PBS directive {text!r}: give qsub options, e.g. '-l place=excl'")
    return text
