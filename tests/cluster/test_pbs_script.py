"""The qsub scripts the pbs backend submits (PBS Pro and Torque), pinned by golden files,
and the reading of qstat's answers (no server needed).

Paths with spaces, quotes and $(...) must reach the job as data, never as shell code. To
re-record after an intended change: AFFVX_RECORD_GOLDEN=1 pytest tests/cluster/test_pbs_script.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from affvx.cluster.base import JobRequest, JobStatus, Resources
from affvx.cluster.errors import ClusterError
from affvx.cluster.pbs import PbsBackend
from affvx.cluster.pbs_qstat import QstatFormatError, job_state, parse_json, parse_text, walltime

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
WEIRD_RUN = Path("/runs/grid of 'Ann' $(touch PWNED)")


def weird_requests(n: int) -> list[JobRequest]:
    return [
        JobRequest(
            key=f"valence-visual-fold{i}-seed0",
            command=("/usr/bin/python3", "-m", "affvx.orchestrator.worker", str(WEIRD_RUN)),
            workdir=WEIRD_RUN,
            log_dir=WEIRD_RUN / "jobs" / f"valence-visual-fold{i}-seed0" / "log",
            resources=Resources(cpus=4, gpus=1, mem_gb=16, time_limit_min=90),
        )
        for i in range(n)
    ]


def weird_backend(flavour: str) -> PbsBackend:
    return PbsBackend(
        queue="gpuq",
        account="lab-42",
        extra_directives=["-l place=excl", "#PBS -W group_list=vision"],
        setup=["module load cuda/12.4", "source '/opt/my env/bin/activate'"],
        array_parallelism=4,
        flavour=flavour,
        python="/usr/bin/python3",
    )


@pytest.mark.parametrize("flavour", ["pbspro", "torque"])
def test_the_script_matches_the_golden_file(flavour: str) -> None:
    [script] = weird_backend(flavour).render(weird_requests(6))
    golden = GOLDEN / f"qsub_{flavour}_weird_names.txt"
    if os.environ.get("AFFVX_RECORD_GOLDEN"):
        golden.write_text(script)
    assert script == golden.read_text(), (
        f"the qsub script changed; if intended, re-record {golden.name}"
    )


def test_the_pbspro_script_asks_for_what_the_jobs_need() -> None:
    [script] = weird_backend("pbspro").render(weird_requests(6))
    lines = script.splitlines()
    for expected in (
        "#PBS -l select=1:ncpus=4:ngpus=1:mem=16384mb",
        "#PBS -l walltime=01:30:00",
        "#PBS -J 0-5%4",
        "#PBS -q gpuq",
        "#PBS -A lab-42",
        "#PBS -l place=excl",
        "#PBS -W group_list=vision",
        "module load cuda/12.4",
    ):
        assert expected in lines, expected
    # PBS jobs start in $HOME; the script goes to submitit's folder, quoted
    assert "cd '/runs/grid of '\"'\"'Ann'\"'\"' $(touch PWNED)/pbs'" in lines
    assert lines[-1].startswith("exec /usr/bin/python3 -u -m affvx.cluster.pbs_entry ")


def test_an_array_limit_that_limits_nothing_is_left_out() -> None:
    backend = PbsBackend(array_parallelism=6, python="/usr/bin/python3")
    [script] = backend.render(weird_requests(6))
    assert "#PBS -J 0-5" in script.splitlines()
    [limited] = PbsBackend(array_parallelism=5, python="/usr/bin/python3").render(
        weird_requests(6)
    )
    assert "#PBS -J 0-5%5" in limited.splitlines()


def test_the_torque_script_speaks_torque() -> None:
    [script] = weird_backend("torque").render(weird_requests(3))
    lines = script.splitlines()
    assert "#PBS -l nodes=1:ppn=4:gpus=1" in lines and "#PBS -l mem=16384mb" in lines
    assert "#PBS -t 0-2" in lines and not any(line.startswith("#PBS -J") for line in lines)


def test_a_single_job_is_no_array() -> None:
    [script] = weird_backend("pbspro").render(weird_requests(1))
    assert not any(line.startswith(("#PBS -J", "#PBS -t")) for line in script.splitlines())


@pytest.mark.parametrize("option", ["queue", "account"])
def test_a_name_a_directive_cannot_carry_is_refused(option: str) -> None:
    with pytest.raises(ClusterError, match=f'{option} = "lab\'s \\$\\(whoami\\)"'):
        PbsBackend(**{option: "lab's $(whoami)"})


def test_a_directive_that_is_no_qsub_option_is_refused() -> None:
    with pytest.raises(ClusterError, match="give qsub options, e.g. '-l place=excl'"):
        PbsBackend(extra_directives=["place=excl"])


def test_walltimes_round_up_to_whole_seconds() -> None:
    assert walltime(90) == "01:30:00"
    assert walltime(0.5) == "00:00:30"
    assert walltime(1 / 7) == "00:00:09"
    assert walltime(36 * 60) == "36:00:00"


# -- qstat's answers --------------------------------------------------------------------------

FINISHED = {
    "job_state": "F",
    "Exit_status": "0",
    "exec_host": "vm/0",
    "resources_used.walltime": "00:01:05",
    "comment": "Job run at Fri Dec 04 at 10:35 on (vm:ncpus=1) and finished",
}


@pytest.mark.parametrize(
    "changes, status, code",
    [
        ({}, JobStatus.EXITED, 0),
        ({"Exit_status": "75"}, JobStatus.EXITED, 75),
        ({"job_state": "X", "Exit_status": "3"}, JobStatus.EXITED, 3),
        ({"Exit_status": "265"}, JobStatus.EXITED, -9),  # top shell killed by SIGKILL
        (
            {"Exit_status": "-29", "comment": "Job run at ... and exceeded resource walltime"},
            JobStatus.TIMEOUT,
            None,
        ),
        (
            {"Exit_status": "271", "comment": "Job run at ... and terminated"},
            JobStatus.CANCELLED,
            -15,
        ),
        ({"Exit_status": ""}, JobStatus.CANCELLED, None),  # deleted while queued
        ({"Exit_status": "-4", "comment": "mom restarted"}, JobStatus.EXITED, None),
        ({"job_state": "Q"}, JobStatus.PENDING, None),
        ({"job_state": "H"}, JobStatus.PENDING, None),
        ({"job_state": "R"}, JobStatus.RUNNING, None),
        ({"job_state": "E"}, JobStatus.RUNNING, None),  # exiting is not ended
        ({"job_state": "S"}, JobStatus.RUNNING, None),  # suspended resumes
        ({"job_state": "C", "exit_status": "0"}, JobStatus.EXITED, 0),  # Torque's completed
    ],
)
def test_what_a_job_state_means(changes: dict, status: JobStatus, code: int | None) -> None:
    attributes = {**FINISHED, **changes}
    if "exit_status" in changes:
        del attributes["Exit_status"]
    state = job_state(attributes)
    assert (state.status, state.exit_code) == (status, code)
    if status is JobStatus.EXITED and code is not None:
        assert (state.node, state.runtime_s) == ("vm", 65.0)


def test_a_pbs_internal_exit_status_is_named_in_the_reason() -> None:
    state = job_state({**FINISHED, "Exit_status": "-4", "comment": "mom restarted"})
    assert "PBS exit status -4" in state.reason


def test_json_with_duplicate_keys_and_nested_resources_is_read() -> None:
    text = """{"timestamp":1,"pbs_version":"23.06.06","pbs_server":"vm","Jobs":{
      "7.vm":{"job_state":"R","job_state":"F","Exit_status":0,
              "Resource_List":{"walltime":"00:10:00","ncpus":2},"Job_Name":123}}}"""
    [(job_id, attributes)] = parse_json(text).items()
    assert job_id == "7.vm"
    assert attributes["job_state"] == "F"  # the last of a duplicate key
    assert attributes["Resource_List.walltime"] == "00:10:00"
    assert attributes["Job_Name"] == "123"  # a name that looks like a number stays a name


def test_no_matching_job_means_no_jobs_key() -> None:
    assert parse_json('{"timestamp":1,"pbs_version":"23.06.06","pbs_server":"vm"}') == {}


@pytest.mark.parametrize(
    "text",
    [
        '{"Jobs":{"7.vm":{"Job_Name":nan}}}',  # a job named nan, printed raw
        '{"Jobs":{"7.vm":{"comment":"a \\\' b"}}}',  # an escape JSON does not know
        '{"timestamp":1,"pbs_version":"23',  # cut short
    ],
)
def test_invalid_json_is_refused_for_the_text_form(text: str) -> None:
    with pytest.raises(QstatFormatError):
        parse_json(text)


def test_the_text_form_joins_wrapped_values() -> None:
    text = (
        "Job Id: 12[3].vm\n"
        "    Job_Name = affvx-run\n"
        "    job_state = F\n"
        "    comment = Job run at Wed Jun 24 at 15:33 on (vm:ncpus=1) and exceeded resou\n"
        "\trce walltime\n"
        "    Exit_status = -29\n"
        "\n"
        "Job Id: 13.vm\n"
        "    job_state = R\n"
    )
    jobs = parse_text(text)
    assert set(jobs) == {"12[3].vm", "13.vm"}
    assert jobs["12[3].vm"]["comment"].endswith("exceeded resource walltime")
    assert job_state(jobs["12[3].vm"]).status is JobStatus.TIMEOUT
    assert job_state(jobs["13.vm"]).status is JobStatus.RUNNING
