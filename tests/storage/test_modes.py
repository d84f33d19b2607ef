"""Files other people can read: atomic writes end with the modes a plain open() / mkdir() gives
under the caller's umask (tempfile alone would leave 0600 files and 0700 directories), checked
with the modes themselves and by a second, unprivileged user reading a store and a report."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from affvx.storage import atomic
from affvx.storage.atomic import (
    atomic_file,
    atomic_write_text,
    create_exclusive_bytes,
    current_umask,
    staged_directory,
)

READER = "affvx-reader"  # the second user; created once, reused afterwards


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask() -> Iterator[object]:
    """Set the process umask for the test (`umask(0o022)`), restoring the old one after."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield os.umask
    os.umask(previous)


def plain_modes(parent: Path) -> tuple[int, int]:
    """What the kernel itself gives a new file and directory under the current umask."""
    with open(parent / "plain-file", "w"):
        pass
    (parent / "plain-dir").mkdir()
    return mode_of(parent / "plain-file"), mode_of(parent / "plain-dir")


def atomic_outputs(parent: Path) -> dict[str, Path]:
    """One output of every atomic writer in affvx.storage.atomic."""
    atomic_write_text(parent / "text.json", "{}\n")
    with atomic_file(parent / "binary.bin", "wb") as handle:
        handle.write(b"\0")
    assert create_exclusive_bytes(parent / "exclusive.toml", b"x = 1\n")
    with staged_directory(parent / "store") as staging:
        (staging / "inner.arrow").write_bytes(b"\0")
    return {
        "text.json": parent / "text.json",
        "binary.bin": parent / "binary.bin",
        "exclusive.toml": parent / "exclusive.toml",
        "store": parent / "store",
    }


@pytest.mark.parametrize(
    "mask, file_mode, dir_mode",
    [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775), (0o077, 0o600, 0o700), (0o027, 0o640, 0o750)],
    ids=["umask022", "umask002", "umask077", "umask027"],
)
def test_atomic_writes_get_the_modes_of_a_plain_open_and_mkdir(
    tmp_path: Path, umask, mask: int, file_mode: int, dir_mode: int
) -> None:
    umask(mask)
    assert plain_modes(tmp_path) == (file_mode, dir_mode)  # what the kernel does
    outputs = atomic_outputs(tmp_path)
    modes = {name: mode_of(path) for name, path in outputs.items()}
    assert modes == {
        "text.json": file_mode,
        "binary.bin": file_mode,
        "exclusive.toml": file_mode,
        "store": dir_mode,
    }
    assert mode_of(outputs["store"] / "inner.arrow") == file_mode


def test_a_replaced_file_gets_the_umask_of_its_writer(tmp_path: Path, umask) -> None:
    umask(0o077)
    atomic_write_text(tmp_path / "status.json", "old\n")
    umask(0o022)
    atomic_write_text(tmp_path / "status.json", "new\n")
    assert mode_of(tmp_path / "status.json") == 0o644


def test_a_store_in_a_group_directory_stays_in_the_group(tmp_path: Path, umask) -> None:
    umask(0o002)
    group_dir = tmp_path / "lab"
    group_dir.mkdir()
    group_dir.chmod(0o2775)  # setgid: what is made inside belongs to the directory's group
    with staged_directory(group_dir / "store"):
        pass
    assert stat.S_IMODE((group_dir / "store").stat().st_mode) == 0o2775


def test_the_umask_is_read_without_changing_it(umask, monkeypatch: pytest.MonkeyPatch) -> None:
    umask(0o027)
    assert current_umask() == 0o027
    assert os.umask(0o027) == 0o027  # unchanged by reading it

    def no_proc(*args: object, **kwargs: object) -> object:
        raise FileNotFoundError("/proc/self/status")

    monkeypatch.setattr(atomic, "open", no_proc, raising=False)  # a kernel without /proc
    assert current_umask() == 0o027
    assert os.umask(0o027) == 0o027  # the os.umask() probe put it back


# -- a second user ----------------------------------------------------------------------------


