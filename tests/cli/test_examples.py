"""Every example of the README and of every command's --help runs as written after the
README's main job (issue 9 §5).

What the examples need of the main job is what it leaves behind: the demo corpus in the user's
cache and a finished run under ./runs. The main job's 24 jobs take minutes, so a 2-job grid on
the same demo corpus, launched the same way, stands in for it. A user's own Aff-Wild2 tree in
~/aff-wild2 is stood in for by one written from a small store (features/visual,
features/mfcc, features/vggish, wav/<video>.wav). Each example runs in a subprocess with HOME set to
the test's home: `affvx` (or `.venv/bin/affvx`) is this interpreter's `python -m affvx`, and
`. .venv/bin/activate` (which only puts affvx on the PATH) is skipped.

The examples of a command's --help are the backticked `affvx ...` commands of its help text,
run in order (an "after `...`" prerequisite first), each in a fresh copy of the directory the
main job left.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.test_readme import REPO

pytestmark = pytest.mark.slow

MAIN_JOB_STAND_IN = ("launch", "--folds", "2", "--emotions", "valence", "--modalities", "visual")


def readme_examples() -> list[str]:
    """The command lines of the README's bash blocks after the two install blocks."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.DOTALL)
    return [line for block in blocks[2:] for line in block.strip().splitlines()]


def help_examples() -> dict[str, list[str]]:
    """Each command's path ("data info") -> the backticked affvx commands of its help."""
    import typer.main

    from affvx.cli.main import app

    found: dict[str, list[str]] = {}

    def walk(command, path: str) -> None:  # type: ignore[no-untyped-def]
        children = getattr(command, "commands", None)
        if children:
            for name, child in children.items():
                walk(child, f"{path} {name}".strip())
            return
        text = " ".join((command.help or "").split())
        found[path] = re.findall(r"`(affvx [^`]+)`", text)

    walk(typer.main.get_command(app), "")
    return found


@pytest.fixture(scope="module")
def after_main_job(tmp_path_factory: pytest.TempPathFactory, small_store: Path):  # type: ignore[no-untyped-def]
    """(home, the directory the main job ran in, the environment of the examples)."""
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if k != "XDG_CACHE_HOME"}
    env.update(HOME=str(home), COLUMNS="120")
    work = home / "work"
    work.mkdir()
    stand_in = ("affvx", *MAIN_JOB_STAND_IN, "--epochs", "1")
    run_line(shlex.join(stand_in), work, home, env)
    assert (home / ".cache" / "affvx").is_dir()  # the demo corpus went to the user cache
    write_affwild2_tree(small_store, home / "aff-wild2")
    return home, work, env


def write_affwild2_tree(store_path: Path, root: Path) -> None:
    from affvx.storage.reader import FeatureStore
    from tests.support.trees import write_annotation_tree

    store = FeatureStore(store_path)
    write_annotation_tree(store, root, modalities=["visual", "mfcc", "vggish"])
    seconds: dict[str, float] = {}
    for trial in store.trial_names:
        info = store.trial_info(trial)
        seconds[info.video] = max(seconds.get(info.video, 0.0), info.n_frames / info.fps)
    rng = np.random.default_rng(0)
    (root / "wav").mkdir()
    for video, length_s in seconds.items():
        samples = (rng.normal(0, 0.1, int((length_s + 0.2) * 16000)) * 32767).astype("<i2")
        with wave.open(str(root / "wav" / f"{video}.wav"), "wb") as handle:
            handle.setnchannels(1)
            handle.setsampwidth(2)
            handle.setframerate(16000)
            handle.writeframes(samples.tobytes())


def run_line(line: str, cwd: Path, home: Path, env: dict[str, str]) -> None:
    words = shlex.split(line, comments=True)
    if not words or words[0] == ".":  # `. .venv/bin/activate`
        return
    assert words[0] in ("affvx", ".venv/bin/affvx"), f"not an affvx command: {line}"
    args = [str(home / w[2:]) if w.startswith("~/") else w for w in words[1:]]
    done = subprocess.run(
        [sys.executable, "-m", "affvx", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"{line}\nexit {done.returncode}\n{done.stderr[-3000:]}"


def fresh_copy(work: Path, into: Path) -> Path:
    target = into / "work"
    shutil.copytree(work, target, symlinks=True)
    return target


def test_every_readme_example_runs_as_written(after_main_job, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    home, work, env = after_main_job
    examples = readme_examples()
    assert any("demo-store" in line for line in examples)
    cwd = fresh_copy(work, tmp_path)
    for line in examples:
        run_line(line, cwd, home, env)
    assert (cwd / "runs" / "one" / "result.json").exists()
    assert (cwd / "aw2" / "manifest.json").exists()


def test_every_command_has_an_example() -> None:
    missing = [path for path, examples in help_examples().items() if not examples]
    assert not missing, f"commands without an example in their --help: {missing}"


@pytest.mark.parametrize("command", sorted(help_examples()))
def test_the_help_examples_run_as_written(after_main_job, tmp_path: Path, command: str) -> None:  # type: ignore[no-untyped-def]
    home, work, env = after_main_job
    cwd = fresh_copy(work, tmp_path)
    for line in help_examples()[command]:
        run_line(line, cwd, home, env)
