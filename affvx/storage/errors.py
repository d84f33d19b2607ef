"""Errors raised by the storage layer.

Every error here is about data or paths the user supplied; the CLI prints its message as one
line and exits with status 2.
"""


class StorageError(Exception):
    """Base of all storage errors: the message names the file and the problem."""


class InputDataError(StorageError):
    """Source data (annotations, features, trial lists, audio) that cannot be ingested."""


class StoreExistsError(StorageError):
    """The target store path already exists; stores are never overwritten."""


class DamagedStoreError(StorageError):
    """A store whose files disagree with its manifest, or cannot be read at all."""


class MissingDependencyError(StorageError):
    """An optional package that this operation needs is not installed."""
