"""The warm starter (affvx.cluster.warm): jobs forked from a server that imported their code
once behave as the plain processes the local backend starts -- argv, environment, working
directory, logs, signals, exit status --, other commands fall back to plain processes, and
nothing outlives the client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from affvx.cluster.warm import WarmProcess, WarmStarter
from affvx.protocol import EXIT_COMPLETE, EXIT_FAILED, STOP_SIGNALS, block_stop_signals
from tests.support.runs import one_cell_run, wait_until

REPO = Path(__file__).resolve().parents[2]
JOB_MODULE = "tests.support.warm_job"


@pytest.fixture
def starter(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    # children (forked or plain) import tests.support from the repository
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    with WarmStarter([JOB_MODULE]) as warm:
        yield warm


def start(starter: WarmStarter, tmp_path: Path, *args: str, module: str = JOB_MODULE, **env: str):  # type: ignore[no-untyped-def]
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    with open(tmp_path / "job.out", "ab") as out, open(tmp_path / "job.err", "ab") as err:
        return starter.start(
            [sys.executable, "-m", module, *args],
            cwd=work,
            env={**os.environ, **env},
            stdout=out,
            stderr=err,
        )


def plain(tmp_path: Path, *args: str, **env: str) -> subprocess.Popen[bytes]:
    """The same command as the local backend starts it today."""
    with open(tmp_path / "plain.out", "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", JOB_MODULE, *args],
            cwd=tmp_path / "work",
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=block_stop_signals,
        )


def test_a_forked_job_runs_with_its_argv_env_cwd_and_logs(
    starter: WarmStarter, tmp_path: Path
) -> None:
    process = start(starter, tmp_path, "report", "3", WARM_TEST_MARK="forked")
    assert isinstance(process, WarmProcess), starter.last_refusal
    assert process.wait(timeout=60) == 3 and process.returncode == 3
    seen = json.loads((tmp_path / "job.out").read_text())
    assert (tmp_path / "job.err").read_text() == "to stderr\n"
    assert plain(tmp_path, "report", "3", WARM_TEST_MARK="forked").wait(timeout=60) == 3
    fresh = json.loads((tmp_path / "plain.out").read_text())
    assert seen == fresh  # argv, cwd, environment, blocked signals, session, fds, cmdline
    assert seen["argv"][1:] == ["report", "3"] and seen["cwd"] == str(tmp_path / "work")
    assert seen["mark"] == "forked" and seen["session_leader"] and seen["handlers_default"]
    assert set(STOP_SIGNALS) <= set(seen["blocked"])
    assert seen["cmdline"] == [sys.executable, "-m", JOB_MODULE, "report", "3"]
    assert seen["main"] == "__main__"


def test_a_signal_reaches_the_job_and_its_returncode_says_so(
    starter: WarmStarter, tmp_path: Path
) -> None:
    process = start(starter, tmp_path, "sleep")
    assert isinstance(process, WarmProcess), starter.last_refusal
    wait_until(lambda: (tmp_path / "job.out").read_text().strip(), what="the job's start")
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(timeout=0.3)
    assert process.poll() is None
    process.send_signal(signal.SIGUSR2)
    assert process.wait(timeout=30) == -signal.SIGUSR2
    other = start(starter, tmp_path, "sleep")
    os.killpg(other.pid, signal.SIGKILL)  # as the local backend signals a job's group
    assert other.wait(timeout=30) == -signal.SIGKILL
    other.kill()  # an ended job: nothing happens, as with Popen


def test_other_commands_and_a_dead_server_fall_back_to_plain_processes(
    starter: WarmStarter, tmp_path: Path
) -> None:
    code = "import signal; print(sorted(map(int, signal.pthread_sigmask(signal.SIG_BLOCK, []))))"
    work = tmp_path / "work"
    work.mkdir()
    with open(tmp_path / "c.out", "wb") as out:
        process = starter.start(
            [sys.executable, "-c", code], cwd=work, env=dict(os.environ), stdout=out, stderr=out
        )
    assert isinstance(process, subprocess.Popen) and process.wait(timeout=60) == EXIT_COMPLETE
    assert {int(s) for s in STOP_SIGNALS} <= set(json.loads((tmp_path / "c.out").read_text()))
    refused = start(starter, tmp_path, "report", "0", PYTHONHASHSEED="1")  # read at start-up
    assert isinstance(refused, subprocess.Popen) and "PYTHONHASHSEED" in starter.last_refusal
    assert refused.wait(timeout=60) == 0

    running = start(starter, tmp_path, "sleep")
    assert isinstance(running, WarmProcess)
    wait_until(lambda: len((tmp_path / "job.out").read_text().split()) >= 2, what="the start")
    starter._server.kill()  # the server dies: its job gets SIGTERM (and ends unreported)
    assert running.wait(timeout=30) == EXIT_FAILED
    after = start(starter, tmp_path, "report", "4")
    assert isinstance(after, subprocess.Popen) and after.wait(timeout=60) == 4


CLIENT = textwrap.dedent(
    """
    import os, sys
    from affvx.cluster.warm import WarmStarter
    starter = WarmStarter(["tests.support.warm_job"])
    job = starter.start([sys.executable, "-m", "tests.support.warm_job", "sleep"],
                        cwd=sys.argv[1], env=dict(os.environ),
                        stdout=sys.stderr, stderr=sys.stderr)
    print(type(job).__name__, starter._server.pid, job.pid, flush=True)
    if sys.argv[2] == "close":
        starter.close()
        print("closed", flush=True)
    sys.stdin.read()
    """
)


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


@pytest.mark.parametrize("how", ["close", "killed"])
def test_no_process_outlives_the_client(tmp_path: Path, how: str) -> None:
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, str(tmp_path), how],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        kind, server, job = client.stdout.readline().split()  # type: ignore[union-attr]
        assert kind == "WarmProcess"
        if how == "close":
            assert client.stdout.readline().strip() == "closed"  # type: ignore[union-attr]
        else:
            client.kill()
        wait_until(lambda: gone(int(server)) and gone(int(job)), timeout_s=30, what="no orphan")
    finally:
        client.kill()
        client.wait()


@pytest.mark.slow
def test_a_real_worker_job_gives_the_result_of_a_plain_process(
    small_store: Path, tmp_path: Path
) -> None:
    job = "valence-visual-fold0-seed0"
    runs = {
        way: one_cell_run(small_store, tmp_path / way, max_epochs=2).resolve()
        for way in ("plain", "warm")
    }
    env = {**os.environ, "AFFVX_BACKEND": "local", "AFFVX_DEVICE": "cpu", "AFFVX_CPUS": "1"}
    command = [sys.executable, "-m", "affvx.orchestrator.worker"]
    with open(tmp_path / "plain.log", "wb") as log:
        fresh = subprocess.Popen(
            [*command, str(runs["plain"]), job],
            env=env,
            stdout=log,
            stderr=log,
            preexec_fn=block_stop_signals,
        )
        assert fresh.wait(timeout=600) == EXIT_COMPLETE
    with WarmStarter(["affvx.orchestrator.worker"]) as starter:
        with open(tmp_path / "warm.log", "wb") as log:
            forked = starter.start(
                [*command, str(runs["warm"]), job], cwd=tmp_path, env=env, stdout=log, stderr=log
            )
        assert isinstance(forked, WarmProcess), starter.last_refusal
        assert forked.wait(timeout=600) == EXIT_COMPLETE, (tmp_path / "warm.log").read_text()
    plain_dir, warm_dir = (runs[way] / "jobs" / job for way in ("plain", "warm"))
    assert (warm_dir / "predictions.parquet").read_bytes() == (
        plain_dir / "predictions.parquet"
    ).read_bytes()
    results = [json.loads((d / "result.json").read_text()) for d in (plain_dir, warm_dir)]
    assert results[0]["val_ccc"] == results[1]["val_ccc"]
    assert results[0]["config_hash"] == results[1]["config_hash"]
    state = json.loads((warm_dir / "state.json").read_text())
    assert state["pid"] == forked.pid and state["state"] == "COMPLETE"
