"""The loader: new snapshots built from LTX files' headers and page indexes.

A snapshot is a base (or nothing) plus a chain of files. Each file costs its
header and its page index, read from its tail (a small file is read whole and
all its pages cached; `verify=files` reads every file whole to check its
CRC-64). The reads of a whole chain go out together on the replica's pool, so
hundreds of files cost a few round trips.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

from .. import core, ltx, pagetable, slots
from ..cache import FrameCache
from ..errors import LTXError
from ..futures import Task
from ..options import Options, Verify
from ..slots import FileSlots
from ..stats import CountingStorage
from ..storage.base import PARALLEL_REQUESTS, FileInfo
from ..verified import VerifiedCopies
from .lineage import Lineages
from .retry import Retry
from .snapshot import Snapshot

log = logging.getLogger(__name__)

TAIL_READ = 64 << 10
"""Bytes read from a file's end to find its index; files this small are read whole."""
HEAD_READ = 64 << 10
"""Bytes read from the start of the first file of a new chain (a snapshot or
the compaction it starts from), with its header and at the same time as its
tail: its first frames (page 1 and the schema) arrive in that round trip and
go into the cache, so a first query usually needs no request. Every other
larger file's head is its header and room for one frame: page 1, if the file
has it (frames are in page order), since a query starts by reading it."""
LOCAL_SERIAL_FILES = 8
"""Longest chain of local files whose indexes are read in turn rather than in parallel."""
LOAD_AHEAD = 4 * PARALLEL_REQUESTS
"""Files whose reads may be started ahead of the one being decoded: enough to
keep every worker busy, few enough that a long chain's bytes are not all
held at once."""


@dataclass(frozen=True)
class _Index:
    header: ltx.Header
    entries: core.IndexEntries


