"""Errors raised by the trainers."""


class TrainerError(Exception):
    """Base of trainer errors."""


class TrainerInputError(TrainerError):
    """A job specification or its data that cannot be trained: the message says what to fix."""


class CheckpointMismatchError(TrainerInputError):
    """A checkpoint written under another configuration than the job's."""


class DivergenceError(TrainerInputError):
    """Training produced a non-finite loss (a learning rate far too high is the usual cause).

    A bad-input error: the same settings diverge the same way again, so a job that diverged
    is not retried (its worker exits with the bad-input status); the message names the fix.
    """
