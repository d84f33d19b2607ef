"""The README's two commands are the ones CI runs and the ones that exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    return [block.strip() for block in blocks[:2]]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    main_command, test_command = readme_commands()
    ci_script = (REPO / ".ci" / "run").read_text()
    assert test_command in ci_script.splitlines()
    assert "pytest" in test_command and "torch==2.13.0" in test_command


def test_the_main_command_installs_the_cpu_torch_first_and_runs_affvx() -> None:
    main_command, _ = readme_commands()
    assert main_command.index("torch==2.13.0") < main_command.index("pip install -q -e .")
    assert "affvx " in main_command
