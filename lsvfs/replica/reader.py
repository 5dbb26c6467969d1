"""The page reader: the pages C asked for on a miss, and the reads around them.

A miss reads a run of adjacent frames in one request, verified and decoded
into the cache. On remote storage a sequential reader also gets chunks read
ahead in parallel, in a window that doubles while it keeps coming; prefetch
reads a whole snapshot that fits the cache in the background. A snapshot
whose file retention removed is rebuilt at the same TXID from the files that
compacted it; one of a replaced lineage reads only what is still listed.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future

from .. import ltx, pagetable, verified
from ..cache import FrameCache
from ..errors import LineageError, LTXError, MissingFileError
from ..fetcher import AHEAD, PREFETCH, URGENT, Fetcher, Job
from ..futures import claim
from ..lru import LRU
from ..options import Options, Prefetch, Verify
from ..plan import Target, list_past, plan_for
from ..ranges import Range, plan
from ..stats import CountingStorage
from ..storage.base import FileInfo
from ..verified import VerifiedCopies
from .lineage import Lineages
from .loader import Loader
from .retry import Retry
from .snapshot import HISTORIC_SNAPSHOTS, Snapshot

log = logging.getLogger(__name__)

CHUNK_BYTES = 2 << 20
"""Pages per read-ahead or prefetch request, in bytes of database."""
AHEAD_BYTES = 16 << 20
"""Most a sequential reader's read-ahead window grows to (and at most a quarter of the cache)."""
AHEAD_MAX_GAP = 256 << 10
"""Bytes of unwanted frames a read-ahead or prefetch request reads rather than starting a second request."""
MIN_AHEAD_PAGES = 16
"""Pages a quarter of the cache must hold for parallel read-ahead to be worth it."""
AHEAD_KEPT = 1024
"""Read-ahead chunks remembered, so a window is scheduled once."""

Wanted = list[tuple[int, tuple[int, int, int]]]
"""Pages to read: (pgno, its location (slot, offset, size))."""


