"""The storage contract: list a level's LTX files, read byte ranges of one.

Every backend (directory, S3, GCS, Azure, SFTP, WebDAV, NATS, OSS) implements
`StorageClient`; everything above storage (planning, polling, the VFS) talks
only to this protocol, so fault injection in tests wraps a real client rather
than replacing it. Where each backend keeps a level's files (the layout) is
decided here and only here: `level_dir`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

from ..errors import LTXError, StorageError

LEVELS = tuple(range(10))
"""Levels Litestream 0.5 writes: 0 per sync, 1..8 compactions, 9 snapshots."""
SNAPSHOT_LEVEL = 9

PARALLEL_REQUESTS = 64
"""How many requests a replica has in flight at once on remote storage: the
one place that says it. Opening a chain of hundreds of files is a stage of
round trips, not hundreds; every storage client's connection pool holds this
many connections, so none of those requests waits for one or reconnects."""

_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.ltx$")


def check_level(level: int) -> None:
    """Reject a level Litestream never writes (a caller bug, hence ValueError)."""
    if isinstance(level, bool) or level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS[0]}..{LEVELS[-1]}, got {level!r}")


Layout = Literal["hex", "ltx"]
"""How Litestream 0.5 names a level's folder: "hex" = `<path>/<level:04x>/`
(S3, OSS); "ltx" = `<path>/ltx/<level in decimal>/` (directory, GCS, Azure,
SFTP, WebDAV, NATS). Checked against `litestream replicate` 0.5.17 in the
backend tests."""

LAYOUTS: dict[str, Layout] = {
    "file": "ltx", "s3": "hex", "oss": "hex", "gs": "ltx", "abs": "ltx",
    "sftp": "ltx", "webdav": "ltx", "webdavs": "ltx", "nats": "ltx",
}
"""The layout of each URL scheme."""


def level_dir(path: str, level: int, layout: Layout) -> str:
    """`<path>/<level folder>/` with the path's slashes trimmed; no leading
    slash when `path` is empty (object keys), so callers that need an absolute
    path prepend their own root."""
    check_level(level)
    sub = f"{level:04x}/" if layout == "hex" else f"ltx/{level}/"
    p = path.strip("/")
    return f"{p}/{sub}" if p else sub


def infos_from_names(level: int, entries: Iterable[tuple[str, int, datetime | None]],
                     min_txid: int = 0) -> list[FileInfo]:
    """FileInfos of the LTX names among `entries` (name, size, modified) with
    min_txid >= `min_txid`, sorted by (min, max). Other names (temp files
    while Litestream writes, strays) are skipped. Shared by every backend that
    lists a whole level and filters it itself."""
    out: list[FileInfo] = []
    for name, size, modified in entries:
        try:
            lo, hi = parse_filename(name)
        except LTXError:
            continue
        if lo >= min_txid:
            out.append(FileInfo(level, lo, hi, int(size), modified))
    out.sort(key=lambda f: (f.min_txid, f.max_txid))
    return out


def format_filename(min_txid: int, max_txid: int) -> str:
    return f"{min_txid:016x}-{max_txid:016x}.ltx"


def parse_filename(name: str) -> tuple[int, int]:
    """Return (min_txid, max_txid) from an LTX file name, or raise LTXError."""
    m = _NAME.match(name)
    if not m:
        raise LTXError("not an LTX file name (want <min:016x>-<max:016x>.ltx)", name)
    lo, hi = int(m.group(1), 16), int(m.group(2), 16)
    if lo == 0 or hi < lo:
        raise LTXError(f"invalid TXID range {lo:016x}-{hi:016x}", name)
    return lo, hi


@dataclass(frozen=True, order=True)
class FileInfo:
    """One LTX file in a replica. Immutable once written, so it is a cache key."""

    level: int
    min_txid: int
    max_txid: int
    size: int
    modified: datetime | None = None

    @property
    def name(self) -> str:
        """A stable human-readable name, used in every error message."""
        return f"L{self.level}/{format_filename(self.min_txid, self.max_txid)}"

    @property
    def key(self) -> tuple[int, int, int]:
        """(level, min_txid, max_txid): the file as its name says, whatever its size and time.
        Listings and copies are matched on it; another lineage may reuse it for other bytes."""
        return self.level, self.min_txid, self.max_txid


def check_range(offset: int, length: int) -> None:
    """Reject a negative read range (a caller bug, hence ValueError)."""
    if offset < 0 or length < 0:
        raise ValueError(f"negative offset/length ({offset}, {length})")


def exact(data: bytes, info: FileInfo, where: str, offset: int | None = None, length: int | None = None) -> bytes:
    """`data` if it is what was asked, `length` bytes at `offset` (or, with no
    length, the whole file); StorageError naming the file otherwise. Every
    client checks its reads with this, so a short or long answer never passes."""
    if length is None:
        if len(data) != info.size:
            raise StorageError(f"{info.name}: {where} is {len(data)} bytes, expected {info.size}")
    elif len(data) != length:
        why = " (smaller than expected)" if len(data) < length else ""
        raise StorageError(f"{info.name}: short read of {where}: wanted {length} bytes at offset {offset}, "
                           f"got {len(data)}{why}")
    return data


@runtime_checkable
class StorageClient(Protocol):
    """Read-only access to one replica."""

    url: str
    local: bool
    """True when requests are local file-system calls (no round trip): callers
    then read small chains in turn rather than starting threads."""

    def list_files(self, level: int, min_txid: int = 0) -> list[FileInfo]:
        """Files of `level` whose min_txid >= `min_txid`, sorted by (min, max)."""
        ...

    def read(self, info: FileInfo, offset: int, length: int) -> bytes:
        """Exactly `length` bytes at `offset` of the file, or StorageError."""
        ...

    def read_all(self, info: FileInfo) -> bytes:
        """The whole file; StorageError if it is not `info.size` bytes."""
        ...

    def close(self) -> None:
        ...


def list_every_level(storage: object, min_txid: int = 0) -> list[FileInfo] | None:
    """Every level's files in one listing, for a client that can (S3: one LIST
    under the replica's path instead of one per level); None if it cannot."""
    every = getattr(storage, "list_every_level", None)
    files: list[FileInfo] | None = None if every is None else every(min_txid)
    return files

