"""The C twins of snapshots: which Snapshot each C snapshot mirrors.

C holds its own reference-counted snapshot for every Snapshot it serves
(csrc/replica.c): the newest, the ones read transactions pin, the ones a
PRAGMA chose. Each twin carries an id; the Snapshot (and so its page table
and its files) is kept here until C reports the twin freed.
"""

from __future__ import annotations

import threading
from typing import Any

from .._core import ffi, lib
from .snapshot import Snapshot


class Twins:
    """The Snapshots of one C replica's live twins, by id."""

    def __init__(self, c: Any) -> None:
        self._c = c
        self._lock = threading.Lock()  # guards the two fields below
        self._snapshots: dict[int, Snapshot] = {}  # C snapshot id -> the Snapshot it mirrors
        self._next_id = 0

    def new(self, snap: Snapshot) -> Any:
        """A C twin of `snap` holding one reference, for the caller to hand on
        (publish, lsvfs_file_choose). `snap` is kept until C frees the twin."""
        self.drain()
        with self._lock:
            self._next_id += 1
            sid = self._next_id
            self._snapshots[sid] = snap
        info = ffi.new("lsvfs_snapshot_info *", {"id": sid, "txid": snap.txid, "timestamp_ms": snap.timestamp_ms,
                                                 "commit": snap.commit, "page_size": snap.page_size,
                                                 "lineage": snap.lineage})
        c = lib.lsvfs_snapshot_new(self._c, snap.table.cdata, info)
        if c == ffi.NULL:
            with self._lock:
                del self._snapshots[sid]
            raise MemoryError("snapshot allocation failed")
        return c

    def of(self, c: Any) -> Snapshot:
        """The Snapshot a live C snapshot mirrors."""
        info = ffi.new("lsvfs_snapshot_info *")
        lib.lsvfs_snapshot_get_info(c, info)
        return self.of_id(info.id)

    def of_id(self, sid: int) -> Snapshot:
        with self._lock:
            return self._snapshots[sid]

    def drain(self) -> None:
        """Let go of the Snapshots whose C twins are gone (and so, in time, of their files)."""
        ids = ffi.new("uint64_t[]", 64)
        while n := lib.lsvfs_replica_drain_freed(self._c, ids, 64):
            with self._lock:
                for i in range(n):
                    self._snapshots.pop(ids[i], None)

    def alive(self) -> int:
        """C snapshots alive now (the newest, pinned ones, chosen ones)."""
        self.drain()
        return int(lib.lsvfs_replica_live_snapshots(self._c))
