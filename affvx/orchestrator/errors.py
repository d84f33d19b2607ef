"""Errors raised by the orchestrator, and which errors of the lower layers mean what."""

from affvx.cluster.errors import ClusterError
from affvx.storage.errors import StorageError
from affvx.trainers.errors import TrainerError, TrainerInputError


class OrchestratorError(Exception):
    """Base of orchestrator errors."""


class ConfigError(OrchestratorError):
    """An experiment setting, flag or run directory that cannot be used as given.

    The message names the setting and how to fix it; the CLI prints it and exits with 2.
    """


# Errors whose message is a complete sentence about the user's input (exit status 2).
USER_ERRORS: tuple[type[BaseException], ...] = (
    StorageError,
    TrainerInputError,
    OrchestratorError,
    ClusterError,
)

# A job that ran and failed (exit status 1).
JOB_ERRORS: tuple[type[BaseException], ...] = (TrainerError,)
