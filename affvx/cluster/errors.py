"""Errors raised by backends."""


class ClusterError(Exception):
    """A backend that cannot do what was asked; the message says why and what to do."""


class SchedulerCommandError(ClusterError):
    """A scheduler command (sbatch, qsub, ...) that failed; carries its output."""

    def __init__(self, command: list[str], returncode: int, stdout: str, stderr: str) -> None:
        self.command, self.returncode, self.stdout, self.stderr = (
            command,
            returncode,
            stdout,
            stderr,
        )
        detail = (stderr or stdout).strip().splitlines()
        super().__init__(
            f"{command[0]} exited with status {returncode}: {detail[-1] if detail else 'no output'}"
        )
