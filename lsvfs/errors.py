"""Typed exceptions: every failure a user can see is one of these."""

from __future__ import annotations


class LsvfsError(Exception):
    """Base class of every error lsvfs raises on purpose."""


class LTXError(LsvfsError):
    """An LTX file is malformed, truncated or fails a checksum."""

    def __init__(self, reason: str, file: str | None = None) -> None:
        self.reason = reason
        self.file = file
        super().__init__(f"{file}: {reason}" if file else reason)


class ChecksumError(LTXError):
    """Bytes decoded cleanly but a CRC-64 does not match."""


class ReplicaError(LsvfsError):
    """The replica as a whole cannot give what was asked (empty, gap, no such TXID)."""


class GapError(ReplicaError):
    """The restore plan cannot bridge two TXIDs."""

    def __init__(self, before: int, after: int | None, detail: str = "") -> None:
        self.before = before
        self.after = after
        nxt = f"{after:016x}" if after is not None else "nothing"
        msg = f"gap in replica: have TXIDs up to {before:016x}, next file starts at {nxt}"
        super().__init__(msg + (f" ({detail})" if detail else ""))


class LineageError(ReplicaError):
    """The replica was replaced by another lineage, and what was asked belongs to the old one."""


class WaitTimeout(ReplicaError):
    """A replica did not reach a bookmark's TXID within `wait_timeout` (SQLite's busy code)."""

    def __init__(self, name: str, wanted: int, newest: int, waited: float) -> None:
        self.wanted = wanted
        self.newest = newest
        super().__init__(f"replica {name} did not reach TXID {wanted:016x} within {waited:g}s (wait_timeout); "
                         f"the newest TXID seen is {newest:016x}")


class SharedDirError(ReplicaError):
    """A `shared_dir` that cannot be used: not creatable or writable, writable by
    other users, or already mirroring another replica."""


class StorageError(LsvfsError):
    """Talking to storage failed (unreachable, denied, missing object, short read)."""


class URLError(LsvfsError, ValueError):
    """A replica URL that lsvfs cannot use."""


class MissingFileError(StorageError):
    """An LTX file is gone from storage (deleted by retention or never there)."""


class MissingExtraError(StorageError):
    """The client library for a URL scheme is not installed; names the extra to install."""


class BookmarkError(LsvfsError):
    """No bookmark: Litestream's control socket is off or unreachable, does not manage the
    database, failed to sync it, or did not confirm the upload in time."""
