"""lsvfs: SQLite straight out of Litestream replicas."""

from .errors import ChecksumError, GapError, LsvfsError, LTXError, ReplicaError, StorageError, URLError

__all__ = ["ChecksumError", "GapError", "LsvfsError", "LTXError", "ReplicaError", "StorageError", "URLError"]
