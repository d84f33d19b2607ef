"""Errors raised by the orchestrator."""


class OrchestratorError(Exception):
    """Base of orchestrator errors."""


class ConfigError(OrchestratorError):
    """An experiment setting, flag or run directory that cannot be used as given.

    The message names the setting and how to fix it; the CLI prints it and exits with 2.
    """
