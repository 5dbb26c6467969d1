"""Directory replicas: `<root>/ltx/<level>/<min:016x>-<max:016x>.ltx`.

Reads go through `os.pread` on cached descriptors so concurrent readers share
one fd per file without seeking. LTX files are immutable once renamed into
place, so an open descriptor stays valid even after Litestream deletes the
name (L0 retention): a reader that listed a file can still finish with it.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path

from ..errors import LTXError, MissingFileError, StorageError
from ..lru import LRU
from .base import FileInfo, check_level, check_range, format_filename, level_dir, parse_filename

log = logging.getLogger(__name__)

DEFAULT_MAX_OPEN = 64
"""Open descriptors kept per FileStorage: enough for the hot files of a page table."""


class _Handle:
    """An fd with a reference count, so eviction never closes it under a reader."""

    __slots__ = ("fd", "refs", "evicted")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.refs = 0
        self.evicted = False


class FileStorage:
    """Read-only client of a Litestream directory replica."""

    local = True
    """Listing is a few local directory scans: callers need no threads for it."""

    def __init__(self, root: str | os.PathLike[str], *, max_open: int = DEFAULT_MAX_OPEN) -> None:
        if max_open < 1:
            raise ValueError("max_open must be >= 1")
        self.root = Path(os.path.abspath(os.fspath(root)))
        self.url = self.root.as_uri()
        self._lock = threading.Lock()
        self._handles: LRU[FileInfo, _Handle] = LRU(max_open)
        self._closed = False

    def __repr__(self) -> str:
        return f"FileStorage({str(self.root)!r})"

    def path_of(self, info: FileInfo) -> Path:
        """Where `info` lives on disk (used in error messages and by tests)."""
        return self.root / level_dir("", info.level, "ltx") / format_filename(info.min_txid, info.max_txid)

    # -- listing ----------------------------------------------------------

    def list_files(self, level: int, min_txid: int = 0) -> list[FileInfo]:
        """LTX files of `level` with min_txid >= `min_txid`, sorted by (min, max).

        Names that are not LTX names (Litestream's temp files while it writes,
        stray files) are skipped; a file deleted between listing and stat is
        skipped too, since retention may remove L0 files at any time.
        """
        check_level(level)
        d = self.root / level_dir("", level, "ltx")
        out: list[FileInfo] = []
        try:
            it = os.scandir(d)
        except FileNotFoundError:
            return []
        except OSError as e:
            raise StorageError(f"{d}: cannot list level {level}: {e.strerror or e}") from e
        with it:
            for entry in it:
                try:
                    lo, hi = parse_filename(entry.name)
                except LTXError:
                    continue
                if lo < min_txid:
                    continue
                try:
                    if not entry.is_file():
                        continue
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                except OSError as e:
                    raise StorageError(f"{entry.path}: cannot stat: {e.strerror or e}") from e
                mtime = datetime.fromtimestamp(st.st_mtime, tz=timezone.utc)
                out.append(FileInfo(level, lo, hi, st.st_size, mtime))
        out.sort(key=lambda f: (f.min_txid, f.max_txid))
        return out

    # -- reading ----------------------------------------------------------

    def read(self, info: FileInfo, offset: int, length: int) -> bytes:
        """Exactly `length` bytes at `offset`, or StorageError (short read = file too small)."""
        check_range(offset, length)
        if length == 0:
            return b""
        h = self._acquire(info)
        try:
            data = self._pread_full(h.fd, info, offset, length)
        finally:
            self._release(h)
        return data

    def read_all(self, info: FileInfo) -> bytes:
        """The whole file; StorageError if its size on disk is not `info.size`."""
        h = self._acquire(info)
        try:
            try:
                size = os.fstat(h.fd).st_size
            except OSError as e:
                raise StorageError(f"{info.name}: cannot stat {self.path_of(info)}: {e.strerror or e}") from e
            if size != info.size:
                raise StorageError(
                    f"{info.name}: {self.path_of(info)} is {size} bytes, expected {info.size}"
                )
            return self._pread_full(h.fd, info, 0, info.size)
        finally:
            self._release(h)

    def _pread_full(self, fd: int, info: FileInfo, offset: int, length: int) -> bytes:
        parts: list[bytes] = []
        got = 0
        while got < length:
            try:
                chunk = os.pread(fd, length - got, offset + got)
            except OSError as e:
                raise StorageError(
                    f"{info.name}: read of {length} bytes at offset {offset} of "
                    f"{self.path_of(info)} failed: {e.strerror or e}"
                ) from e
            if not chunk:
                raise StorageError(
                    f"{info.name}: short read of {self.path_of(info)}: wanted {length} bytes at "
                    f"offset {offset}, got {got} (file is smaller than expected)"
                )
            parts.append(chunk)
            got += len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # -- descriptor cache -------------------------------------------------

    def _acquire(self, info: FileInfo) -> _Handle:
        key = info  # by size and time too: a replaced replica reuses names for other files
        with self._lock:
            if self._closed:
                raise StorageError(f"{info.name}: storage {self.url} is closed")
            h = self._handles.get(key)
            if h is not None:
                h.refs += 1
                return h
        # Open outside the lock: a slow filesystem must not stall other readers.
        path = self.path_of(info)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError as e:
            raise MissingFileError(f"{info.name}: file not found: {path}") from e
        except OSError as e:
            raise StorageError(f"{info.name}: cannot open {path}: {e.strerror or e}") from e
        to_close: list[int] = []
        with self._lock:
            if self._closed:
                to_close.append(fd)
                h = None
            else:
                h = self._handles.get(key)
                if h is not None:  # another thread opened it meanwhile
                    to_close.append(fd)
                else:
                    h = _Handle(fd)
                    for _, old in self._handles.put(key, h):
                        old.evicted = True
                        if old.refs == 0:
                            to_close.append(old.fd)
                h.refs += 1
        for f in to_close:
            _close_quietly(f)
        if h is None:
            raise StorageError(f"{info.name}: storage {self.url} is closed")
        return h

    def _release(self, h: _Handle) -> None:
        close_fd = False
        with self._lock:
            h.refs -= 1
            close_fd = h.evicted and h.refs == 0
        if close_fd:
            _close_quietly(h.fd)

    def open_handles(self) -> int:
        """How many descriptors are cached (tests check the bound)."""
        with self._lock:
            return len(self._handles)

    def close(self) -> None:
        """Close every cached fd; in-flight reads finish on theirs, then it closes."""
        to_close: list[int] = []
        with self._lock:
            self._closed = True
            for h in self._handles.clear():
                h.evicted = True
                if h.refs == 0:
                    to_close.append(h.fd)
        for f in to_close:
            _close_quietly(f)

    def __enter__(self) -> FileStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:  # pragma: no cover - nothing useful to do
        log.debug("closing fd %d failed", fd, exc_info=True)
