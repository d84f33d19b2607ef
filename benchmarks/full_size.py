"""Full-size corpus: `data synth` on the real trial list at scale 1.0, then `data info` and
`folds`, each timed, with its own peak resident memory (target: minutes, under 4 GB).

    python benchmarks/full_size.py [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, VA_TRIALS, affvx_command, machine, markdown_table, run_measured  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="Keep the store (3.3 GB) afterwards.")
    args = parser.parse_args()
    store = OUT / "full-size-store"
    shutil.rmtree(store, ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    commands = [
        (
            "data synth --from-list va_trials.csv --scale 1.0",
            affvx_command(
                "data", "synth", str(store), "--from-list", str(VA_TRIALS), "--scale", "1.0"
            ),
        ),
        ("data info", affvx_command("data", "info", str(store))),
        (
            "data info --verify (SHA-256 of every file)",
            affvx_command("data", "info", str(store), "--verify"),
        ),
        ("folds --protocol abaw2 --json", affvx_command("folds", str(store), "--json")),
    ]
    rows = []
    for label, command in commands:
        run = run_measured(command, stdout=subprocess.DEVNULL)
        if run.returncode != 0:
            raise SystemExit(f"{label} failed with exit code {run.returncode}")
        rows.append([f"`affvx {label}`", f"{run.seconds:.1f}", f"{run.max_rss_mb:,.0f}"])
    info = json.loads(
        subprocess.run(
            affvx_command("data", "info", str(store), "--json"),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    print(f"machine: {machine()}")
    print(
        f"store: {info['trials']} trials, {info['frames']:,} frames, {info['bytes'] / 2**30:.2f} GiB\n"
    )
    print(markdown_table(["command", "seconds", "peak RSS MiB"], rows))
    if not args.keep:
        shutil.rmtree(store)


if __name__ == "__main__":
    main()
