"""The Snapshot: the database at one TXID, immutable, shared by every part of a replica."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import pagetable
from ..storage.base import FileInfo

HISTORIC_SNAPSHOTS = 4
"""Snapshots of past TXIDs kept (pinned by a PRAGMA, or rebuilt after retention), each kind."""


@dataclass(frozen=True)
class Snapshot:
    """The database at one TXID: immutable, shareable across threads."""

    txid: int
    commit: int
    page_size: int
    timestamp_ms: int
    table: pagetable.PageTable
    live: dict[int, int] = field(default_factory=dict, compare=False, repr=False)
    """slot -> how many of this snapshot's pages live in that file."""
    lineage: int = 0
    """Which lineage of the replica (counted from 0 at open) the TXID belongs to."""
    tip: FileInfo | None = field(default=None, compare=False)
    """The file the snapshot's TXID was read from (the last of its chain)."""

    @property
    def size(self) -> int:
        return self.commit * self.page_size
