"""The Replica: one replica URL opened, started and closed; its current snapshot; its stats.

Every connection to a URL shares its Replica (lsvfs/registry.py). The Replica
owns the resources (the C replica and its cache, the storage client, the
pools, the file slots) and wires the parts that use them: the loader builds
snapshots, the poller publishes new ones, the page reader serves misses, the
twins keep each Snapshot alive while C holds it. Publishing is here: a new
snapshot becomes the newest in Python and, at once, for the C read path
(csrc/replica.c), where a read transaction pins one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .. import ltx
from .._core import ffi, lib
from ..cache import FrameCache
from ..errors import ReplicaError
from ..fetcher import Fetcher
from ..hydration import Hydrator
from ..lru import LRU
from ..options import Options, Verify
from ..plan import Target, list_all, list_past, plan_for
from ..shared.pages import SharedPages, file_key
from ..shared.storage import RemoteFile, SharedStorage
from ..slots import FileSlots
from ..stats import CountingStorage, cache_stats, local_reads
from ..storage import open_storage
from ..storage.base import PARALLEL_REQUESTS, FileInfo, StorageClient
from ..storage.file import FileStorage
from ..storage.redact import redact_url
from ..timeutil import format_time
from ..verified import VerifiedCopies
from .lineage import Lineages
from .loader import Loader
from .poller import Poller
from .reader import PageReader
from .retry import Retry
from .snapshot import HISTORIC_SNAPSHOTS, Snapshot
from .twins import Twins
from .waits import Waits

log = logging.getLogger(__name__)
T = TypeVar("T")

CLOSE_WAIT = 1.0
"""Seconds close() waits for a poll in progress; a poller stuck in storage finishes on its own."""
FETCH_WORKERS = 8
"""Ranged reads in flight at once for read-ahead, prefetch and hydration."""


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
        self._lock = threading.Lock()  # guards the four fields below, and _versions
        self._current: Snapshot | None = None
        self._historic: LRU[tuple[str, int | None], Snapshot] = LRU(HISTORIC_SNAPSHOTS)  # pinned by a PRAGMA
        self._refs = 0  # holders of this Replica (lsvfs/registry.py)
        self._connections = 0  # open main-database files (lsvfs/vfs.py)
        self._stop = threading.Event()
        self.hydrator: Hydrator | SharedPages | None = None
        self._verified = VerifiedCopies()
        # A directory replica read as it is (no fault wrapper, no whole-file
        # checks) has its misses served by C itself, without the GIL.
        local = options.verify == Verify.FRAMES and isinstance(self.storage.inner, FileStorage)
        self._slots = FileSlots(self._slot_freed, self._slot_new if local else None)
        self._pool = ThreadPoolExecutor(max_workers=PARALLEL_REQUESTS, thread_name_prefix="lsvfs-index")
        self.fetcher = Fetcher(FETCH_WORKERS, self.name)
        self._retry = Retry(options.read_retries + 1, self._stop)
        self.twins = Twins(self.c)
        self.lineages = Lineages(self.name)
        # With shared_dir, hydration is the directory's page file: reading it
        # needs the state each slot's frames hold (shared/pages.py).
        self._versions: dict[int, tuple[int, int]] | None = (
            {} if options.hydration and isinstance(self.storage.inner, SharedStorage) else None)
        self.loader = Loader(self.storage, self.cache, self._slots, self._pool, self._verified, options,
                             self._retry, self.lineages, None if self._versions is None else self._note_version)
        self.reader = PageReader(self.name, options, self.storage, self.cache, self.fetcher, self._verified,
                                 self.loader, self.lineages, self._retry, file=self.file, current=self.current,
                                 publish=self._publish, stop=self._stop)
        self.poller = Poller(self.name, options, self.storage, self._pool, self.loader, self.lineages, self._slots,
                             self.twins, current=self.current, publish=self._publish,
                             begin_lineage=self._begin_lineage, stop=self._stop, polled=self._polled)
        self.waits = Waits(self.name, self.poller, self.lineages, self.current, self._stop)

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
        snap = self.loader.build(None, chain)
        self._publish(snap)
        self.poller.opened(files, snap.txid)
        self.lineages.listed(files)
        log.info("opened %s at TXID %016x (%d pages of %d bytes, %d files)", self.name,
                 snap.txid, snap.commit, snap.page_size, len(chain))

    def start(self) -> None:
        """Start the background work of an open replica: polling, then
        hydration or prefetch."""
        self.poller.start()
        if self._versions is not None:
            if self.hydrator is None:
                assert isinstance(self.storage.inner, SharedStorage)
                with self._lock:
                    self.hydrator = SharedPages(self.c, self.storage.inner.root, self.current().page_size,
                                                self.current, self._versions)
        elif self.options.hydration or self.options.hydration_path:
            if self.hydrator is None:
                self.hydrator = Hydrator(self, self.options.hydration_path or None)
                self.hydrator.start()
        else:
            self.reader.prefetch(self.current())

    def close(self) -> None:
        """Stop polling and free everything. The storage is closed first: it cuts
        this replica's calls in flight, so no thread waits out a slow one."""
        self._stop.set()
        self.poller.wake()
        if self.hydrator is not None:
            self.hydrator.stop()
        self.storage.close()
        self.fetcher.close(CLOSE_WAIT)
        if self.hydrator is not None:
            self.hydrator.close(CLOSE_WAIT)
        self.poller.join(CLOSE_WAIT)
        self._pool.shutdown(wait=False, cancel_futures=True)
        lib.lsvfs_replica_publish(self.c, ffi.NULL)  # open files keep the snapshots they hold
        # No connection is open (the registry closes a replica at its last
        # release), so no read is on a local file's descriptor: close them now,
        # not when the garbage collector finds this object.
        for slot in self._slots.slots():
            lib.lsvfs_replica_forget_local(self.c, slot)
        # The pages go now too: a cache is often most of a process's memory,
        # and freeing it later lands in whatever runs then (the next replica's
        # first queries).
        self.cache.clear()
        self._verified.close()

    # ---- holders ----------------------------------------------------------

    def add_ref(self) -> None:
        """One more holder (lsvfs/registry.py); pair with drop_ref()."""
        with self._lock:
            self._refs += 1

    def drop_ref(self) -> int:
        """One holder fewer; how many are left."""
        with self._lock:
            self._refs -= 1
            return self._refs

    @property
    def refs(self) -> int:
        return self._refs

    def add_connection(self) -> None:
        """A main-database file was opened on this replica (lsvfs/vfs.py)."""
        with self._lock:
            self._connections += 1

    def drop_connection(self) -> None:
        with self._lock:
            self._connections -= 1

    @property
    def connections(self) -> int:
        return self._connections

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
        with self._lock:
            snap = self._historic.get(key)
            if snap is not None:
                return snap
        chain = self.retry(lambda: plan_for(self.storage, Target(txid, timestamp_ms),
                                            list_past(self.storage, self._pool), self._pool), self.name)
        snap = self.loader.build(None, chain)
        with self._lock:
            self._historic.put(key, snap)
        return snap

    def _publish(self, snap: Snapshot) -> None:
        """Make `snap` the newest, in Python and for the C read path."""
        with self._lock:
            self._current = snap
        self.lineages.published(snap)
        lib.lsvfs_replica_publish(self.c, self.twins.new(snap))
        if self.hydrator is not None:
            self.hydrator.wake()

    def _begin_lineage(self, files: list[FileInfo]) -> None:
        """The replica was replaced: from here nothing of the old lineage is
        found under a new snapshot (only `files` it still lists may be read)."""
        self.lineages.begin(files)
        with self._lock:
            self._historic.clear()
        self.reader.new_lineage()
        self._slots.new_lineage()
        lib.lsvfs_replica_new_lineage(self.c)
        self.cache.clear()

    def c_snapshot(self, snap: Snapshot) -> Any:
        """A C twin of `snap` holding one reference (see Twins.new)."""
        return self.twins.new(snap)

    def snapshot_of(self, c: Any) -> Snapshot:
        """The Snapshot a live C snapshot mirrors."""
        return self.twins.of(c)

    def snapshot_of_id(self, sid: int) -> Snapshot:
        return self.twins.of_id(sid)

    def c_snapshots(self) -> int:
        """C snapshots alive now (the newest, pinned ones, chosen ones)."""
        return self.twins.alive()

    def pages_in(self, chain: list[FileInfo]) -> Snapshot:
        """A snapshot of just the pages `chain` writes (what changed over it)."""
        return self.loader.build(None, chain)

    # ---- files ------------------------------------------------------------

    def file(self, slot: int) -> FileInfo:
        return self._slots.file(slot)

    def open_slots(self) -> int:
        """How many files the live snapshots (and builds in progress) point into."""
        return len(self._slots)

    def _slot_new(self, slot: int, f: FileInfo) -> None:
        assert isinstance(self.storage.inner, FileStorage)
        if isinstance(f, RemoteFile):
            return  # a shared mirror's trip into the past: read through Python from remote storage
        if lib.lsvfs_replica_set_local(self.c, slot, os.fsencode(self.storage.inner.path_of(f))):
            raise MemoryError("replica: out of memory")

    def _polled(self) -> None:
        """A good poll: a shared page file maps what its writer has written since."""
        if isinstance(self.hydrator, SharedPages):
            self.hydrator.wake()

    def _note_version(self, slot: int, f: FileInfo, header: ltx.Header, tail: bytes) -> None:
        """The loader read `slot`'s file: its name for the shared page file's tags."""
        key = file_key(f, header, tail)
        with self._lock:
            assert self._versions is not None
            self._versions[slot] = (f.max_txid, key)
            if isinstance(self.hydrator, SharedPages):
                self.hydrator.note(slot, f.max_txid, key)

    def _slot_freed(self, slots: list[int]) -> None:
        for slot in slots:
            lib.lsvfs_replica_forget_local(self.c, slot)
        if self._versions is not None:
            with self._lock:
                for slot in slots:
                    self._versions.pop(slot, None)
        if self.hydrator is not None:
            self.hydrator.forget(slots)
        if self.options.verify == Verify.FILES:
            self._verified.forget(slots)

    # ---- reads and polls --------------------------------------------------

    def read_page(self, snap: Snapshot, pgno: int, readahead: int = 1) -> bytes:
        """Page `pgno` of `snap`, verified (see PageReader.read_page)."""
        return self.reader.read_page(snap, pgno, readahead)

    def retry(self, fn: Callable[[], T], what: str) -> T:
        """`fn()`, its storage errors and bad bytes retried with bounded backoff (see Retry)."""
        return self._retry(fn, what)

    def poll(self) -> bool:
        """One poll; True if a new snapshot was published. Never raises."""
        return self.poller.poll()

    def wait_for(self, txid: int, lineage: int | None = None, timeout: float | None = None) -> Snapshot:
        """The newest snapshot once it reaches `txid` of `lineage` (the current
        one if None), polling now rather than at the next interval; waits at
        most `timeout` seconds (wait_timeout if None). See Waits.wait."""
        return self.waits.wait(txid, self.lineages.number if lineage is None else lineage,
                               self.options.wait_timeout if timeout is None else timeout)

    # ---- what it is doing -------------------------------------------------

    @property
    def poll_count(self) -> int:
        return self.poller.poll_count

    @property
    def poll_errors(self) -> int:
        return self.poller.poll_errors

    @property
    def retries(self) -> int:
        return self._retry.count

    @property
    def prefetch_done(self) -> int:
        return self.reader.prefetch_done

    def lag(self) -> float:
        """Seconds since the last successful poll (or open); -1 before one. With
        shared_dir, the older of that and the age of the leader's last good poll."""
        own = self.poller.lag()
        shared = getattr(self.storage.inner, "shared_lag", None)
        return own if shared is None or own < 0 else max(own, shared())

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
            "lineage_changes": self.lineages.changes,
            "waits": self.waits.stats(),
            "retries": self.retries,
            "connections": self.connections,
            "snapshots_alive": self.c_snapshots(),
            "files_in_use": len(self._slots),
            "cache": cache_stats(self.cache.stats()),
            "storage": {**self.storage.counts(), "local_read": local_reads(self.c)},
            "prefetch": {"requests": self.reader.prefetch_requests, "done": self.prefetch_done,
                         "pending": self.fetcher.pending()},
            "hydration": None if self.hydrator is None else self.hydrator.stats(),
            "shared": getattr(self.storage.inner, "shared_stats", lambda: None)(),
        }
