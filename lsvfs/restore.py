"""Restore a replica to a database file, and verify a replica end to end.

Every file is fetched whole, so every file is proven by its CRC-64 before a
byte of it lands in the output; the output appears only by an atomic rename.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import core, ltx
from .errors import ChecksumError, LsvfsError, LTXError, ReplicaError
from .plan import Target, list_all, plan_for
from .storage import open_storage
from .storage.base import FileInfo, StorageClient

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called with (bytes fetched so far, bytes in the plan)."""

FILES_AHEAD = 8
"""LTX files fetched in parallel ahead of the one being applied or checked."""


@dataclass(frozen=True)
class RestoreResult:
    txid: int
    page_size: int
    commit: int
    checksum: int
    files: tuple[FileInfo, ...]
    checksum_verified: bool


def _fetch_in_order(storage: StorageClient, files: list[FileInfo]) -> Iterator[tuple[FileInfo, ltx.DecodedFile]]:
    """Decoded files in plan order, fetched and verified a few ahead in parallel."""
    def fetch(f: FileInfo) -> ltx.DecodedFile:
        return ltx.decode(storage.read_all(f), f.name)

    with ThreadPoolExecutor(max_workers=FILES_AHEAD) as pool:
        pending: list[tuple[FileInfo, Future[ltx.DecodedFile]]] = []
        it = iter(files)
        for f in it:
            pending.append((f, pool.submit(fetch, f)))
            if len(pending) >= FILES_AHEAD:
                break
        while pending:
            f, fut = pending.pop(0)
            decoded = fut.result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(fetch, nxt)))
            yield f, decoded


def _write_runs(fd: int, decoded: ltx.DecodedFile) -> None:
    """pwrite each run of consecutive pgnos with one call."""
    ps = decoded.header.page_size
    entries = list(decoded.entries)
    i = 0
    while i < len(entries):
        j = i + 1
        while j < len(entries) and entries[j][0] == entries[j - 1][0] + 1:
            j += 1
        os.pwrite(fd, decoded.pages[i * ps:j * ps], (entries[i][0] - 1) * ps)
        i = j


def apply_plan(storage: StorageClient, files: list[FileInfo], fd: int,
               progress: Progress | None = None) -> tuple[ltx.Header, ltx.Trailer]:
    """Apply `files` to the open file `fd`; returns the last header and trailer."""
    total = sum(f.size for f in files)
    done = 0
    header: ltx.Header | None = None
    trailer: ltx.Trailer | None = None
    commit = 0
    for f, decoded in _fetch_in_order(storage, files):
        h = decoded.header
        ltx.check_name(f, h)
        if header is not None and h.page_size != header.page_size:
            raise LTXError(f"page size {h.page_size} differs from {header.page_size} earlier in the plan", f.name)
        if h.commit < commit:
            os.ftruncate(fd, h.commit * h.page_size)
        _write_runs(fd, decoded)
        header, trailer, commit = h, decoded.trailer, h.commit
        done += f.size
        if progress:
            progress(done, total)
    assert header is not None and trailer is not None
    os.ftruncate(fd, header.commit * header.page_size)
    return header, trailer


def restore(url: str | StorageClient, out: str | os.PathLike[str], *, txid: int | None = None,
            timestamp_ms: int | None = None, force: bool = False,
            progress: Progress | None = None) -> RestoreResult:
    """Rebuild the database at the target into `out`, atomically."""
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass force=True (--force) to overwrite")
    storage = open_storage(url) if isinstance(url, str) else url
    try:
        files = plan_for(storage, Target(txid, timestamp_ms))
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent or ".")
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a database gets the usual mode
            header, trailer = apply_plan(storage, files, fd, progress)
            checksum = _file_checksum(fd, header.page_size, header.commit)
            verified = header.has_checksums
            if verified and checksum != trailer.post_apply_checksum:
                raise ChecksumError(f"restored database checksum {checksum:016x} != post-apply checksum "
                                    f"{trailer.post_apply_checksum:016x}", files[-1].name)
            os.fsync(fd)
            os.close(fd)
            fd = -1
            _publish(tmp, out, force)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    finally:
        if isinstance(url, str):
            storage.close()
    return RestoreResult(header.max_txid, header.page_size, header.commit, checksum, tuple(files), verified)


