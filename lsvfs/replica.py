"""A live replica: snapshots, the poller, and page reads on a cache miss.

Every connection to a URL shares its Replica (lsvfs/registry.py): one
poller, one page table, one cache. Each poll that finds new files publishes
a new immutable Snapshot to the C side (csrc/snapshot.c), where a read
transaction pins one, so it sees exactly one TXID with nothing to merge and
nothing to race on. Python is asked for pages only on a cache miss.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from . import core, ltx, pagetable, slots, verified
from ._core import ffi, lib
from .cache import FrameCache
from .errors import GapError, LineageError, LsvfsError, LTXError, MissingFileError, ReplicaError, StorageError
from .fetcher import AHEAD, PREFETCH, URGENT, Fetcher, Job
from .futures import Task, claim
from .hydration import Hydrator
from .options import Options
from .plan import Target, build, extend, list_all, plan_for
from .ranges import Range, plan
from .slots import FileSlots
from .stats import CountingStorage, cache_stats, local_reads
from .storage import open_storage
from .storage.base import PARALLEL_REQUESTS, SNAPSHOT_LEVEL, FileInfo, StorageClient
from .storage.file import FileStorage
from .storage.redact import redact_url
from .timeutil import format_time
from .verified import VerifiedCopies

log = logging.getLogger(__name__)
T = TypeVar("T")

TAIL_READ = 64 << 10
"""Bytes read from a file's end to find its index; files this small are read whole."""
HEAD_READ = 64 << 10
"""Bytes read from the start of the first file of a new chain (a snapshot or
the compaction it starts from), with its header and at the same time as its
tail: its first frames (page 1 and the schema) arrive in that round trip and
go into the cache, so a first query usually needs no request. Every other
larger file's head is its header and room for one frame: page 1, if the file
has it (frames are in page order), since a query starts by reading it."""
FULL_SCAN_EVERY = 10
"""Polls between listings of every level even when L0 shows nothing new."""
HISTORIC_SNAPSHOTS = 4
LOCAL_SERIAL_FILES = 8
"""Longest chain of local files whose indexes are read in turn rather than in parallel."""
LOAD_AHEAD = 4 * PARALLEL_REQUESTS
"""Files whose reads may be started ahead of the one being decoded: enough to
keep every worker busy, few enough that a long chain's bytes are not all
held at once."""
CLOSE_WAIT = 1.0
"""Seconds close() waits for a poll in progress; a poller stuck in storage finishes on its own."""
FETCH_WORKERS = 8
"""Ranged reads in flight at once for read-ahead, prefetch and hydration."""
CHUNK_BYTES = 2 << 20
"""Pages per read-ahead or prefetch request, in bytes of database."""
AHEAD_BYTES = 16 << 20
"""Most a sequential reader's read-ahead window grows to (and at most a quarter of the cache)."""
MAX_GAP = 256 << 10
"""Bytes of unwanted frames read rather than starting a second request."""
MIN_AHEAD_PAGES = 16
"""Pages a quarter of the cache must hold for parallel read-ahead to be worth it."""
AHEAD_KEPT = 1024
"""Read-ahead chunks remembered, so a window is scheduled once."""


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


@dataclass(frozen=True)
class _Index:
    header: ltx.Header
    entries: core.IndexEntries


