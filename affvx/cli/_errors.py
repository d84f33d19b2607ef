"""Which exceptions are the user's to fix (exit 2, one line) and how they are printed."""

from __future__ import annotations

import sys

from affvx.orchestrator.errors import OrchestratorError
from affvx.storage.errors import StorageError

# Exceptions whose message is a complete, actionable sentence about the user's input.
USER_ERRORS: tuple[type[BaseException], ...] = (StorageError, OrchestratorError)


def print_error(message: object) -> None:
    """One line on stderr, prefixed with `affvx: error:`."""
    one_line = " ".join(str(message).split())
    sys.stderr.write(f"affvx: error: {one_line}\n")