def _publish(tmp: str, out: Path, force: bool) -> None:
    """Move the finished temp file to `out` atomically; without `force`, never over an existing file,
    even one that appeared while the restore ran (a hard link fails if the name exists)."""
    if force:
        os.replace(tmp, out)
        return
    try:
        os.link(tmp, out)
    except FileExistsError:
        raise FileExistsError(f"{out} exists; pass force=True (--force) to overwrite") from None
    except OSError:  # no hard links on this filesystem: check, then rename
        if out.exists():
            raise FileExistsError(f"{out} exists; pass force=True (--force) to overwrite") from None
        os.replace(tmp, out)
        return
    os.unlink(tmp)


def _umask() -> int:
    """The process umask, read without changing it where Linux allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _file_checksum(fd: int, page_size: int, commit: int) -> int:
    """Rolling checksum of the first `commit` pages of an open file, in 16 MiB steps."""
    step = max(1, (16 << 20) // page_size)
    xor = 0
    for first in range(0, commit, step):
        n = min(step, commit - first)
        data = os.pread(fd, n * page_size, first * page_size)
        if len(data) != n * page_size:
            raise LsvfsError("restored file shorter than its commit size")
        xor ^= core.pages_checksum_xor(first + 1, data, page_size)
    return xor | ltx.CHECKSUM_FLAG


@dataclass
class VerifyReport:
    files_checked: int = 0
    bytes_checked: int = 0
    bad: list[tuple[FileInfo, str]] = field(default_factory=list)
    txid: int = 0
    checksum: int = 0
    checksum_verified: bool = False

    @property
    def ok(self) -> bool:
        return not self.bad


def verify(url: str | StorageClient, progress: Progress | None = None) -> VerifyReport:
    """Check every file's CRC-64 and structure, then rebuild the latest state
    in a scratch file and check its rolling checksum where the files carry one.

    `progress` counts both passes' bytes, so a bar reaches 100% only at the end.
    A replica that has no latest state (empty, a gap) fails after the file
    checks, which name any bad file first."""
    storage = open_storage(url) if isinstance(url, str) else url
    report = VerifyReport()
    try:
        files = list_all(storage)
        unplannable: ReplicaError | None = None
        try:
            plan = plan_for(storage, Target(), files)
        except ReplicaError as exc:  # raised after the file checks, which name any bad file first
            plan, unplannable = [], exc
        total = sum(f.size for f in files) + sum(f.size for f in plan)

        def check(f: FileInfo) -> tuple[FileInfo, str | None]:
            try:
                ltx.check_name(f, ltx.decode(storage.read_all(f), f.name, want_pages=False).header)
            except LsvfsError as exc:
                return f, getattr(exc, "reason", str(exc))
            return f, None

        with ThreadPoolExecutor(max_workers=FILES_AHEAD) as pool:
            for f, err in pool.map(check, files):
                report.files_checked += 1
                report.bytes_checked += f.size
                if err:
                    report.bad.append((f, err))
                if progress:
                    progress(report.bytes_checked, total)
        if report.bad:
            return report
        if unplannable is not None:
            raise unplannable

        def rebuilding(done: int, _plan_total: int) -> None:
            if progress:
                progress(report.bytes_checked + done, total)

        with tempfile.TemporaryFile() as tmp:
            header, trailer = apply_plan(storage, plan, tmp.fileno(), rebuilding)
            report.txid = header.max_txid
            report.checksum = _file_checksum(tmp.fileno(), header.page_size, header.commit)
            report.checksum_verified = header.has_checksums
            if header.has_checksums and report.checksum != trailer.post_apply_checksum:
                report.bad.append((plan[-1], f"database checksum {report.checksum:016x} != post-apply "
                                             f"{trailer.post_apply_checksum:016x}"))
    finally:
        if isinstance(url, str):
            storage.close()
    return report