class Replica:
    """A live view of one replica URL."""

    def __init__(self, url: str, options: Options, storage: StorageClient | None = None) -> None:
        self.url = url
        self.name = redact_url(url)
        """The URL as shown in messages, logs and stats: credentials masked."""
        self.options = options
        self.storage = CountingStorage(storage if storage is not None else open_storage(url))
        self.c = ffi.gc(lib.lsvfs_replica_new(options.cache_size, max(1, options.readahead)),
                        lib.lsvfs_replica_close)
        if self.c == ffi.NULL:
            raise MemoryError("replica allocation failed")
        self.cache = FrameCache(self.c, options.cache_size)
        self._c_snapshots: dict[int, Snapshot] = {}  # C snapshot id -> the Snapshot it mirrors
        self._c_next_id = 0
        self._verified = VerifiedCopies()
        # A directory replica read as it is (no fault wrapper, no whole-file
        # checks) has its misses served by C itself, without the GIL.
        local = options.verify == "frames" and isinstance(self.storage.inner, FileStorage)
        self._slots = FileSlots(self._slot_freed, self._slot_new if local else None)
        self._poll_lock = threading.Lock()
        self._lock = threading.Lock()
        self._current: Snapshot | None = None
        self._historic: OrderedDict[tuple[str, int], Snapshot] = OrderedDict()
        self._historic_lock = threading.Lock()
        self._rebased: dict[int, Future[Snapshot]] = {}
        self._rebased_done: OrderedDict[int, Snapshot] = OrderedDict()  # TXID -> rebuilt after retention
        self._pool = ThreadPoolExecutor(max_workers=PARALLEL_REQUESTS, thread_name_prefix="lsvfs-index")
        self.fetcher = Fetcher(FETCH_WORKERS, self.name)
        self._ahead: OrderedDict[tuple[int, int], int] = OrderedDict()  # (TXID, chunk) -> window
        self.hydrator: Hydrator | None = None
        self.prefetch_requests = 0
        self.prefetch_done = 0
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.refs = 0
        self.connections = 0  # open main-database files (lsvfs/vfs.py keeps it)
        self.last_poll_ok: float | None = None  # time.monotonic() of the last good poll
        self.poll_count = 0
        self.poll_errors = 0
        self.retries = 0
        self._since_full_scan = 0
        self._l0_anchor: FileInfo | None = None  # the L0 file ending at the current TXID, as listed
        self._last_gap: tuple[int, int] | None = None
        self._last_poll_error: str | None = None
        self.lineage = 0
        self.lineage_changes = 0
        self._tip: tuple[FileInfo, int] | None = None  # a file ending at the current TXID, its header time
        self._survivors: frozenset[FileInfo] = frozenset()  # old-lineage files still listed as they were
        self._listing: list[FileInfo] = []  # the listing that found the current lineage

    # ---- lifecycle --------------------------------------------------------

    def open(self) -> None:
        """Build the first snapshot, waiting up to open_timeout for a first file."""
        deadline = time.monotonic() + self.options.open_timeout
        while True:
            files = self.retry(lambda: list_all(self.storage, pool=self._pool), self.name)
            if files:
                break
            if time.monotonic() >= deadline:
                waited = f" after waiting {self.options.open_timeout:g}s" if self.options.open_timeout else ""
                raise ReplicaError(f"replica {self.name} is empty: no LTX files{waited}")
            time.sleep(min(0.1, max(self.options.poll_interval, 0.01)))
        chain = plan_for(self.storage, Target(), files, pool=self._pool)
        snap = self._build(None, chain)
        self._publish(snap)
        self._set_anchor(files, snap.txid)
        self.last_poll_ok = time.monotonic()
        self._listing = files
        log.info("opened %s at TXID %016x (%d pages of %d bytes, %d files)", self.name,
                 snap.txid, snap.commit, snap.page_size, len(chain))

    def start(self) -> None:
        """Start the background work of an open replica: polling, then
        hydration or prefetch."""
        if self._poller is None and self.options.poll_interval > 0:
            self._poller = threading.Thread(target=self._poll_loop, name=f"lsvfs-poll {self.name}", daemon=True)
            self._poller.start()
        if self.options.hydration or self.options.hydration_path:
            if self.hydrator is None:
                self.hydrator = Hydrator(self, self.options.hydration_path or None)
                self.hydrator.start()
        else:
            self._prefetch()

    def close(self) -> None:
        """Stop polling and free everything. A poll stuck in a slow storage call is
        not waited for beyond CLOSE_WAIT: it ends with that call and publishes nothing."""
        self._stop.set()
        if self.hydrator is not None:
            self.hydrator.stop()
        self.fetcher.close(CLOSE_WAIT)
        if self.hydrator is not None:
            self.hydrator.close(CLOSE_WAIT)
        if self._poller is not None and self._poller is not threading.current_thread():
            self._poller.join(timeout=CLOSE_WAIT)
        self._pool.shutdown(wait=not (self._poller is not None and self._poller.is_alive()),
                            cancel_futures=True)
        lib.lsvfs_replica_publish(self.c, ffi.NULL)  # open files keep the snapshots they hold
        # The pages go now, not whenever the garbage collector gets to this
        # object: a cache is often most of a process's memory, and freeing it
        # later lands in whatever runs then (the next replica's first queries).
        self.cache.clear()
        self.storage.close()
        self._verified.close()

    # ---- snapshots --------------------------------------------------------

    def current(self) -> Snapshot:
        snap = self._current
        if snap is None:
            raise ReplicaError(f"replica {self.name} is not open")
        return snap

    def snapshot_at(self, txid: int | None = None, timestamp_ms: int | None = None) -> Snapshot:
        """The database at exactly `txid`, or at the latest state not after `timestamp_ms`."""
        cur = self.current()
        if txid is not None and txid == cur.txid:
            return cur
        key = ("txid", txid) if txid is not None else ("time", timestamp_ms)
        with self._historic_lock:
            snap = self._historic.get(key)  # type: ignore[arg-type]
            if snap is not None:
                self._historic.move_to_end(key)  # type: ignore[arg-type]
                return snap
        chain = self.retry(lambda: plan_for(self.storage, Target(txid, timestamp_ms)), self.name)
        snap = self._build(None, chain)
        with self._historic_lock:
            self._historic[key] = snap  # type: ignore[index]
            while len(self._historic) > HISTORIC_SNAPSHOTS:
                self._historic.popitem(last=False)
        return snap

    def _publish(self, snap: Snapshot) -> None:
        """Make `snap` the newest, in Python and for the C read path."""
        with self._lock:
            self._current = snap
            if snap.tip is not None:
                self._tip = (snap.tip, snap.timestamp_ms)
        lib.lsvfs_replica_publish(self.c, self.c_snapshot(snap))
        if self.hydrator is not None:
            self.hydrator.wake()

    def c_snapshot(self, snap: Snapshot) -> Any:
        """A C twin of `snap` holding one reference, for the caller to hand on
        (publish, lsvfs_file_choose). `snap` is kept until C frees the twin."""
        self._drain_c_snapshots()
        with self._lock:
            self._c_next_id += 1
            sid = self._c_next_id
            self._c_snapshots[sid] = snap
        info = ffi.new("lsvfs_snapshot_info *", {"id": sid, "txid": snap.txid, "timestamp_ms": snap.timestamp_ms,
                                                 "commit": snap.commit, "page_size": snap.page_size,
                                                 "lineage": snap.lineage})
        c = lib.lsvfs_snapshot_new(self.c, snap.table.cdata, info)
        if c == ffi.NULL:
            with self._lock:
                del self._c_snapshots[sid]
            raise MemoryError("snapshot allocation failed")
        return c

    def snapshot_of(self, c: Any) -> Snapshot:
        """The Snapshot a live C snapshot mirrors."""
        info = ffi.new("lsvfs_snapshot_info *")
        lib.lsvfs_snapshot_get_info(c, info)
        return self.snapshot_of_id(info.id)

    def snapshot_of_id(self, sid: int) -> Snapshot:
        with self._lock:
            return self._c_snapshots[sid]

    def _drain_c_snapshots(self) -> None:
        """Let go of the Snapshots whose C twins are gone (and so, in time, of their files)."""
        ids = ffi.new("uint64_t[]", 64)
        while n := lib.lsvfs_replica_drain_freed(self.c, ids, 64):
            with self._lock:
                for i in range(n):
                    self._c_snapshots.pop(ids[i], None)

    def c_snapshots(self) -> int:
        """C snapshots alive now (the newest, pinned ones, chosen ones)."""
        self._drain_c_snapshots()
        return int(lib.lsvfs_replica_live_snapshots(self.c))

    def _slot_new(self, slot: int, f: FileInfo) -> None:
        assert isinstance(self.storage.inner, FileStorage)
        if lib.lsvfs_replica_set_local(self.c, slot, os.fsencode(self.storage.inner.path_of(f))):
            raise MemoryError("replica: out of memory")

    def _slot_freed(self, slots: list[int]) -> None:
        for slot in slots:
            lib.lsvfs_replica_forget_local(self.c, slot)
        if self.hydrator is not None:
            self.hydrator.forget(slots)
        if self.options.verify == "files":
            self._verified.forget(slots)

    def file(self, slot: int) -> FileInfo:
        return self._slots.file(slot)

    def open_slots(self) -> int:
        """How many files the live snapshots (and builds in progress) point into."""
        return len(self._slots)

    def pages_in(self, chain: list[FileInfo]) -> Snapshot:
        """A snapshot of just the pages `chain` writes (what changed over it)."""
        return self._build(None, chain)

    def _build(self, base: Snapshot | None, chain: list[FileInfo]) -> Snapshot:
        """A new snapshot: `base` plus `chain`, every file's reads in one stage.

        The reads of all files (whole small files; head and tail of larger
        ones) go out together on the pool, at most LOAD_AHEAD files ahead of
        the file being decoded here, so a chain of hundreds of files costs
        a few round trips, not hundreds. A short chain of local files is read
        in turn: a few preads each, cheaper than starting threads.
        """
        # Until a header says, guess SQLite's default page size for the one-frame heads.
        one_frame = ltx.HEADER_SIZE + _frame_bound(base.page_size if base is not None else 4096)

        def head(i: int) -> int:
            if self.storage.local:
                return ltx.HEADER_SIZE  # no round trip to save
            return HEAD_READ if i == 0 and base is None else one_frame

        self._slots.reclaim()
        held = [self._slots.hold(f) for f in chain]
        started: dict[int, list[Task[bytes]]] = {}
        try:
            if self.storage.local and len(chain) <= LOCAL_SERIAL_FILES:
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
                            base.lineage if base is not None else self.lineage, chain[-1])
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
        if f.size <= TAIL_READ or self.options.verify == "files":
            return [(0, None)]
        return [(0, max(ltx.HEADER_SIZE, min(head, f.size - TAIL_READ))), (f.size - TAIL_READ, TAIL_READ)]

    def _read_part(self, f: FileInfo, part: tuple[int, int | None]) -> bytes:
        offset, length = part
        return self.storage.read_all(f) if length is None else self.storage.read(f, offset, length)

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

        return self.retry(attempt, f.name)

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
                    self.cache.put((slot, offset), bytes(decoded.page(i)))
            if self.options.verify == "files":
                self._verified.keep(slot, data)
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
            tail = self.storage.read(f, idx_off, f.size - idx_off)
            tail_start = idx_off
        rel = idx_off - tail_start
        entries = core.decode_index(tail[rel:rel + idx_len], idx_off, file=f.name)
        _check_pages(f, header, entries)
        self._cache_head(f, slot, header, entries, head)
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
            self.cache.fill(slot, head, 0, entries[:n], header.page_size, f.name)
        except LTXError as exc:
            log.debug("%s: frames read with the header not cached: %s", f.name, exc)

    # ---- polling ----------------------------------------------------------

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.options.poll_interval):
            self.poll()

    def poll(self) -> bool:
        """One poll; True if a new snapshot was published. Never raises.

        Polls are serialized: two at once would each build on the same
        snapshot and the slower could publish an older TXID over a newer one.
        """
        with self._poll_lock:
            return self._poll_once()

    def _poll_once(self) -> bool:
        self.poll_count += 1
        if self._stop.is_set():
            return False
        try:
            self._drain_c_snapshots()
            self._slots.reclaim()
            advanced = self._poll()
        except LsvfsError as exc:
            self._poll_failed(str(exc))
            return False
        except Exception as exc:  # noqa: BLE001 - a custom client's own errors must not kill the poller; logged in full
            self._poll_failed(repr(exc), unexpected=True)
            return False
        if self._last_poll_error is not None:
            log.info("poll of %s works again (TXID %016x)", self.name, self.current().txid)
            self._last_poll_error = None
        self.last_poll_ok = time.monotonic()
        return advanced

    def _poll_failed(self, why: str, unexpected: bool = False) -> None:
        """Count a failed poll; one WARNING per kind of failure, not one per poll."""
        self.poll_errors += 1
        if unexpected:
            log.exception("poll of %s failed unexpectedly (staying at TXID %016x)", self.name, self.current().txid)
        elif why != self._last_poll_error:
            log.warning("poll of %s failed (staying at TXID %016x): %s", self.name, self.current().txid, why)
        else:
            log.debug("poll of %s failed again: %s", self.name, why)
        self._last_poll_error = why

    def _poll(self) -> bool:
        """One LIST of L0 in the steady state. It starts at the L0 file that
        ends at our TXID when we know one: while that file is still listed as
        it was, retention cannot have deleted anything newer, so nothing can
        hide in higher levels and they need no listing. When it is gone or
        changed, every level is listed at once: retention compacted it, or
        the replica was removed or replaced."""
        cur = self.current()
        anchor = self._l0_anchor
        if cur.lineage != self.lineage:  # the move to a new lineage failed half way: try again
            return self._poll_every_level(cur)
        listed = self.storage.list_files(0, anchor.min_txid if anchor is not None else cur.txid + 1)
        if anchor is not None:
            now = next((f for f in listed if _name_key(f) == _name_key(anchor)), None)
            if now is None or now.size != anchor.size or (now != anchor and not self._is_tip(now)):
                return self._poll_every_level(cur)
            self._l0_anchor = now
        l0 = [f for f in listed if f.min_txid > cur.txid]
        chain = extend(l0, cur.txid)
        self._since_full_scan += 1
        reached = chain[-1].max_txid if chain else cur.txid
        if any(f.min_txid > reached + 1 for f in l0) or (
                not chain and anchor is None and self._since_full_scan >= FULL_SCAN_EVERY):
            # L0 has a gap (retention deleted files a compaction covers) or we
            # have not looked higher in a while: plan across every level.
            return self._poll_every_level(cur)
        return self._advance(cur, chain, listed)

    def _poll_every_level(self, cur: Snapshot) -> bool:
        self._since_full_scan = 0
        files = list_all(self.storage, pool=self._pool)
        if not files:
            # A missing directory or prefix lists as nothing: never a good poll.
            raise ReplicaError(f"replica {self.name} lists no LTX files (removed, or being replaced?)")
        replaced = "as found before" if cur.lineage != self.lineage else self._replaced_by(cur, files)
        if replaced is not None:
            return self._follow_new_lineage(cur, files, replaced)
        if not any(f.max_txid == cur.txid for f in files):
            # Only a compaction straddling our TXID covers it (we fell behind
            # retention, or the replica was replaced): nothing proves the files
            # after it continue what we hold, so the newest state is built afresh.
            new = self._build(None, build(files))
            if self._stop.is_set():
                return False
            log.info("%s: no file ends at TXID %016x any more; read TXID %016x afresh", self.name, cur.txid,
                     new.txid)
            self._publish(new)
            self._set_anchor(files, new.txid)
            self._last_gap = None
            return new.txid != cur.txid
        chain = extend(files, cur.txid)
        reached = chain[-1].max_txid if chain else cur.txid
        beyond = [f.min_txid for f in files if f.min_txid > reached + 1]
        if beyond:
            gap = (reached, min(beyond))
            if gap != self._last_gap:
                log.warning("%s: %s; serving TXID %016x until it is filled", self.name, GapError(*gap), reached)
            self._last_gap = gap
        self._set_anchor(files, reached)
        return self._advance(cur, chain, files)

    def _advance(self, cur: Snapshot, chain: list[FileInfo], listed: list[FileInfo]) -> bool:
        """Publish `cur` plus `chain`, if the chain holds anything."""
        if not chain:
            return False
        new = self._build(cur, chain)
        if self._stop.is_set():
            return False
        self._publish(new)
        self._set_anchor(listed, new.txid)
        self._last_gap = None
        log.debug("%s: TXID %016x -> %016x", self.name, cur.txid, new.txid)
        return True

    def _set_anchor(self, files: list[FileInfo], txid: int) -> None:
        """Remember the L0 file among `files` that ends at `txid`, if any."""
        ends = [f for f in files if f.level == 0 and f.max_txid == txid]
        self._l0_anchor = ends[0] if ends else None

    # ---- lineages ---------------------------------------------------------

    def _replaced_by(self, cur: Snapshot, files: list[FileInfo]) -> str | None:
        """Why `files` are another lineage than `cur`'s, or None if nothing says so.

        LTX names repeat across lineages (TXIDs start again at 1), so names
        alone prove nothing: the newest TXID going back does, a file of ours
        listed with another size or time does, and so does the file that
        ends at our TXID carrying another header time (compactions keep the
        time of the last file they take in; snapshots have their own).
        A replacement whose files match ours in name, size and listed time
        (S3 lists times to the second) shows only once those signals do.
        """
        newest = max(f.max_txid for f in files)
        if newest < cur.txid:
            return f"its newest TXID went back from {cur.txid:016x} to {newest:016x}"
        listed = {_name_key(f): f for f in files}
        tip = self._tip
        ours = [self._slots.file(slot) for slot in cur.live]
        for f in ours + ([tip[0]] if tip is not None else []):
            g = listed.get(_name_key(f))
            if g is not None and g.size != f.size:
                return f"{f.name} was rewritten ({g.size} bytes, was {f.size})"
        if tip is None:
            return None
        g = listed.get(_name_key(tip[0]))
        if g is not None and g != tip[0] and not self._is_tip(g):
            return f"{g.name} was rewritten (its header time is not {format_time(tip[1])} any more)"
        if g is not None or tip[0].max_txid != cur.txid:
            return None
        snapshots = tip[0].level == SNAPSHOT_LEVEL
        ends = [f for f in files if f.max_txid == cur.txid and (f.level == SNAPSHOT_LEVEL) == snapshots]
        if not ends:
            return None  # nothing tells; _poll_every_level builds afresh rather than extend
        other = max(ends, key=lambda f: f.level)
        stamp = ltx.Header.decode(self.storage.read(other, 0, ltx.HEADER_SIZE), other.name).timestamp
        if stamp != tip[1]:
            return (f"{other.name}, which ends at TXID {cur.txid:016x}, was written at {format_time(stamp)}, "
                    f"not {format_time(tip[1])}")
        self._tip = (other, stamp)  # the same lineage: the next listing need not read it again
        return None

    def _is_tip(self, f: FileInfo) -> bool:
        """Whether `f`, listed under our tip's name with another time (a file
        replica's time is set after it is written), still is our tip: its
        header time says."""
        tip = self._tip
        if tip is None or _name_key(f) != _name_key(tip[0]):
            return False
        stamp = ltx.Header.decode(self.storage.read(f, 0, ltx.HEADER_SIZE), f.name).timestamp
        if stamp != tip[1]:
            return False
        self._tip = (f, stamp)
        return True

    def _follow_new_lineage(self, cur: Snapshot, files: list[FileInfo], why: str) -> bool:
        """Read the replica's new lineage from scratch, sharing nothing with the old one.

        The old lineage ends here, before the new one is built: from now on
        its snapshots read only what is cached or still listed as it was, and
        no file of the new lineage gets an old slot."""
        if cur.lineage == self.lineage:
            with self._historic_lock:
                self.lineage += 1
                self._survivors = frozenset(files)
                self._historic.clear()
                self._rebased_done.clear()
            self._slots.new_lineage()
            lib.lsvfs_replica_new_lineage(self.c)
            with self._lock:
                self._ahead.clear()
            self.cache.clear()
        self._listing = files
        new = self._build(None, build(files))
        if self._stop.is_set():
            return False
        self.lineage_changes += 1
        log.warning("%s was replaced by another lineage (%s): new read transactions read TXID %016x of "
                    "the new one, not TXID %016x of the old", self.name, why, new.txid, cur.txid)
        self._publish(new)
        self._set_anchor(files, new.txid)
        self._last_gap = None
        return True

    def _check_lineage(self, snap: Snapshot, slot: int) -> None:
        """A snapshot of an old lineage reads only files still listed as they were."""
        if snap.lineage != self.lineage and self.file(slot) not in self._survivors:
            raise LineageError(self._lineage_gone(snap))

    def _lineage_gone(self, snap: Snapshot) -> str:
        try:
            build(self._listing, Target(snap.txid))
            there = "exists in the new lineage too (a pinned connection sets PRAGMA litestream_txid again to read it)"
        except LsvfsError:
            there = "does not exist in the new lineage"
        return (f"replica {self.name} was replaced by another lineage: TXID {snap.txid:016x} of the old one "
                f"can no longer be read; that TXID {there}")

    def stats(self) -> dict[str, Any]:
        """What this replica is doing, as plain data (JSON-ready)."""
        cur = self.current()
        return {
            "url": self.name,
            "txid": f"{cur.txid:016x}",
            "snapshot_time": format_time(cur.timestamp_ms),
            "page_size": cur.page_size,
            "pages": cur.commit,
            "lag_seconds": round(self.lag(), 3),
            "polls": self.poll_count,
            "poll_errors": self.poll_errors,
            "lineage_changes": self.lineage_changes,
            "retries": self.retries,
            "connections": self.connections,
            "snapshots_alive": self.c_snapshots(),
            "files_in_use": len(self._slots),
            "cache": cache_stats(self.cache.stats()),
            "storage": {**self.storage.counts(), "local_read": local_reads(self.c)},
            "prefetch": {"requests": self.prefetch_requests, "done": self.prefetch_done,
                         "pending": self.fetcher.pending()},
            "hydration": None if self.hydrator is None else self.hydrator.stats(),
            "shared": getattr(self.storage.inner, "shared_stats", lambda: None)(),
        }

    def lag(self) -> float:
        """Seconds since the last successful poll (or open); -1 before one. With
        shared_dir, the older of that and the age of the leader's last good poll."""
        own = -1.0 if self.last_poll_ok is None else time.monotonic() - self.last_poll_ok
        shared = getattr(self.storage.inner, "shared_lag", None)
        return own if shared is None or own < 0 else max(own, shared())

    # ---- page reads -------------------------------------------------------

    def read_page(self, snap: Snapshot, pgno: int, readahead: int = 1, *, _rebased: bool = False) -> bytes:
        """Page `pgno` of `snap`, verified; up to `readahead` following pages of
        the same file are fetched in the same request and cached."""
        loc = snap.table.get(pgno)
        if loc is not None:
            page = self.cache.get(loc[:2], snap.page_size)
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
                if readahead > 1 and readahead >= self.options.readahead:
                    self._read_ahead(snap, pgno)
                if self.fetcher.serve(slot, offset):
                    page = self.cache.get((slot, offset), snap.page_size)
                    if page is not None:
                        return page
            return self._fetch_run(snap, pgno, readahead)

        try:
            return self.cache.get_or_load((slot, offset), snap.page_size, load)
        except MissingFileError as exc:
            if snap.lineage != self.lineage:
                raise LineageError(self._lineage_gone(snap)) from exc
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
                with self._historic_lock:
                    if self._rebased_done.get(alt.txid) is alt:
                        del self._rebased_done[alt.txid]
                raise

    def _reads_ahead(self) -> bool:
        """Whether misses use parallel ranged reads: remote storage, frames verified one by one."""
        return not self.storage.local and self.options.verify == "frames"

    def _read_ahead(self, snap: Snapshot, pgno: int) -> None:
        """A sequential reader missed `pgno`: make sure the chunks from its
        chunk on are being read, in parallel, a window that doubles while
        the reader keeps coming (bounded by AHEAD_BYTES and the cache)."""
        ahead = min(AHEAD_BYTES, self.cache.max_bytes // 4)  # what is read ahead must stay cached
        if ahead < MIN_AHEAD_PAGES * snap.page_size:
            return  # a cache this small keeps nothing ahead: the miss's own run is all it gets
        chunk = min(CHUNK_BYTES, ahead)
        chunk_pages = chunk // snap.page_size
        most = max(1, ahead // chunk)
        last = (snap.commit - 1) // chunk_pages
        k = (pgno - 1) // chunk_pages
        todo = []
        with self._lock:
            prev = self._ahead.get((snap.txid, k))
            window = min(most, prev * 2) if prev else min(most, 2)
            for j in range(k, min(last, k + window - 1) + 1):
                if (snap.txid, j) not in self._ahead:
                    todo.append(j)
                self._ahead[(snap.txid, j)] = window
                self._ahead.move_to_end((snap.txid, j))
            while len(self._ahead) > AHEAD_KEPT:
                self._ahead.popitem(last=False)
        for j in todo:
            first = j * chunk_pages + 1
            self._submit(snap, self._uncached(snap, first, min(chunk_pages, snap.commit - first + 1)),
                         URGENT if j == k else AHEAD, chunk)

    def _prefetch(self) -> None:
        """Fetch the whole current snapshot into the cache in the background
        (option `prefetch`): by default only when it fits the cache and
        storage is remote; never more than the cache holds."""
        mode = self.options.prefetch
        snap = self.current()
        if mode == "off" or self.options.verify != "frames":
            return
        if mode == "auto" and (self.storage.local or snap.size > self.cache.max_bytes):
            return

        def plan_all() -> None:
            chunk_pages = max(1, CHUNK_BYTES // snap.page_size)
            budget = self.cache.max_bytes // snap.page_size
            for first in range(1, min(snap.commit, budget) + 1, chunk_pages):
                if self._stop.is_set():
                    return
                self._submit(snap, self._uncached(snap, first, min(chunk_pages, budget - first + 1,
                                                                   snap.commit - first + 1)), PREFETCH)

        self.fetcher.submit(Job(plan_all, PREFETCH))

    def _uncached(self, snap: Snapshot, first: int, n: int) -> list[tuple[int, tuple[int, int, int]]]:
        locs = snap.table.get_range(first, n)
        return [(first + i, loc) for i, loc in enumerate(locs)
                if loc is not None and (loc[0], loc[1]) not in self.cache and self.fetcher.find(loc[0], loc[1]) is None]

    def _submit(self, snap: Snapshot, wanted: list[tuple[int, tuple[int, int, int]]], priority: int,
                chunk: int = CHUNK_BYTES) -> None:
        """Ranged reads of `wanted` pages into the cache, as fetcher jobs readers can find."""
        for rng in plan(wanted, chunk + MAX_GAP, min(chunk, MAX_GAP)):
            if priority == PREFETCH:
                self.prefetch_requests += 1
            self.fetcher.submit(Job(self._cache_job(snap, rng, priority), priority, rng.slot, rng.start, rng.end))

    def _cache_job(self, snap: Snapshot, rng: Range, priority: int) -> Callable[[], None]:
        f = self.file(rng.slot)  # `snap`, held by the closure, keeps the slot alive

        def run() -> None:
            if self._stop.is_set():
                return
            self.retry(lambda: self.cache.fill(rng.slot, self.storage.read(f, rng.start, rng.length), rng.start,
                                               rng.entries, snap.page_size, f.name), f.name)
            if priority == PREFETCH:
                self.prefetch_done += 1

        return run

    def _fetch_run(self, snap: Snapshot, pgno: int, readahead: int) -> bytes:
        """Page `pgno`, read with up to `readahead` - 1 following frames in one
        request and decoded straight into the cache."""
        slot, run = pagetable.plan_run(snap.table, pgno, max(1, min(readahead, snap.commit - pgno + 1)))
        first, last = run[0], run[len(run) - 1]
        offset, length = first[1], last[1] + last[2] - first[1]
        f = self.file(slot)
        if self.options.verify == "files":
            path = self._verified.path(slot, lambda: self.retry(lambda: verified.check(self.storage.read_all(f), f),
                                                                f.name))

            def read() -> bytes:
                with open(path, "rb") as fh:
                    return os.pread(fh.fileno(), length, offset)
        else:
            def read() -> bytes:
                return self.storage.read(f, offset, length)

        return self.retry(lambda: self.cache.fill(slot, read(), offset, run, snap.page_size, f.name, asked=True),
                          f.name)

    def retry(self, fn: Callable[[], T], what: str) -> T:
        """Run `fn`, retrying storage errors and bad bytes with bounded backoff.

        A corrupt frame is refetched too: a truncated or mangled response is
        far likelier than a corrupt object, and a persistent fault still fails.
        """
        delay = 0.02
        for attempt in range(self.options.read_retries + 1):
            try:
                return fn()
            except MissingFileError:
                raise
            except (StorageError, LTXError) as exc:
                if attempt == self.options.read_retries or self._stop.is_set():
                    raise
                log.info("%s: %s; retry %d in %.2fs", what, exc, attempt + 1, delay)
                self.retries += 1
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")

    def _rebased_snapshot(self, old: Snapshot) -> Snapshot:
        """`old`'s TXID rebuilt from the files the replica has now (one build, shared)."""
        txid = old.txid
        if old.lineage != self.lineage:
            return old  # rebuilt from today's files, it would be the new lineage's TXID
        with self._historic_lock:
            done = self._rebased_done.get(txid)
            if done is not None and done is not old:
                self._rebased_done.move_to_end(txid)
                return done
        with self._lock:
            fut, owner = claim(self._rebased, txid)
        if owner:
            try:
                snap = self._build(None, self.retry(lambda: plan_for(self.storage, Target(txid)), self.name))
                with self._historic_lock:
                    self._rebased_done[txid] = snap
                    while len(self._rebased_done) > HISTORIC_SNAPSHOTS:
                        self._rebased_done.popitem(last=False)
                fut.set_result(snap)
                if self._current is not None and self._current.txid == txid:
                    self._publish(snap)
            except BaseException as exc:  # noqa: BLE001 - handed to every waiter, not swallowed
                fut.set_exception(exc)
            finally:
                with self._lock:
                    self._rebased.pop(txid, None)
        return fut.result()


def _name_key(f: FileInfo) -> tuple[int, int, int]:
    return f.level, f.min_txid, f.max_txid


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
