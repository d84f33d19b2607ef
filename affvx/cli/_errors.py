"""How errors reach the user: one line on stderr."""

from __future__ import annotations

import sys

from affvx.orchestrator.errors import JOB_ERRORS, USER_ERRORS

__all__ = ["JOB_ERRORS", "USER_ERRORS", "print_error"]


def print_error(message: object) -> None:
    """One line on stderr, prefixed with `affvx: error:`."""
    one_line = " ".join(str(message).split())
    sys.stderr.write(f"affvx: error: {one_line}\n")
