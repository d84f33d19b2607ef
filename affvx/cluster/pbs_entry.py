"""The in-job entry of affvx's own PBS tasks: `python -m affvx.cluster.pbs_entry FOLDER`.

Why not submitit's entry (`python -m submitit.core._submit`): a PBS subjob's wall time adds
to the whole array's almost one for one (the scheduler starts the next subjob when one ends),
and submitit's entry imports numpy and submitit's whole package (every executor, asyncio)
before it runs anything: 130 ms a subjob here, against 60 ms for this entry
(docs/benchmarks.md, PBS overhead). affvx's tasks pickle only a RunCommand, which needs none
of that.

It keeps submitit's files: it reads the job's `<PBS_JOBID>_submitted.pkl` from FOLDER and
writes `<PBS_JOBID>_0_result.pkl` atomically, ("success", result) or ("error", traceback), so
`job.result()` reads it as ever. It leaves out submitit's log lines and its signal handlers
(the task shim installs its own before it starts the command). A command that exits non-zero
exits this process with its status, as under submitit's entry.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import traceback
from types import ModuleType


def submitit_utils() -> ModuleType:
    """`submitit.core.utils`, without running `submitit/__init__.py` (which imports every
    executor) when nothing in this process has imported submitit yet."""
    if "submitit" not in sys.modules:
        spec = importlib.util.find_spec("submitit")
        if spec is None:
            raise ModuleNotFoundError("submitit is not installed where this job runs")
        sys.modules["submitit"] = importlib.util.module_from_spec(spec)  # not executed
    from submitit.core import utils

    return utils


def run_job(folder: str, job_id: str) -> None:
    """Run the pickled job `job_id` of `folder` and pickle its outcome beside it."""
    utils = submitit_utils()
    paths = utils.JobPaths(folder, job_id=job_id, task_id=0)
    try:
        result = utils.DelayedSubmission.load(paths.submitted_pickle).result()
        outcome = ("success", result)
    except Exception:
        outcome = ("error", traceback.format_exc())
        _save(utils, paths.result_pickle, outcome)
        raise
    _save(utils, paths.result_pickle, outcome)


def _save(utils: ModuleType, path: os.PathLike[str], outcome: tuple[str, object]) -> None:
    with utils.temporary_save_path(path) as temporary:
        utils.cloudpickle_dump(outcome, temporary)


if __name__ == "__main__":
    run_job(sys.argv[1], os.environ["PBS_JOBID"])
