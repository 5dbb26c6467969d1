"""Hydration: the replica copied to a local file in the background, then
served from it by the C read path.

The copy is made with large ranged reads in parallel (the replica's fetcher)
and kept current: each new snapshot's changed pages are read from their LTX
files, one request per file, and written in place. C tags every page in the
file with the frame it came from (csrc/hydrate.c), so a read transaction
gets a page from the file only when its own snapshot points at that frame;
a pinned older snapshot keeps reading its own bytes from the cache or
storage. Isolation never depends on timing.

A file named by `hydration_path` persists: each time it is complete it is
flushed and its TXID and database checksum are recorded beside it
(`<path>.lsvfs.json`). A restart checks the file against that record and the
replica against it, then fetches only the pages changed since; a damaged
file, another replica's, or a replica that went backwards is rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from typing import Any, Protocol, TypeVar

from . import core, ltx
from ._core import ffi, lib
from .backoff import Backoff, log_failure
from .errors import LsvfsError, ReplicaError
from .fetcher import HYDRATE, Fetcher, Job
from .options import Options
from .pagetable import PageTable
from .plan import extend, list_all
from .ranges import plan
from .storage.base import SNAPSHOT_LEVEL, FileInfo, StorageClient

log = logging.getLogger(__name__)
T = TypeVar("T")

REQUEST_BYTES = 8 << 20
"""Largest ranged read: a new LTX file is one request unless it is bigger."""
HYDRATION_MAX_GAP = 1 << 20
"""Bytes of unwanted frames a hydration read reads rather than starting a second request."""
STOP_CHECK = 0.1
"""Seconds between looks at stop() while the worker waits for its reads."""
BATCH = 1 << 16
"""Pages planned at a time, so a huge database never lists every page at once."""
META_VERSION = 1
FIRST_DELAY = 0.05
"""Seconds the worker waits after a failure; each next failure doubles it."""
MOST_DELAY = 5.0
"""Longest wait between two tries of the worker."""


class SnapshotView(Protocol):
    """What the hydrator reads of a snapshot (lsvfs/replica/snapshot.py)."""

    @property
    def txid(self) -> int: ...
    @property
    def commit(self) -> int: ...
    @property
    def page_size(self) -> int: ...
    @property
    def timestamp_ms(self) -> int: ...
    @property
    def table(self) -> PageTable: ...
    @property
    def lineage(self) -> int: ...
    @property
    def tip(self) -> FileInfo | None: ...


class Source(Protocol):
    """What the hydrator uses of its replica (lsvfs/replica/lifecycle.py)."""

    @property
    def name(self) -> str: ...
    @property
    def c(self) -> Any:
        """The C replica, which the hydration file is handed to."""
    @property
    def options(self) -> Options: ...
    @property
    def storage(self) -> StorageClient: ...
    @property
    def fetcher(self) -> Fetcher: ...
    def current(self) -> SnapshotView: ...
    def file(self, slot: int) -> FileInfo: ...
    def retry(self, fn: Callable[[], T], what: str) -> T: ...
    def pages_in(self, chain: list[FileInfo]) -> SnapshotView: ...


class Hydrator:
    """The hydration file of one Replica and the thread that fills it."""

    def __init__(self, rep: Source, path: str | None) -> None:
        self._rep = rep
        self.persistent = path is not None
        if path is None:
            fd, path = tempfile.mkstemp(prefix="lsvfs-hydration-", suffix=".db")
            os.close(fd)
        self.path = os.path.abspath(path)
        self._meta_path = self.path + ".lsvfs.json"
        self._lock_fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise ReplicaError(f"hydration file {self.path} is in use by another process") from None
        snap = rep.current()
        out = ffi.new("lsvfs_hydration **")
        rc = lib.lsvfs_hydration_open(os.fsencode(self.path), snap.page_size, out)
        if rc:
            self._unlock()
            raise ReplicaError(f"hydration file {self.path}: cannot open ({core.strerror(rc)})")
        self._h = out[0]
        lib.lsvfs_replica_set_hydration(rep.c, self._h)  # the C replica owns it from here
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._writes = 0  # writes to the file under way; stop() waits for them
        self._writes_cv = threading.Condition()
        self.synced_txid: int | None = None
        self._meta: dict[str, Any] | None = None  # the record as last written
        self.requests = 0
        self.bytes = 0
        self._count_lock = threading.Lock()
        self.rebuilds = 0
        self.error: str | None = None
        self._lineage = snap.lineage  # the replica's lineage the file's pages come from
        self._thread = threading.Thread(target=self._main, name=f"lsvfs-hydrate {rep.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """A new snapshot was published."""
        self._wake.set()

    def forget(self, slots: list[int]) -> None:
        for slot in slots:
            lib.lsvfs_hydration_forget(self._h, slot)

    def stop(self) -> None:
        """Ask the worker to end (close() waits for it): its queued reads are
        cancelled with the fetcher's. Returns once no write to the file is
        under way; none starts after (a read still in storage may return
        after close, when the file is someone else's)."""
        with self._writes_cv:
            self._stop.set()
            while self._writes:
                self._writes_cv.wait()
        self._wake.set()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[bool]:
        """Whether the file may still be written (not stopped); stop() waits for the block to end."""
        with self._writes_cv:
            if self._stop.is_set():
                yield False
                return
            self._writes += 1
        try:
            yield True
        finally:
            with self._writes_cv:
                self._writes -= 1
                self._writes_cv.notify_all()

    def close(self, wait_s: float) -> None:
        self.stop()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=wait_s)
        if not self.persistent:
            for p in (self.path, self._meta_path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # ---- progress ---------------------------------------------------------

    def missing(self, snap: SnapshotView) -> int:
        """Pages of `snap` the file does not hold yet."""
        nxt = ffi.new("uint32_t *", 1)
        return int(lib.lsvfs_hydration_missing(self._h, snap.table.cdata, snap.commit, nxt, ffi.NULL,
                                               snap.commit + 1))

    def progress(self) -> int:
        """0-100: how much of the current snapshot the file holds; 100 only when all of it."""
        snap = self._rep.current()
        total = snap.table.count
        if total == 0:
            return 100
        left = self.missing(snap)
        return 100 if left == 0 else min(99, (total - left) * 100 // total)

    def stats(self) -> dict[str, Any]:
        return {
            "file": self.path,
            "progress": self.progress(),
            "txid": None if self.synced_txid is None else f"{self.synced_txid:016x}",
            "pages": int(lib.lsvfs_hydration_pages(self._h)),
            "requests": self.requests,
            "bytes": self.bytes,
            "rebuilds": self.rebuilds,
            "error": self.error,
        }

    # ---- the worker -------------------------------------------------------

    def _main(self) -> None:
        try:
            self._resume()
        except Exception as exc:  # noqa: BLE001 - a failed resume is a rebuild, not a dead thread
            self._rebuild(f"could not resume ({exc})")
        backoff = Backoff(FIRST_DELAY, MOST_DELAY)
        while not self._stop.is_set():
            self._wake.clear()
            try:
                snap = self._rep.current()
                if snap.lineage != self._lineage:
                    self._lineage = snap.lineage
                    self._rebuild("the replica was replaced by another lineage")
                if self._fill(snap):
                    continue  # check again: nothing missing, or a newer snapshot
                if snap.txid != self.synced_txid:
                    self._sync(snap)
                self.error = None
                backoff.reset()
            except Exception as exc:  # noqa: BLE001 - a custom storage client's own errors must not kill hydration
                if self._stop.is_set():
                    break  # a call cut by close(): nothing to report or retry
                delay = backoff.next()
                self.error = log_failure(log, exc, expected=(LsvfsError, OSError),
                                         failed=f"hydration of {self._rep.name}",
                                         unexpectedly=f"hydration of {self._rep.name} failed unexpectedly",
                                         then=f"; retrying in {delay:.1f}s")
                self._stop.wait(delay)
                continue
            self._wake.wait(timeout=max(self._rep.options.poll_interval, 0.1) * 10)

    def _fill(self, snap: SnapshotView) -> bool:
        """Fetch the pages of `snap` the file lacks; False if there were none."""
        nxt = ffi.new("uint32_t *", 1)
        out = ffi.new("uint32_t[]", BATCH)
        fetched = False
        while not self._stop.is_set():
            n = int(lib.lsvfs_hydration_missing(self._h, snap.table.cdata, snap.commit, nxt, out, BATCH))
            if n == 0:
                if nxt[0] > snap.commit:
                    return fetched
                continue
            first = out[0]
            locs = snap.table.get_range(first, out[n - 1] - first + 1)
            wanted = [(out[i], loc) for i in range(n) if (loc := locs[out[i] - first]) is not None]
            self._fetch(snap, wanted)
            fetched = True
        return fetched

    def _fetch(self, snap: SnapshotView, wanted: list[tuple[int, tuple[int, int, int]]]) -> None:
        """Read and write `wanted` pages, in parallel; raise the first failure."""
        if self._meta is not None and self._meta.get("complete"):
            # From here the file matches its record no more: say so, so that a
            # restart in between knows why its checksum differs.
            with self._writing() as ours:
                if ours:
                    self._record({**self._meta, "complete": False})
        futures: list[Future[None]] = []
        for rng in plan(wanted, REQUEST_BYTES, HYDRATION_MAX_GAP):
            futures.append(self._rep.fetcher.submit(Job(self._job(snap, rng), HYDRATE)).future)
        done: set[Future[None]] = set()
        while futures and not self._stop.is_set():  # stop() means no waiting on the fetcher's work
            finished, pending = wait(futures, timeout=STOP_CHECK)
            done |= finished
            futures = list(pending)
        for fut in done:
            if not fut.cancelled() and fut.exception() is not None:
                raise fut.exception()  # type: ignore[misc]

    def _job(self, snap: SnapshotView, rng: Any) -> Any:
        f = self._rep.file(rng.slot)  # `snap` (held by the closure) keeps the slot alive

        def once() -> None:
            data = self._rep.storage.read(f, rng.start, rng.length)
            with self._count_lock:
                self.requests += 1
                self.bytes += len(data)
            with self._writing() as ours:
                if ours:
                    core.fill_hydration(self._h, rng.slot, data, rng.start, rng.entries, snap.page_size, f.name,
                                        keep=lib.lsvfs_replica_cache(self._rep.c))

        def run() -> None:
            if not self._stop.is_set():
                self._rep.retry(once, f.name)

        return run

    def _sync(self, snap: SnapshotView) -> None:
        """The file holds all of `snap`: cut, flush, and record it."""
        checksum = ffi.new("uint64_t *")
        with self._writing() as ours:
            if not ours:
                return
            rc = lib.lsvfs_hydration_sync(self._h, snap.commit, checksum)
            if rc:
                raise OSError(f"hydration file {self.path}: flush failed")
            self.synced_txid = snap.txid
            self._record({"version": META_VERSION, "replica": self._rep.name, "txid": snap.txid,
                          "commit": snap.commit, "page_size": snap.page_size, "checksum": int(checksum[0]),
                          "timestamp": snap.timestamp_ms, "snapshot_file": _is_snapshot(snap.tip),
                          "complete": True})
        log.info("%s: hydrated at TXID %016x (%s)", self._rep.name, snap.txid, self.path)

    def _record(self, meta: dict[str, Any]) -> None:
        """Write the record beside a persistent file, atomically and durably."""
        self._meta = meta
        if not self.persistent:
            return
        tmp = self._meta_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(meta, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._meta_path)

    # ---- restart ----------------------------------------------------------

    def _resume(self) -> None:
        """Adopt what a persistent file already holds, or start from empty."""
        meta = self._read_meta()
        if meta is None:
            self._reset()
            return
        if not meta:
            self._rebuild("its record is unreadable")
            return
        if meta.get("complete") is False:
            self._rebuild("it was being updated when it was last closed")
            return
        cur = self._rep.current()
        if meta.get("replica") != self._rep.name or meta.get("page_size") != cur.page_size:
            self._rebuild("it holds another replica")
            return
        txid, commit, want = int(meta["txid"]), int(meta["commit"]), int(meta["checksum"])
        checksum = ffi.new("uint64_t *")
        rc = lib.lsvfs_hydration_verify(self._h, commit, checksum)
        if rc or int(checksum[0]) != want:
            self._rebuild(f"it does not match its recorded checksum at TXID {txid:016x} (damaged)")
            return
        if txid > cur.txid:
            self._rebuild(f"the replica went back from TXID {txid:016x} to {cur.txid:016x}")
            return
        files = list_all(self._rep.storage)
        why = self._other_lineage(files, meta, want)
        if why is not None:
            self._rebuild(why)
            return
        changed = None
        if txid < cur.txid:
            chain = [f for f in extend([f for f in files if f.min_txid > txid], txid) if f.max_txid <= cur.txid]
            if not chain or chain[-1].max_txid != cur.txid:
                self._rebuild(f"the replica no longer has the files after TXID {txid:016x}")
                return
            changed = self._rep.pages_in(chain)
        rc = lib.lsvfs_hydration_adopt(self._h, cur.table.cdata, min(commit, cur.commit),
                                       ffi.NULL if changed is None else changed.table.cdata)
        if rc:
            raise MemoryError("hydration: out of memory")
        self._meta = meta
        log.info("%s: hydration file %s resumed at TXID %016x", self._rep.name, self.path, txid)

    def _other_lineage(self, files: list[FileInfo], meta: dict[str, Any], checksum: int) -> str | None:
        """Why the file's TXID in `files` is not the state the file holds, if a
        file ending there says so: its header time (compactions keep the time
        of the file they end with; snapshots have their own) or its checksum."""
        txid = int(meta["txid"])
        snapshot_file = bool(meta.get("snapshot_file"))
        ending = [f for f in files if f.max_txid == txid and _is_snapshot(f) == snapshot_file]
        if not ending:
            return None
        f = max(ending, key=lambda f: f.level)
        storage = self._rep.storage
        header = ltx.Header.decode(storage.read(f, 0, ltx.HEADER_SIZE), f.name)
        if "timestamp" in meta and header.timestamp != int(meta["timestamp"]):
            return f"the replica's TXID {txid:016x} was written at another time: another lineage"
        if header.has_checksums:
            trailer = ltx.Trailer.decode(storage.read(f, f.size - ltx.TRAILER_SIZE, ltx.TRAILER_SIZE), header, f.name)
            if trailer.post_apply_checksum != checksum:
                return f"the replica's TXID {txid:016x} is not the one the file holds"
        return None

    def _read_meta(self) -> dict[str, Any] | None:
        if not self.persistent:
            return None
        try:
            with open(self._meta_path, encoding="utf-8") as fh:
                meta = json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("hydration record %s unreadable (%s)", self._meta_path, exc)
            return {}
        return meta if isinstance(meta, dict) and meta.get("version") == META_VERSION else {}

    def _rebuild(self, why: str) -> None:
        self.rebuilds += 1
        log.warning("%s: rebuilding hydration file %s: %s", self._rep.name, self.path, why)
        self._reset()

    def _reset(self) -> None:
        self.synced_txid = None
        self._meta = None
        with self._writing() as ours:
            if not ours:
                return
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._meta_path)
            if lib.lsvfs_hydration_reset(self._h):
                raise OSError(f"hydration file {self.path}: cannot truncate")


def _is_snapshot(f: FileInfo | None) -> bool:
    return f is not None and f.level == SNAPSHOT_LEVEL
