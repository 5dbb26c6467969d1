"""File slots: the small numbers page tables and cache keys use for LTX files.

A slot is held by every live snapshot with pages in its file and by builds
in progress; the last holder frees it, so a replica polled forever keeps
only the files its live snapshots use. Slot numbers are never reused (0
means "no entry"), so a cache key naming a freed slot is merely stale.
A file is known by its listing (name, size, time) and the replica's lineage:
after the replica is replaced, a file listed the same way gets a new slot,
so nothing cached or hydrated from the old lineage is found under it.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable

from . import core, pagetable
from .errors import ReplicaError
from .storage.base import FileInfo


class FileSlots:
    """Slot numbers for files, reference counted by holders."""

    def __init__(self, on_free: Callable[[list[int]], None] | None = None,
                 on_new: Callable[[int, FileInfo], None] | None = None) -> None:
        self._files: dict[int, FileInfo] = {}
        self._slots: dict[tuple[int, FileInfo], int] = {}  # (lineage, file) -> slot
        self._keys: dict[int, tuple[int, FileInfo]] = {}
        self._refs: dict[int, int] = {}
        self._next = 1
        self._dead: deque[tuple[int, ...]] = deque()  # slots of snapshots garbage-collected since
        self._lock = threading.Lock()
        self._on_free = on_free
        self._on_new = on_new
        self._lineage = 0

    def new_lineage(self) -> None:
        """From now on every file gets a slot of its own, apart from the old lineage's."""
        with self._lock:
            self._lineage += 1

    def hold(self, f: FileInfo) -> int:
        """The slot of `f`, with one more hold on it (pair with release)."""
        with self._lock:
            key = (self._lineage, f)
            slot = self._slots.get(key)
            new = slot is None
            if slot is None:
                slot = self._slots[key] = self._next
                self._next += 1
                self._files[slot] = f
                self._keys[slot] = key
            self._refs[slot] = self._refs.get(slot, 0) + 1
        if new and self._on_new is not None:
            self._on_new(slot, f)
        return slot

    def release(self, slots: Iterable[int]) -> None:
        freed = []
        with self._lock:
            for slot in slots:
                n = self._refs[slot] - 1
                if n:
                    self._refs[slot] = n
                    continue
                del self._refs[slot]
                del self._files[slot]
                del self._slots[self._keys.pop(slot)]
                freed.append(slot)
        if freed and self._on_free is not None:
            self._on_free(freed)

    def track(self, owner: object, slots: tuple[int, ...]) -> None:
        """Hold `slots` until `owner` is garbage-collected."""
        with self._lock:
            for slot in slots:
                self._refs[slot] += 1
        weakref.finalize(owner, self._dead.append, slots)

    def reclaim(self) -> None:
        """Release the slots of owners collected since the last call.

        Finalizers only queue (they may run in any thread, at any allocation);
        the work happens here, called from polls and builds.
        """
        while True:
            try:
                slots = self._dead.popleft()
            except IndexError:
                return
            self.release(slots)

    def file(self, slot: int) -> FileInfo:
        f = self._files.get(slot)
        if f is None:
            raise ReplicaError(f"no file for slot {slot} (snapshot outlived its files)")
        return f

    def slots(self) -> list[int]:
        with self._lock:
            return list(self._files)

    def __len__(self) -> int:
        with self._lock:
            return len(self._files)


def apply(table: pagetable.PageTable, live: dict[int, int], slot: int, entries: core.IndexEntries,
          commit: int) -> None:
    """Apply one file's entries then its commit to `table`, keeping `live`
    (pages per slot) exact: the pages overwritten or cut off leave their slots."""

    def drop(locs: list[tuple[int, int, int] | None]) -> None:
        for loc in locs:
            if loc is not None:
                left = live[loc[0]] - 1
                if left:
                    live[loc[0]] = left
                else:
                    del live[loc[0]]

    n = len(entries)
    if n and table.count:
        pgnos = entries.pgnos
        span = pgnos[-1] - pgnos[0] + 1
        if span <= 4 * n:
            first = pgnos[0]
            locs = table.get_range(first, span)
            drop([locs[p - first] for p in pgnos])
        else:
            drop([table.get(p) for p in pgnos])
    table.apply(slot, entries)
    if n:
        live[slot] = live.get(slot, 0) + n
    end = table.max_pgno
    if end > commit:
        drop(table.get_range(commit + 1, end - commit))
    table.truncate(commit)