def _user_exists(name: str) -> bool:
    return subprocess.run(["id", "-u", name], check=False, capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def reader_user() -> str:
    """An unprivileged user other than the one running the tests."""
    if os.geteuid() != 0:
        pytest.skip("creating and becoming a second user needs root; the tests do not run as root")
    if not _user_exists(READER):
        if shutil.which("useradd") is None:
            pytest.skip("no useradd on this machine to create a second user")
        made = subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", READER],
            check=False,
            capture_output=True,
            text=True,
        )
        # another test session may have created it at the same moment
        assert _user_exists(READER), f"useradd {READER} failed: {made.stderr.strip()}"
    return READER


def as_reader(user: str, *command: str) -> subprocess.CompletedProcess[str]:
    """Run `command` as `user` (no supplementary groups, so root's groups do not leak in)."""
    return subprocess.run(
        list(command),
        check=False,
        user=user,
        group=user,
        extra_groups=[],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp"},
        cwd="/",
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="module")
def shared_dir() -> Iterator[Path]:
    """A directory every user may enter (pytest's own temporary directories are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="affvx-modes-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def affvx_under_umask(mask: int, *args: object, cwd: Path) -> None:
    command = [sys.executable, "-m", "affvx", *map(str, args)]
    done = subprocess.run(
        command, check=False, cwd=cwd, umask=mask, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def outputs_made_under_umask_022(shared_dir: Path) -> Path:
    """A store, a two-job run of it and its report, made by this user under umask 022."""
    work = shared_dir / "work"
    work.mkdir()
    affvx_under_umask(
        0o022, "data", "synth", "store", "--trials", "12", "--scale", "0.02", cwd=work
    )
    affvx_under_umask(
        0o022,
        *("launch", "--store", "store", "--run", "run", "--folds", "2"),
        *("--emotions", "valence", "--modalities", "visual", "--model", "tcn", "--epochs", "1"),
        cwd=work,
    )
    affvx_under_umask(0o022, "collect", "run", cwd=work)
    return work


# Python itself lives under /root here, out of the second user's reach: load it and affvx as
# root, then become the second user for good before the store is opened.
READ_STORE_AS = """
import os, pwd, sys
import pyarrow.compute  # imported lazily by the reader otherwise
from affvx.storage.reader import FeatureStore
user = pwd.getpwnam(sys.argv[2])
os.setgroups([])
os.setgid(user.pw_gid)
os.setuid(user.pw_uid)
assert os.getuid() == user.pw_uid and os.geteuid() == user.pw_uid
store = FeatureStore(sys.argv[1])
store.verify()
for name in store.manifest["modalities"]:
    float(store.features(store.trial_names[0], name).sum())
print(len(store.trial_names))
"""


@pytest.mark.slow
def test_a_second_user_reads_a_store_and_a_report_made_under_umask_022(
    reader_user: str, outputs_made_under_umask_022: Path
) -> None:
    work = outputs_made_under_umask_022
    store, run = work / "store", work / "run"
    command = [sys.executable, "-c", READ_STORE_AS, str(store), reader_user]
    read = subprocess.run(command, check=False, cwd="/", capture_output=True, text=True)
    assert read.returncode == 0, read.stderr
    assert read.stdout.strip() == "12"
    summary = as_reader(reader_user, "cat", str(run / "report" / "summary.md"))
    assert summary.returncode == 0, summary.stderr
    assert summary.stdout == (run / "report" / "summary.md").read_text()
    read_all = 'find "$@" -type f -exec cat {} + > /dev/null'
    every_file = as_reader(reader_user, "sh", "-c", read_all, "sh", str(store), str(run))
    assert every_file.returncode == 0, every_file.stderr  # results, checkpoints, ledger, report
    for path in [store, *store.rglob("*"), run, *run.rglob("*")]:
        assert mode_of(path) == (0o755 if path.is_dir() else 0o644), path


def test_a_store_made_under_umask_077_stays_private(
    reader_user: str, shared_dir: Path, umask
) -> None:
    umask(0o077)
    with staged_directory(shared_dir / "private-store") as staging:
        (staging / "manifest.json").write_text("{}\n")
    listing = as_reader(reader_user, "ls", str(shared_dir / "private-store"))
    assert listing.returncode != 0 and "Permission denied" in listing.stderr
    assert mode_of(shared_dir / "private-store") == 0o700
    assert mode_of(shared_dir / "private-store" / "manifest.json") == 0o600
