"""The import direction of docs/architecture.md (Layers), the job protocol defined once, no
backend known by its name, and which commands stay free of torch and ray."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "affvx"

# Who may import whom (besides itself). cli -> orchestrator -> trainers -> storage,
# orchestrator -> cluster, orchestrator -> storage; cli may also reach storage and cluster
# directly for commands that only read data or list backends. Below them all, affvx.protocol
# (the job-process protocol) may be imported by every package and imports none.
ALLOWED = {
    "storage": set(),
    "cluster": set(),
    "trainers": {"storage"},
    "orchestrator": {"trainers", "cluster", "storage"},
    "cli": {"orchestrator", "storage", "cluster"},
}


def imported_affvx_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "affvx" and len(parts) > 1 and parts[1] in ALLOWED:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down_the_layers(package: str) -> None:
    offences = []
    for path in sorted((PACKAGE / package).rglob("*.py")):
        for target in imported_affvx_packages(path) - {package}:
            if target not in ALLOWED[package]:
                offences.append(f"{path.relative_to(PACKAGE.parent)} imports affvx.{target}")
    assert not offences, "\n".join(offences)


def test_no_relative_imports_hide_an_edge() -> None:
    relative = [
        str(path.relative_to(PACKAGE.parent))
        for path in PACKAGE.rglob("*.py")
        if any(
            isinstance(n, ast.ImportFrom) and n.level > 0
            for n in ast.walk(ast.parse(path.read_text()))
        )
    ]
    assert relative == []


def heavy_modules_after(*args: str) -> set[str]:
    """Which of torch / ray an `affvx ARGS` run imported (in a fresh interpreter)."""
    code = (
        "import sys\n"
        "from affvx.cli.main import main\n"
        f"try:\n    main({list(args)!r})\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(ast.literal_eval(out.stdout.strip().splitlines()[-1]))


def test_data_and_fold_commands_do_not_import_torch_or_ray(small_store: Path) -> None:
    assert heavy_modules_after("--help") == set()
    assert heavy_modules_after("data", "info", str(small_store)) == set()
    assert heavy_modules_after("folds", str(small_store), "--json") == set()


def test_the_job_protocol_is_defined_once() -> None:
    """Exit statuses and stop signals live in affvx.protocol alone: no other module defines
    one of its EXIT_* constants or its own STOP_SIGNALS, or compares a status with a bare 75."""
    from affvx import protocol

    protocol_names = {name for name in vars(protocol) if name.startswith("EXIT_")}
    protocol_names.add("STOP_SIGNALS")
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "protocol.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else []
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name) and name.id in protocol_names:
                        offences.append(f"{path.relative_to(PACKAGE.parent)} defines {name.id}")
            if isinstance(node, ast.Compare) and any(
                isinstance(c, ast.Constant) and c.value == 75 for c in node.comparators
            ):
                offences.append(
                    f"{path.relative_to(PACKAGE.parent)}:{node.lineno} compares with 75"
                )
    assert not offences, "\n".join(offences)


def test_the_protocol_module_imports_no_other_affvx_module() -> None:
    tree = ast.parse((PACKAGE / "protocol.py").read_text())
    imported = [
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("affvx")
    ] + [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name.startswith("affvx")
    ]
    assert imported == []


def test_no_backend_is_known_by_its_name_outside_cluster() -> None:
    """The orchestrator and the CLI ask a backend's capabilities and options; they never
    compare a backend's name with a literal (the CLI's choice list is the registry's)."""
    from affvx.cluster.registry import backend_names

    names = set(backend_names()) | {"pbs", "ray"}
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if (PACKAGE / "cluster") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            literals = [
                value.value
                for operand in operands
                for value in ast.walk(operand)
                if isinstance(value, ast.Constant) and value.value in names
            ]
            if literals:
                where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
                offences.append(f"{where} compares with {literals[0]!r}")
    assert not offences, "\n".join(offences)
