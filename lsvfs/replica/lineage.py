"""Which lineage of the replica snapshots belong to, and the evidence that tells lineages apart.

A replica path can be wiped and written again by another primary: TXIDs start
again at 1, or reach ours with other bytes. The poller decides when that
happened (lsvfs/replica/poller.py); this holds the outcome: the lineage new
snapshots get, the listing that found it, the old lineage's files still
listed as they were (all an old snapshot may go on reading), and the file
the current TXID was read from with its header time (what the next listing
is checked against).
"""

from __future__ import annotations

import threading

from ..errors import LsvfsError
from ..plan import Target, build
from ..storage.base import FileInfo
from .snapshot import Snapshot


class Lineages:
    """The lineage of one replica: its number, counted from 0 at open, and its evidence."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()  # guards every field below
        self.number = 0
        self.changes = 0
        self._survivors: frozenset[FileInfo] = frozenset()  # old-lineage files still listed as they were
        self._listing: list[FileInfo] = []  # the listing that found the current lineage
        self._tip: tuple[FileInfo, int] | None = None  # a file ending at the current TXID, its header time

    def listed(self, files: list[FileInfo]) -> None:
        """`files` is the listing the current lineage was found in."""
        with self._lock:
            self._listing = files

    def begin(self, files: list[FileInfo]) -> None:
        """A new lineage starts; of the old one, only `files` (as listed) may still be read."""
        with self._lock:
            self.number += 1
            self._survivors = frozenset(files)

    def followed(self) -> None:
        """Snapshots of the new lineage are published (counted for stats)."""
        with self._lock:
            self.changes += 1

    def published(self, snap: Snapshot) -> None:
        """`snap` is the newest: its tip is what the next listing is checked against."""
        if snap.tip is not None:
            with self._lock:
                self._tip = (snap.tip, snap.timestamp_ms)

    def tip(self) -> tuple[FileInfo, int] | None:
        return self._tip

    def confirm_tip(self, f: FileInfo, timestamp_ms: int) -> None:
        """`f`, listed now, ends at the current TXID with the same header time: the same lineage."""
        with self._lock:
            self._tip = (f, timestamp_ms)

    def survives(self, f: FileInfo) -> bool:
        """Whether an old lineage's snapshot may still read `f`."""
        return f in self._survivors

    def gone(self, snap: Snapshot) -> str:
        """Why `snap`, of an old lineage, can no longer be read."""
        with self._lock:
            listing = self._listing
        try:
            build(listing, Target(snap.txid))
            there = "exists in the new lineage too (a pinned connection sets PRAGMA litestream_txid again to read it)"
        except LsvfsError:
            there = "does not exist in the new lineage"
        return (f"replica {self._name} was replaced by another lineage: TXID {snap.txid:016x} of the old one "
                f"can no longer be read; that TXID {there}")
