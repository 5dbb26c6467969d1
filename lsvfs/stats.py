"""What a replica is doing: storage requests counted by kind, and the
snapshot of numbers `lsvfs.stats()`, `PRAGMA litestream_stats` and
`lsvfs stats` show.
"""

from __future__ import annotations

import threading
from typing import Any

from ._core import ffi, lib
from .storage.base import FileInfo, StorageClient, list_every_level

KINDS = ("list", "ranged_read", "whole_read")
"""Requests Python makes; reads the C read path makes itself are `local_read`."""


class CountingStorage:
    """A replica's storage client with every request and byte counted by kind.

    It wraps whatever client the replica uses (a test's fault wrapper too), so
    the counts are what the replica asked for, retries included.
    """

    def __init__(self, inner: StorageClient) -> None:
        self.inner = inner
        self.url = inner.url
        self.local = inner.local
        self._lock = threading.Lock()
        self._counts = {k: [0, 0] for k in KINDS}  # kind -> [requests, bytes]

    def _count(self, kind: str, nbytes: int) -> None:
        with self._lock:
            c = self._counts[kind]
            c[0] += 1
            c[1] += nbytes

    def list_files(self, level: int, min_txid: int = 0) -> list[FileInfo]:
        self._count("list", 0)
        return self.inner.list_files(level, min_txid)

    def list_every_level(self, min_txid: int = 0) -> list[FileInfo] | None:
        files = list_every_level(self.inner, min_txid)
        if files is not None:
            self._count("list", 0)
        return files

    def read(self, info: FileInfo, offset: int, length: int) -> bytes:
        data = self.inner.read(info, offset, length)
        self._count("ranged_read", len(data))
        return data

    def read_all(self, info: FileInfo) -> bytes:
        data = self.inner.read_all(info)
        self._count("whole_read", len(data))
        return data

    def close(self) -> None:
        self.inner.close()

    def counts(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {k: {"requests": r, "bytes": b} for k, (r, b) in self._counts.items()}


def local_reads(replica: Any) -> dict[str, int]:
    """Reads the C read path made itself from a directory replica's files."""
    reads, nbytes = ffi.new("uint64_t *"), ffi.new("uint64_t *")
    lib.lsvfs_replica_local_reads(replica, reads, nbytes)
    return {"requests": int(reads[0]), "bytes": int(nbytes[0])}


def cache_stats(c: Any) -> dict[str, int]:
    """The C page cache's counters as a dict."""
    return {"hits": int(c.hits), "misses": int(c.misses), "bytes": int(c.bytes), "entries": int(c.entries),
            "evictions": int(c.evictions), "max_bytes": int(c.max_bytes)}