class Loader:
    """Builds the snapshots of one replica. It keeps no state of its own: the
    slots, the cache and the verified copies it fills each have their lock."""

    def __init__(self, storage: CountingStorage, cache: FrameCache, file_slots: FileSlots, pool: ThreadPoolExecutor,
                 verified: VerifiedCopies, options: Options, retry: Retry, lineages: Lineages,
                 on_index: Callable[[int, FileInfo, ltx.Header, bytes], None] | None = None) -> None:
        self._storage = storage
        self._cache = cache
        self._slots = file_slots
        self._pool = pool
        self._verified = verified
        self._options = options
        self._retry = retry
        self._lineages = lineages
        self._on_index = on_index

    def build(self, base: Snapshot | None, chain: list[FileInfo]) -> Snapshot:
        """A new snapshot: `base` plus `chain`, every file's reads in one stage.

        The reads of all files (whole small files; head and tail of larger
        ones) go out together on the pool, at most LOAD_AHEAD files ahead of
        the file being decoded here, so a chain of hundreds of files costs
        a few round trips, not hundreds. A short chain of local files is read
        in turn: a few preads each, cheaper than starting threads.
        """
        # Until a header says, guess SQLite's default page size for the one-frame heads.
        one_frame = ltx.HEADER_SIZE + _frame_bound(base.page_size if base is not None else 4096)
        local = self._storage.local

        def head(i: int) -> int:
            if local:
                return ltx.HEADER_SIZE  # no round trip to save
            return HEAD_READ if i == 0 and base is None else one_frame

        self._slots.reclaim()
        held = [self._slots.hold(f) for f in chain]
        started: dict[int, list[Task[bytes]]] = {}
        try:
            if local and len(chain) <= LOCAL_SERIAL_FILES:
                indexes = [self._load_index(f, slot, head(i)) for i, (f, slot) in enumerate(zip(chain, held))]
            else:
                indexes = []
                ahead = 0  # files whose reads are started
                for i, (f, slot) in enumerate(zip(chain, held)):
                    while ahead < min(i + LOAD_AHEAD, len(chain)):
                        g, parts = chain[ahead], self._parts(chain[ahead], head(ahead))
                        started[ahead] = [Task(self._pool, partial(self._read_part, g, p)) for p in parts]
                        ahead += 1
                    indexes.append(self._load_index(f, slot, head(i), started.pop(i)))
            table = base.table.clone() if base is not None else pagetable.PageTable()
            live = dict(base.live) if base is not None else {}
            page_size = base.page_size if base is not None else indexes[0].header.page_size
            for f, slot, idx in zip(chain, held, indexes):
                if idx.header.page_size != page_size:
                    raise LTXError(f"page size {idx.header.page_size} differs from the replica's {page_size}",
                                   f.name)
                slots.apply(table, live, slot, idx.entries, idx.header.commit)
            last = indexes[-1].header
            snap = Snapshot(last.max_txid, last.commit, page_size, last.timestamp, table, live,
                            base.lineage if base is not None else self._lineages.number, chain[-1])
            self._slots.track(snap, tuple(live))
            return snap
        finally:
            for tasks in started.values():  # a failed build drops the reads nobody will use
                for t in tasks:
                    t.cancel()
            self._slots.release(held)

    def _parts(self, f: FileInfo, head: int) -> list[tuple[int, int | None]]:
        """The reads that load `f`, as (offset, length; None = the whole file):
        a small file (or any, to check its CRC-64) whole, a larger one's first
        `head` bytes and its tail (the two never overlap)."""
        if f.size <= TAIL_READ or self._options.verify == Verify.FILES:
            return [(0, None)]
        return [(0, max(ltx.HEADER_SIZE, min(head, f.size - TAIL_READ))), (f.size - TAIL_READ, TAIL_READ)]

    def _read_part(self, f: FileInfo, part: tuple[int, int | None]) -> bytes:
        offset, length = part
        return self._storage.read_all(f) if length is None else self._storage.read(f, offset, length)

    def _load_index(self, f: FileInfo, slot: int, head: int, started: list[Task[bytes]] | None = None) -> _Index:
        """Header and page index of one file, from the reads `started` for it
        (or made here); a failed attempt is retried with fresh reads."""
        attempts = 0

        def attempt() -> _Index:
            nonlocal attempts
            attempts += 1
            if started is not None and attempts == 1:
                parts = [t.result() for t in started]
            else:
                parts = [self._read_part(f, part) for part in self._parts(f, head)]
            return self._decode_index(f, slot, head, parts)

        return self._retry(attempt, f.name)

    def _decode_index(self, f: FileInfo, slot: int, head_size: int, parts: list[bytes]) -> _Index:
        """The index from what `_parts` read. A small file is proven by its CRC-64
        and all its pages go into the cache; a larger one's head frames do."""
        if len(parts) == 1:
            data = parts[0]
            decoded = ltx.decode(data, f.name)
            ltx.check_name(f, decoded.header)
            _check_pages(f, decoded.header, decoded.entries)
            if f.size <= TAIL_READ:
                for i, (_, offset, _) in enumerate(decoded.entries):
                    self._cache.put((slot, offset), bytes(decoded.page(i)))
            if self._options.verify == Verify.FILES:
                self._verified.keep(slot, data)
            if self._on_index is not None:
                self._on_index(slot, f, decoded.header, data)
            return _Index(decoded.header, decoded.entries)
        head, tail = parts
        for (offset, want), got in zip(self._parts(f, head_size), parts):
            if len(got) != want:
                raise LTXError(f"read of {want} bytes at offset {offset} returned {len(got)}", f.name)
        header = ltx.Header.decode(head[:ltx.HEADER_SIZE], f.name)
        ltx.check_name(f, header)
        tail_start = f.size - len(tail)
        idx_off, idx_len = core.locate_index(tail, f.size, file=f.name)
        if idx_off < tail_start:  # an index longer than the tail: one more round trip
            tail = self._storage.read(f, idx_off, f.size - idx_off)
            tail_start = idx_off
        rel = idx_off - tail_start
        entries = core.decode_index(tail[rel:rel + idx_len], idx_off, file=f.name)
        _check_pages(f, header, entries)
        self._cache_head(f, slot, header, entries, head)
        if self._on_index is not None:  # the tail ends with the trailer
            self._on_index(slot, f, header, tail)
        return _Index(header, entries)

    def _cache_head(self, f: FileInfo, slot: int, header: ltx.Header, entries: core.IndexEntries,
                    head: bytes) -> None:
        """Decode the frames lying wholly inside `head` into the cache. A frame that
        fails is left for the read path, which retries it and reports it if a
        query needs that page: the open does not fail for a page nobody asked for."""
        n = bisect.bisect_right(range(len(entries)), len(head), key=lambda i: entries[i][1] + entries[i][2])
        if n == 0:
            return
        try:
            self._cache.fill(slot, head, 0, entries[:n], header.page_size, f.name)
        except LTXError as exc:
            log.debug("%s: frames read with the header not cached: %s", f.name, exc)


def _frame_bound(page_size: int) -> int:
    """The largest frame of a page: its prefix and LZ4's worst case for the page."""
    return core.FRAME_PREFIX + page_size + page_size // 255 + 16


def _check_pages(f: FileInfo, header: ltx.Header, entries: core.IndexEntries) -> None:
    """Format rules the index must meet whatever mode: no page past the file's
    commit, and a snapshot holds every page 1..commit but the lock page. They
    catch a corrupt commit in a header read without its file's CRC-64."""
    n = len(entries)
    if n and entries[n - 1][0] > header.commit:
        raise LTXError(f"holds page {entries[n - 1][0]} beyond its commit of {header.commit} pages", f.name)
    if header.is_snapshot:
        want = header.commit - (1 if ltx.lock_pgno(header.page_size) <= header.commit else 0)
        if n != want:
            raise LTXError(f"snapshot of {header.commit} pages holds {n} pages", f.name)
