"""Hydration for a shared directory: one copy of the database's pages for every process.

With `hydration` and `shared_dir`, no process keeps a hydration file of its
own. The leader writes the pages of the mirror's newest restore plan into
one page file in the directory (PageWriter); every process reads it through
its C read path (SharedPages). Each page is tagged with the file its frame
came from (file_key), and a process is served a page only when its own
snapshot reads that page from that same file (csrc/sharedpages.c): a pinned
or lagging reader, or one of a replaced lineage, reads the mirror instead,
never another state's bytes.

A process opened with hydration creates the files, which is how the leader
(perhaps `lsvfs mirror`, started without --hydration) knows they are
wanted. Each leader step writes at most APPLY_BYTES, so a large first fill
never holds up a poll for long.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .. import core, ltx
from .._core import ffi, lib
from ..core import IndexEntries
from ..errors import LTXError, ReplicaError
from ..pagetable import PageTable
from ..plan import build, list_all
from ..storage.base import FileInfo
from ..storage.file import FileStorage

log = logging.getLogger(__name__)

APPLY_BYTES = 64 << 20
"""Bytes of LTX frames a leader step applies at most."""
CHUNK_BYTES = 8 << 20
"""Most bytes of one read of a file's frames."""
GAP_BYTES = 1 << 20
"""Bytes of frames not wanted that one read takes rather than starting another."""
BATCH = 1 << 16
"""Missing pages looked up at a time."""
TAIL_READ = 64 << 10
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> bytes:
    """This boot's id: tags written before a reboot may describe pages that never reached the disk."""
    try:
        return uuid.UUID(BOOT_ID.read_text().strip()).bytes
    except (OSError, ValueError) as e:
        raise ReplicaError(f"shared hydration needs the boot id in {BOOT_ID} ({e})") from e


def paths(root: Path, page_size: int) -> tuple[Path, Path]:
    """The page file and its tag file, per page size (a replaced replica may change it)."""
    return root / f"pages-{page_size}.db", root / f"pages-{page_size}.tags"


def _open(root: Path, page_size: int, writer: bool) -> Any:
    pages, tags = paths(root, page_size)
    out = ffi.new("lsvfs_shared_pages **")
    rc = lib.lsvfs_shared_pages_open(os.fsencode(pages), os.fsencode(tags), page_size, boot_id(), int(writer), out)
    if out[0] == ffi.NULL:
        raise ReplicaError(f"shared pages {pages}: cannot open ({core.strerror(rc)})")
    if rc and writer:
        lib.lsvfs_shared_pages_free(out[0])
        raise ReplicaError(f"shared pages {tags}: cannot set up ({core.strerror(rc)})")
    return out[0]


class View(Protocol):
    """What progress is taken from: a snapshot (lsvfs/replica/snapshot.py)."""

    @property
    def commit(self) -> int: ...
    @property
    def table(self) -> PageTable: ...


