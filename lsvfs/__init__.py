"""lsvfs: SQLite straight out of Litestream replicas, live, with no restore."""

from . import log  # first: the NullHandler and LITESTREAM_LOG_LEVEL apply before anything logs
from .errors import (ChecksumError, GapError, LsvfsError, LTXError, MissingFileError, ReplicaError,
                     StorageError, URLError)
from .registry import open_replicas, stats
from .restore import RestoreResult, VerifyReport, restore, verify
from .vfs import connect, register, uri

__all__ = [
    "ChecksumError", "GapError", "LsvfsError", "LTXError", "MissingFileError", "ReplicaError",
    "StorageError", "URLError", "RestoreResult", "VerifyReport", "connect", "open_replicas", "register",
    "restore", "stats", "uri", "verify",
]
