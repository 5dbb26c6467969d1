"""The leader's work: copy the replica's LTX files into the shared directory.

The directory takes the directory-replica layout (`ltx/<level>/<min>-<max>.ltx`),
so every process reads it with the file backend. A file is downloaded whole,
proven (its name against its header, its size, its CRC-64), written under a
temp name that is not an LTX name, fsynced and renamed: a file in the mirror
is complete or absent, whenever the leader dies. Each local file keeps its
remote modification time, so a later listing tells a rewritten file (another
lineage) from the one we have. Only what a reader of the newest TXID needs is
copied: the restore plan once, then the files that continue it (not every
level's history). What retention deleted goes after its bridge has arrived;
another lineage's files go first, so a reader never sees an old lineage
continued by a new one's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from .. import ltx
from ..errors import MissingFileError, ReplicaError
from ..plan import build, extend, list_all
from ..stats import CountingStorage
from ..storage.base import FileInfo, StorageClient, check_level, format_filename, parse_filename
from ..storage.file import FileStorage
from .directory import TEMP_SUFFIX

log = logging.getLogger(__name__)

FULL_SCAN_EVERY = 10
"""Polls between listings of every level even when L0 shows nothing amiss."""

Key = tuple[int, int, int]
SCRUB_BYTES = 64 << 20
"""Bytes of the files a new leader took over that each poll checks: a big
mirror is proven over a few polls, not before the first one."""
Progress = Callable[[int, int], None]
"""Called with (bytes downloaded, bytes to download) as a poll's files arrive (`lsvfs mirror`'s bar)."""


def _same(local: FileInfo, remote: FileInfo) -> bool:
    """The local copy is of this remote file: same size and (where listed) time."""
    if local.size != remote.size:
        return False
    if remote.modified is None or local.modified is None:
        return True
    return abs((local.modified - remote.modified).total_seconds()) < 0.001


class Mirror:
    """Keeps `root` a copy of `remote`: one poll at a time, by the leader only."""

    def __init__(self, remote: StorageClient, root: Path, name: str,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self.remote = CountingStorage(remote)
        self._stopping = stopping
        self.local = FileStorage(root)
        self.root = root
        self.name = name
        self._since_full = FULL_SCAN_EVERY  # the first poll lists every level
        self._seen: dict[Key, datetime | None] = {}  # remote times found to be of the files we hold
        self._unchecked: list[FileInfo] = []  # taken over, not yet proven (see scrub)
        self.files = 0
        self.bytes = 0
        self.txid = 0

    def close(self) -> None:
        self.local.close()
        self.remote.close()

    def _same(self, local: FileInfo, remote: FileInfo) -> bool:
        """Whether the local copy is of this remote file. Another size says no;
        another time alone is checked against the file's header and trailer
        (a writer may set a file's time after it was first listed), and an
        answer of yes remembered, so the local file, which readers list, is
        never touched for it."""
        if _same(local, remote) or self._seen.get(remote.key) == remote.modified:
            return True
        if local.size != remote.size or local.size < ltx.HEADER_SIZE + ltx.TRAILER_SIZE:
            return False
        ends = ((0, ltx.HEADER_SIZE), (local.size - ltx.TRAILER_SIZE, ltx.TRAILER_SIZE))
        if any(self.local.read(local, o, n) != self.remote.read(remote, o, n) for o, n in ends):
            return False
        log.debug("%s: %s is listed with another time (%s, copied at %s), same header and trailer: the same file",
                  self.name, remote.name, remote.modified, local.modified)
        self._seen[remote.key] = remote.modified
        return True

    # ---- taking over --------------------------------------------------------

    def take_over(self) -> None:
        """Before leading: remove temp files a killed leader left, and queue
        every LTX file for scrub(). Checking them all here would make failover
        as slow as reading the whole mirror."""
        for level_dir in (self.root / "ltx").glob("*"):
            for tmp in level_dir.glob(f"*{TEMP_SUFFIX}"):
                log.info("%s: removing %s, left half-written by a previous leader", self.name, tmp)
                tmp.unlink(missing_ok=True)
        self._unchecked = sorted(list_all(self.local), key=lambda f: f.max_txid)

    def scrub(self, budget: int) -> None:
        """Check the CRC-64 of queued files, newest first, until `budget` bytes
        are read; a damaged one is removed with a WARNING and the next listing
        of every level fetches it again."""
        while self._unchecked and budget > 0:
            f = self._unchecked.pop()
            budget -= f.size
            try:
                data = self.local.read_all(f)
                ltx.check_name(f, ltx.Header.decode(data, f.name))
                ltx.decode(data, f.name, want_pages=False)
            except MissingFileError:
                continue  # gone since (retention, another lineage): nothing to check
            except Exception as exc:  # noqa: BLE001 - any failure means the copy cannot be trusted
                log.warning("%s: %s in %s is damaged (%s); fetching it again", self.name, f.name, self.root, exc)
                self.local.path_of(f).unlink(missing_ok=True)
                self._since_full = FULL_SCAN_EVERY

    @property
    def unchecked(self) -> int:
        """Files taken over that scrub() has yet to check."""
        return len(self._unchecked)

    # ---- polling --------------------------------------------------------------

    def poll(self, progress: Progress | None = None) -> None:
        """One poll: L0 from the newest local L0 file when that file is still
        listed as we copied it and L0 continues; every level otherwise, and
        every FULL_SCAN_EVERY polls (retention, compactions, a new lineage)."""
        self.scrub(SCRUB_BYTES)
        local = {f.key: f for f in list_all(self.local)}
        if self._since_full >= FULL_SCAN_EVERY or not local or not self._l0_poll(local, progress):
            self._full_poll(local, progress)
        self._count()

    def _l0_poll(self, local: dict[Key, FileInfo], progress: Progress | None) -> bool:
        """False when L0 alone cannot tell what changed."""
        top = max(f.max_txid for f in local.values())
        l0 = [f for f in local.values() if f.level == 0]
        anchor = max(l0, key=lambda f: f.max_txid) if l0 else None
        listed = self.remote.list_files(0, anchor.min_txid if anchor is not None else top + 1)
        if anchor is not None:
            same = [g for g in listed if g.key == anchor.key]
            if not same or not self._same(anchor, same[0]):
                return False  # retention or a rewrite: look at every level
        new = [f for f in listed if f.key not in local and f.min_txid > top]
        chain = extend(new, top)
        reached = chain[-1].max_txid if chain else top
        if any(f.min_txid > reached + 1 for f in new):
            return False  # L0 has a gap a higher level covers
        self._since_full += 1
        self._download(chain, progress)
        return True

    def _full_poll(self, local: dict[Key, FileInfo], progress: Progress | None) -> None:
        self._since_full = 0
        files = list_all(self.remote)
        if not files:
            raise ReplicaError(f"replica {self.name} lists no LTX files (removed, or being replaced?)")
        remote = {f.key: f for f in files}
        stale = [f for k, f in local.items() if k not in remote or not self._same(f, remote[k])]
        stale_keys = {f.key for f in stale}
        kept = [f for k, f in local.items() if k not in stale_keys]
        rewritten = [f for f in stale if f.key in remote]
        went_back = bool(local) and max(f.max_txid for f in files) < max(f.max_txid for f in local.values())
        if rewritten or went_back:
            log.warning("%s: %s holds another lineage of the replica (%s); rebuilding it", self.name, self.root,
                        f"{rewritten[0].name} was rewritten" if rewritten else "its newest TXID went back")
            self._remove(stale)  # first: never an old lineage continued by a new one
            self._download(build(files), progress)
            return
        held = {f.key for f in kept}
        self._download([f for f in self._wanted(files, kept) if f.key not in held], progress)
        self._remove(stale)  # after: what retention deleted is bridged before it goes

    @staticmethod
    def _wanted(files: list[FileInfo], kept: list[FileInfo]) -> list[FileInfo]:
        """What the mirror needs: the files continuing the chain it holds, or
        the newest restore plan when it holds none; never the history a
        reader at the newest TXID has no use for (older compactions)."""
        mine = extend(kept, 0)
        if mine:
            top = mine[-1].max_txid
            more = extend(files, top)
            if more or max(f.max_txid for f in files) <= top:
                return more
        return build(files)  # nothing held, or nothing continues it (behind retention): start afresh

    def _remove(self, files: list[FileInfo]) -> None:
        for f in files:
            log.debug("%s: removing %s (gone or rewritten remotely)", self.name, f.name)
            self.local.path_of(f).unlink(missing_ok=True)

    def _download(self, files: list[FileInfo], progress: Progress | None) -> None:
        """Each file in TXID order, so what readers see grows as a chain."""
        total, done = sum(f.size for f in files), 0
        if progress is not None and files:
            progress(0, total)
        for f in sorted(files, key=lambda f: (f.max_txid, -f.level)):
            if self._stopping():
                return  # closing: what is there is complete; the next leader goes on
            self._fetch(f)
            done += f.size
            if progress is not None:
                progress(done, total)

    def _fetch(self, f: FileInfo) -> None:
        check_level(f.level)
        name = format_filename(f.min_txid, f.max_txid)
        parse_filename(name)  # the strict LTX name rule, before it becomes a path
        data = self.remote.read_all(f)  # exactly f.size bytes, or StorageError
        ltx.check_name(f, ltx.Header.decode(data, f.name))
        ltx.decode(data, f.name, want_pages=False)  # the file CRC-64: ChecksumError
        path = self.local.path_of(f)
        self.install(path, data, f.modified)
        log.debug("%s: mirrored %s (%d bytes)", self.name, f.name, len(data))

    def install(self, path: Path, data: bytes, modified: datetime | None) -> None:
        """Write `data` under a temp name, fsync, rename to `path`, fsync the folder."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        try:
            if modified is not None:
                ns = int(modified.timestamp() * 1_000_000) * 1000
                os.utime(tmp, ns=(ns, ns))
            self.publish(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def publish(self, tmp: Path, path: Path) -> None:
        """The rename that makes a file appear whole (a test kills the leader just before it)."""
        os.rename(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _count(self) -> None:
        files = list_all(self.local)
        self.files = len(files)
        self.bytes = sum(f.size for f in files)
        self.txid = max((f.max_txid for f in files), default=0)