class SharedPages:
    """One process's reader of the shared page file, attached to its C replica.
    It has the interface of a Hydrator (lsvfs/hydration.py) so the replica,
    its PRAGMAs and its stats treat both alike."""

    def __init__(self, c_replica: Any, root: Path, page_size: int, current: Callable[[], View],
                 versions: dict[int, tuple[int, int]]) -> None:
        self.path = str(paths(root, page_size)[0])
        self._current = current
        self._sp = _open(root, page_size, writer=False)
        if lib.lsvfs_replica_set_shared_pages(c_replica, self._sp):
            lib.lsvfs_shared_pages_free(self._sp)
            raise ReplicaError("replica: shared pages attached twice")
        # The C replica owns it from here.
        for slot, (txid, key) in versions.items():
            self.note(slot, txid, key)
        self.wake()

    def note(self, slot: int, txid: int, key: int) -> None:
        """The file of `slot`: its max TXID and file_key."""
        if lib.lsvfs_shared_pages_set_version(self._sp, slot, txid, key):
            raise MemoryError("shared pages: out of memory")

    def start(self) -> None:
        """Nothing to start: the leader writes the file."""

    def wake(self) -> None:
        """A new snapshot: map what the leader has written since."""
        lib.lsvfs_shared_pages_refresh(self._sp)

    def forget(self, slots: list[int]) -> None:
        for slot in slots:
            lib.lsvfs_shared_pages_forget(self._sp, slot)

    def stop(self) -> None:
        """Nothing to stop."""

    def close(self, wait_s: float) -> None:
        """The C replica frees the reader with itself."""

    def missing(self, snap: View) -> int:
        """Pages of `snap` the file does not hold as `snap` reads them."""
        nxt = ffi.new("uint32_t *", 1)
        return int(lib.lsvfs_shared_pages_missing(self._sp, snap.table.cdata, snap.commit, nxt, ffi.NULL,
                                                  snap.commit + 1))

    def progress(self) -> int:
        """0-100, as Hydrator.progress."""
        snap = self._current()
        total = snap.table.count
        if total == 0:
            return 100
        left = self.missing(snap)
        return 100 if left == 0 else min(99, (total - left) * 100 // total)

    @property
    def synced_txid(self) -> int | None:
        """The last TXID the leader applied whole."""
        txid = ffi.new("uint64_t *")
        if lib.lsvfs_shared_pages_applied(self._sp, txid):
            return None
        return int(txid[0]) or None

    def stats(self) -> dict[str, Any]:
        synced = self.synced_txid
        return {"file": self.path, "shared": True, "progress": self.progress(),
                "txid": None if synced is None else f"{synced:016x}"}


class PageWriter:
    """The leader's side: keeps the page file holding the mirror's newest
    restore plan, page by page, as a reader's table of that plan reads it."""

    def __init__(self, root: Path, name: str, always: bool = False) -> None:
        self.root = root
        self.name = name
        self._always = always  # `lsvfs mirror --hydration`: wanted whether or not a reader asked yet
        self._sp: Any = None
        self._page_size = 0
        # The plan's files. Known by their whole listing, not their name: a
        # replaced replica lists files of the same names with other bytes.
        self._files: dict[FileInfo, _Loaded] = {}
        self._plan: list[FileInfo] = []
        self._table: PageTable | None = None
        self._commit = 0
        self._next_slot = 1
        self.written = 0  # pages this leader wrote
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._sp is not None:
                lib.lsvfs_shared_pages_free(self._sp)
                self._sp = None

    def step(self, local: FileStorage, stopping: Callable[[], bool]) -> bool:
        """Write up to APPLY_BYTES of the pages the file lacks; True when it
        holds the whole newest plan (or nobody wants it)."""
        with self._lock:
            if not self._always and self._sp is None and not any(self.root.glob("pages-*.tags")):
                return True  # nobody opened the directory with hydration
            files = list_all(local)
            if not files:
                return True
            plan = build(files)
            if not self._writer(local, plan[-1]):
                return True  # nobody reads pages of this size
            self._follow(local, plan)
            return self._fill(local, stopping)

    def _writer(self, local: FileStorage, newest: FileInfo) -> bool:
        page_size = ltx.Header.decode(local.read(newest, 0, ltx.HEADER_SIZE), newest.name).page_size
        if page_size != self._page_size:
            if not self._always and not paths(self.root, page_size)[1].exists():
                return False
            if self._sp is not None:
                lib.lsvfs_shared_pages_free(self._sp)
                self._sp = None
            self._sp = _open(self.root, page_size, writer=True)
            self._page_size = page_size
            self._files.clear()
            self._plan = []
        return True

    def _follow(self, local: FileStorage, plan: list[FileInfo]) -> None:
        """The table of `plan`: extended when it continues the last one, else built afresh."""
        if plan == self._plan and self._table is not None:
            return
        extends = self._table is not None and plan[:len(self._plan)] == self._plan
        table = self._table.clone() if extends and self._table is not None else PageTable()
        for f in plan[len(self._plan) if extends else 0:]:
            got = self._files.get(f) or self._load(local, f)
            if got.header.page_size != self._page_size:
                raise LTXError(f"page size {got.header.page_size} differs from the replica's {self._page_size}",
                               f.name)
            table.apply(got.slot, got.entries)
            table.truncate(got.header.commit)
            self._commit = got.header.commit
        for f in set(self._files) - set(plan):  # left the plan: its pages are no longer wanted
            lib.lsvfs_shared_pages_forget(self._sp, self._files.pop(f).slot)
        self._plan, self._table = plan, table

    def _load(self, local: FileStorage, f: FileInfo) -> _Loaded:
        header = ltx.Header.decode(local.read(f, 0, ltx.HEADER_SIZE), f.name)
        tail_start = max(0, f.size - TAIL_READ)
        tail = local.read(f, tail_start, f.size - tail_start)
        off, length = core.locate_index(tail, f.size, file=f.name)
        if off < tail_start:
            tail, tail_start = local.read(f, off, f.size - off), off
        entries = core.decode_index(tail[off - tail_start:off - tail_start + length], off, file=f.name)
        got = _Loaded(self._next_slot, header, entries, file_key(f, header, tail))
        self._next_slot += 1
        if lib.lsvfs_shared_pages_set_version(self._sp, got.slot, f.max_txid, got.key):
            raise MemoryError("shared pages: out of memory")
        self._files[f] = got
        return got

    def _fill(self, local: FileStorage, stopping: Callable[[], bool]) -> bool:
        """Write missing pages, grouped into one read per run of nearby frames of a file."""
        assert self._table is not None
        by_slot = {got.slot: (f, got) for f, got in self._files.items()}
        budget = APPLY_BYTES
        nxt = ffi.new("uint32_t *", 1)
        out = ffi.new("uint32_t[]", BATCH)
        while True:
            n = int(lib.lsvfs_shared_pages_missing(self._sp, self._table.cdata, self._commit, nxt, out, BATCH))
            if n == 0 and int(nxt[0]) > self._commit:
                newest = self._files[self._plan[-1]]
                lib.lsvfs_shared_pages_set_applied(self._sp, newest.header.max_txid)
                return True
            runs: dict[int, list[tuple[int, int, int]]] = {}
            for i in range(n):
                loc = self._table.get(out[i])
                if loc is not None:
                    runs.setdefault(loc[0], []).append((out[i], loc[1], loc[2]))
            for slot, frames in runs.items():
                f, got = by_slot[slot]
                for start, end, part in _spans(frames):
                    core.fill_shared_pages(self._sp, got.header.max_txid, got.key, local.read(f, start, end - start),
                                           start, IndexEntries.from_tuples(part), self._page_size, f.name)
                    self.written += len(part)
                    budget -= end - start
                    if budget <= 0 or stopping():
                        return False  # the next step goes on from here: what is written is skipped


@dataclass(frozen=True)
class _Loaded:
    """A plan file as the writer knows it: its slot, header, index and key."""

    slot: int
    header: ltx.Header
    entries: IndexEntries
    key: int


def file_key(f: FileInfo, header: ltx.Header, tail: bytes) -> int:
    """The nonzero 64-bit name of one file's bytes: everything that tells it
    from another lineage's file of the same name (the trailer's checksums
    are 0 in files written without them; the header time still differs)."""
    h = hashlib.blake2b(digest_size=8, person=b"lsvfs-pages")
    h.update(struct.pack(">BQQQq", f.level, f.min_txid, f.max_txid, f.size, header.timestamp))
    h.update(tail[-ltx.TRAILER_SIZE:])
    return int.from_bytes(h.digest(), "big") or 1


def _spans(frames: list[tuple[int, int, int]]) -> Iterator[tuple[int, int, list[tuple[int, int, int]]]]:
    """(start, end, frames) reads covering `frames` (pgno, offset, size), each
    at most CHUNK_BYTES and skipping gaps longer than GAP_BYTES."""
    frames.sort(key=lambda e: e[1])
    part: list[tuple[int, int, int]] = []
    start = end = 0
    for e in frames:
        if part and (e[1] - end > GAP_BYTES or e[1] + e[2] - start > CHUNK_BYTES):
            yield start, end, sorted(part)
            part = []
        if not part:
            start = e[1]
        part.append(e)
        end = e[1] + e[2]
    if part:
        yield start, end, sorted(part)
