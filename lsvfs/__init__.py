"""lsvfs: SQLite straight out of Litestream replicas, live, with no restore."""

from . import log  # noqa: F401 - first: the NullHandler and LITESTREAM_LOG_LEVEL apply before anything logs
from .bookmark import bookmark, wait_for
from .errors import (
    BookmarkError,
    ChecksumError,
    GapError,
    LineageError,
    LsvfsError,
    LTXError,
    MissingFileError,
    ReplicaError,
    StorageError,
    URLError,
    WaitTimeout,
)
from .registry import open_replicas, stats
from .restore import RestoreResult, VerifyReport, restore, verify
from .vfs import connect, register, uri

__version__ = "0.1.0"  # the one place the version lives (pyproject.toml reads it)

__all__ = [
    "BookmarkError", "ChecksumError", "GapError", "LineageError", "LsvfsError", "LTXError", "MissingFileError",
    "ReplicaError", "StorageError", "URLError", "WaitTimeout", "RestoreResult", "VerifyReport", "bookmark",
    "connect", "open_replicas", "register", "restore", "stats", "uri", "verify", "wait_for",
]
