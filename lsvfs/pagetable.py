"""The copy-on-write page table of a snapshot (csrc/pagetable.c), seen from Python."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._core import ffi, lib
from .core import ENOMEM, IndexEntries, _alloc, _as_entries, strerror


class PageTable:
    """pgno -> (slot, offset, size) for one snapshot, copy-on-write in C.

    `clone()` is cheap (shares chunks of 1024 entries); `apply`/`truncate`
    then copy only the chunks they touch. Chunk reference counts are atomic,
    so tables sharing chunks may be used and freed from different threads;
    one table must not be mutated from two threads at once.
    """

    __slots__ = ("_t", "__weakref__")

    def __init__(self, _ptr: Any = None) -> None:
        if _ptr is None:
            _ptr = lib.lsvfs_ptable_new()
        if _ptr == ffi.NULL:
            raise MemoryError("page table allocation failed")
        self._t = ffi.gc(_ptr, lib.lsvfs_ptable_free)

    @property
    def cdata(self) -> Any:
        """The C table, for C calls that read it (lsvfs_snapshot_new clones it)."""
        return self._t

    def clone(self) -> PageTable:
        """A new table with the same entries, sharing every chunk."""
        return PageTable(lib.lsvfs_ptable_clone(self._t))

    def apply(self, slot: int, entries: IndexEntries | Sequence[tuple[int, int, int]]) -> None:
        """Point every entry's pgno at (slot, offset, size); slot must be > 0."""
        if not 0 < slot <= 0xFFFFFFFF:
            raise ValueError(f"slot must be in 1..2**32-1, not {slot}")
        ents = _as_entries(entries)
        rc = lib.lsvfs_ptable_apply(self._t, slot, ents.cdata, len(ents))
        if rc == ENOMEM:
            raise MemoryError("page table apply: out of memory")
        if rc:
            raise ValueError("page table apply: an entry has pgno 0")

    def truncate(self, commit: int) -> None:
        """Drop pages past `commit` and make the table exactly `commit` pages long."""
        rc = lib.lsvfs_ptable_truncate(self._t, commit)
        if rc == ENOMEM:
            raise MemoryError("page table truncate: out of memory")
        if rc:
            raise ValueError(f"page table truncate to {commit} failed: {strerror(rc)}")

    def get(self, pgno: int) -> tuple[int, int, int] | None:
        """(slot, offset, size) of the frame holding pgno, or None."""
        if not 0 < pgno <= 0xFFFFFFFF:
            return None
        loc = ffi.new("lsvfs_location *")
        if lib.lsvfs_ptable_get(self._t, pgno, loc):
            return None
        return (loc.slot, loc.offset, loc.size)

    def get_range(self, first: int, n: int) -> list[tuple[int, int, int] | None]:
        """get() for pgnos first..first+n-1 in one C call."""
        if n <= 0:
            return []
        out = _alloc("lsvfs_location[]", n)
        rc = lib.lsvfs_ptable_get_range(self._t, first, n, out)
        if rc:
            raise ValueError(f"page range {first}+{n} outside 1..2**32-1")
        res: list[tuple[int, int, int] | None] = []
        for i in range(n):
            loc = out[i]
            res.append((loc.slot, loc.offset, loc.size) if loc.slot else None)
        return res

    @property
    def max_pgno(self) -> int:
        """Table size in pages (the commit after the last truncate)."""
        return int(lib.lsvfs_ptable_max_pgno(self._t))

    @property
    def count(self) -> int:
        """Number of pgnos with an entry."""
        return int(lib.lsvfs_ptable_count(self._t))

    @property
    def memory(self) -> int:
        """Bytes this table references, shared chunks included."""
        return int(lib.lsvfs_ptable_memory(self._t))

    @property
    def unique_memory(self) -> int:
        """Bytes of chunks no other table shares: what this table costs on its own."""
        return int(lib.lsvfs_ptable_unique_memory(self._t))

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"PageTable(max_pgno={self.max_pgno}, count={self.count}, memory={self.memory})"


def plan_run(table: PageTable, pgno: int, most: int) -> tuple[int, IndexEntries]:
    """(slot, frames) a miss on `pgno` reads in one request: its frame and up to
    most - 1 following ones lying right after it in the same file."""
    out = _alloc("lsvfs_index_entry[]", most)
    slot = ffi.new("uint32_t *")
    n = lib.lsvfs_ptable_run(table.cdata, pgno, most, slot, out)
    return int(slot[0]), IndexEntries(out, n)