class PageReader:
    """Reads the pages of one replica's snapshots into its cache."""

    def __init__(self, name: str, options: Options, storage: CountingStorage, cache: FrameCache, fetcher: Fetcher,
                 verified_copies: VerifiedCopies, loader: Loader, lineages: Lineages, retry: Retry, *,
                 file: Callable[[int], FileInfo], current: Callable[[], Snapshot],
                 publish: Callable[[Snapshot], None], stop: threading.Event) -> None:
        self._name = name
        self._options = options
        self._storage = storage
        self._cache = cache
        self._fetcher = fetcher
        self._verified = verified_copies
        self._loader = loader
        self._lineages = lineages
        self._retry = retry
        self._file = file
        self._current = current
        self._publish = publish
        self._stop = stop
        self._lock = threading.Lock()  # guards the three tables and two counters below
        self._ahead: LRU[tuple[int, int], int] = LRU(AHEAD_KEPT)  # (TXID, chunk) -> window
        self._rebased: dict[int, Future[Snapshot]] = {}  # TXID -> its rebuild in progress
        self._rebased_done: LRU[int, Snapshot] = LRU(HISTORIC_SNAPSHOTS)  # TXID -> rebuilt after retention
        self.prefetch_requests = 0
        self.prefetch_done = 0

    def new_lineage(self) -> None:
        """Forget what was read ahead and rebuilt in the old lineage."""
        with self._lock:
            self._rebased_done.clear()
            self._ahead.clear()

    # ---- a miss -----------------------------------------------------------

    def read_page(self, snap: Snapshot, pgno: int, readahead: int = 1, *, _rebased: bool = False) -> bytes:
        """Page `pgno` of `snap`, verified; up to `readahead` following pages of
        the same file are fetched in the same request and cached."""
        loc = snap.table.get(pgno)
        if loc is not None:
            page = self._cache.get(loc[:2], snap.page_size)
            if page is not None:
                return page
        if loc is None:
            if pgno == ltx.lock_pgno(snap.page_size):
                return bytes(snap.page_size)
            raise LTXError(f"page {pgno} of TXID {snap.txid:016x} is in no LTX file (commit {snap.commit})")
        slot, offset, _ = loc
        self._check_lineage(snap, slot)

        def load() -> bytes:
            if self._reads_ahead():
                if readahead > 1 and readahead >= self._options.readahead:
                    self._read_ahead(snap, pgno)
                if self._fetcher.serve(slot, offset):
                    page = self._cache.get((slot, offset), snap.page_size)
                    if page is not None:
                        return page
            return self._fetch_run(snap, pgno, readahead)

        try:
            return self._cache.get_or_load((slot, offset), snap.page_size, load)
        except MissingFileError as exc:
            if snap.lineage != self._lineages.number:
                raise LineageError(self._lineages.gone(snap)) from exc
            # Retention removed a file this snapshot points at; the same TXID
            # rebuilt from the files that compacted it has the same bytes. The
            # rebuilt snapshot is kept, so a pinned transaction re-plans once,
            # not once per page; if it is missing files too, the read fails.
            if _rebased:
                raise
            alt = self._rebased_snapshot(snap)
            if alt is snap:
                raise
            try:
                return self.read_page(alt, pgno, readahead, _rebased=True)
            except MissingFileError:
                with self._lock:
                    if self._rebased_done.peek(alt.txid) is alt:
                        self._rebased_done.pop(alt.txid)
                raise

    def _check_lineage(self, snap: Snapshot, slot: int) -> None:
        """A snapshot of an old lineage reads only files still listed as they were."""
        if snap.lineage != self._lineages.number and not self._lineages.survives(self._file(slot)):
            raise LineageError(self._lineages.gone(snap))

    def _fetch_run(self, snap: Snapshot, pgno: int, readahead: int) -> bytes:
        """Page `pgno`, read with up to `readahead` - 1 following frames in one
        request and decoded straight into the cache."""
        slot, run = pagetable.plan_run(snap.table, pgno, max(1, min(readahead, snap.commit - pgno + 1)))
        first, last = run[0], run[len(run) - 1]
        offset, length = first[1], last[1] + last[2] - first[1]
        f = self._file(slot)
        if self._options.verify == Verify.FILES:
            path = self._verified.path(slot, lambda: self._retry(lambda: verified.check(self._storage.read_all(f), f),
                                                                 f.name))

            def read() -> bytes:
                with open(path, "rb") as fh:
                    return os.pread(fh.fileno(), length, offset)
        else:
            def read() -> bytes:
                return self._storage.read(f, offset, length)

        return self._retry(lambda: self._cache.fill(slot, read(), offset, run, snap.page_size, f.name, asked=True),
                           f.name)

    def _rebased_snapshot(self, old: Snapshot) -> Snapshot:
        """`old`'s TXID rebuilt from the files the replica has now (one build, shared)."""
        txid = old.txid
        if old.lineage != self._lineages.number:
            return old  # rebuilt from today's files, it would be the new lineage's TXID
        with self._lock:
            done = self._rebased_done.peek(txid)
            if done is not None and done is not old:
                self._rebased_done.get(txid)  # now the most recently used
                return done
            fut, owner = claim(self._rebased, txid)
        if owner:
            try:
                snap = self._loader.build(None, self._retry(
                    lambda: plan_for(self._storage, Target(txid), list_past(self._storage)), self._name))
                with self._lock:
                    self._rebased_done.put(txid, snap)
                fut.set_result(snap)
                if self._current().txid == txid:
                    self._publish(snap)
            except BaseException as exc:  # noqa: BLE001 - handed to every waiter, not swallowed
                fut.set_exception(exc)
            finally:
                with self._lock:
                    self._rebased.pop(txid, None)
        return fut.result()

    # ---- reads ahead of the readers ---------------------------------------

    def _reads_ahead(self) -> bool:
        """Whether misses use parallel ranged reads: remote storage, frames verified one by one."""
        return not self._storage.local and self._options.verify == Verify.FRAMES

    def _read_ahead(self, snap: Snapshot, pgno: int) -> None:
        """A sequential reader missed `pgno`: make sure the chunks from its
        chunk on are being read, in parallel, a window that doubles while
        the reader keeps coming (bounded by AHEAD_BYTES and the cache)."""
        ahead = min(AHEAD_BYTES, self._cache.max_bytes // 4)  # what is read ahead must stay cached
        if ahead < MIN_AHEAD_PAGES * snap.page_size:
            return  # a cache this small keeps nothing ahead: the miss's own run is all it gets
        chunk = min(CHUNK_BYTES, ahead)
        chunk_pages = chunk // snap.page_size
        most = max(1, ahead // chunk)
        last = (snap.commit - 1) // chunk_pages
        k = (pgno - 1) // chunk_pages
        todo = []
        with self._lock:
            prev = self._ahead.peek((snap.txid, k))
            window = min(most, prev * 2) if prev else min(most, 2)
            for j in range(k, min(last, k + window - 1) + 1):
                if (snap.txid, j) not in self._ahead:
                    todo.append(j)
                self._ahead.put((snap.txid, j), window)
        for j in todo:
            first = j * chunk_pages + 1
            self._submit(snap, self._uncached(snap, first, min(chunk_pages, snap.commit - first + 1)),
                         URGENT if j == k else AHEAD, chunk)

    def prefetch(self, snap: Snapshot) -> None:
        """Fetch all of `snap` into the cache in the background (option
        `prefetch`): by default only when it fits the cache and storage is
        remote; never more than the cache holds."""
        mode = self._options.prefetch
        if mode == Prefetch.OFF or self._options.verify != Verify.FRAMES:
            return
        if mode == Prefetch.AUTO and (self._storage.local or snap.size > self._cache.max_bytes):
            return

        def plan_all() -> None:
            chunk_pages = max(1, CHUNK_BYTES // snap.page_size)
            budget = self._cache.max_bytes // snap.page_size
            for first in range(1, min(snap.commit, budget) + 1, chunk_pages):
                if self._stop.is_set():
                    return
                self._submit(snap, self._uncached(snap, first, min(chunk_pages, budget - first + 1,
                                                                   snap.commit - first + 1)), PREFETCH)

        self._fetcher.submit(Job(plan_all, PREFETCH))

    def _uncached(self, snap: Snapshot, first: int, n: int) -> Wanted:
        locs = snap.table.get_range(first, n)
        return [(first + i, loc) for i, loc in enumerate(locs) if loc is not None
                and (loc[0], loc[1]) not in self._cache and self._fetcher.find(loc[0], loc[1]) is None]

    def _submit(self, snap: Snapshot, wanted: Wanted, priority: int, chunk: int = CHUNK_BYTES) -> None:
        """Ranged reads of `wanted` pages into the cache, as fetcher jobs readers can find."""
        for rng in plan(wanted, chunk + AHEAD_MAX_GAP, min(chunk, AHEAD_MAX_GAP)):
            if priority == PREFETCH:
                with self._lock:
                    self.prefetch_requests += 1
            self._fetcher.submit(Job(self._cache_job(snap, rng, priority), priority, rng.slot, rng.start, rng.end))

    def _cache_job(self, snap: Snapshot, rng: Range, priority: int) -> Callable[[], None]:
        f = self._file(rng.slot)  # `snap`, held by the closure, keeps the slot alive

        def run() -> None:
            if self._stop.is_set():
                return
            self._retry(lambda: self._cache.fill(rng.slot, self._storage.read(f, rng.start, rng.length), rng.start,
                                                 rng.entries, snap.page_size, f.name), f.name)
            if priority == PREFETCH:
                with self._lock:
                    self.prefetch_done += 1

        return run
