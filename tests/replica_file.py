"""A main-database file opened on the C VFS without SQLite, for tests and fuzzing.

It calls the very methods SQLite calls (lsvfs_file_* in csrc/lsvfs_core.h),
so a test can take and drop locks, read at any offset and watch the pinned
snapshot between two calls, which no SQL statement can show.
"""

from __future__ import annotations

from typing import Any

import apsw

from lsvfs._core import ffi, lib
from lsvfs.replica import Replica, Snapshot
from lsvfs.vfs import SQLITE_NOTFOUND, Registration


def _check(rc: int) -> None:
    if rc:
        raise apsw.exception_for(rc)


class ReplicaFile:
    """One main-database file and its methods; errors are apsw's."""

    def __init__(self, reg: Registration, url: str, **options: Any) -> None:
        params = {"replica": url, **{k: str(v) for k, v in options.items()}}
        raw = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
        out = ffi.new("lsvfs_file **")
        _check(lib.lsvfs_file_open(reg.vfs["apsw"], raw, len(raw), out))
        self._f = out[0]
        self.replica: Replica = next(f.replica for f in reg.open_files() if f.file == self._f)

    def _snapshot(self, fn: Any) -> Snapshot | None:
        info = ffi.new("lsvfs_snapshot_info *")
        return None if fn(self._f, info) else self.replica.snapshot_of_id(info.id)

    @property
    def pinned(self) -> Snapshot | None:
        return self._snapshot(lib.lsvfs_file_pinned_info)

    def snapshot(self) -> Snapshot | None:
        return self._snapshot(lib.lsvfs_file_snapshot_info)

    @property
    def lock(self) -> int:
        return int(lib.lsvfs_file_lock_level(self._f))

    @property
    def last_error(self) -> str:
        """The cause of this file's last failed read (what PRAGMA litestream_error shows)."""
        return str(ffi.string(lib.lsvfs_file_error(self._f)).decode(errors="replace"))

    def xRead(self, amount: int, offset: int) -> bytes:
        """The bytes read; fewer than asked past the end (SQLite gets them zero-filled)."""
        buf = ffi.new("uint8_t[]", max(amount, 1))
        rc = lib.lsvfs_file_read(self._f, buf, amount, offset)
        if rc == apsw.SQLITE_IOERR_SHORT_READ:
            return bytes(ffi.buffer(buf, max(0, min(amount, self.xFileSize() - offset))))
        _check(rc)
        return bytes(ffi.buffer(buf, amount))

    def xLock(self, level: int) -> None:
        _check(lib.lsvfs_file_lock(self._f, level))

    def xUnlock(self, level: int) -> None:
        _check(lib.lsvfs_file_unlock(self._f, level))

    def xCheckReservedLock(self) -> bool:
        out = ffi.new("int *")
        _check(lib.lsvfs_file_check_reserved(self._f, out))
        return bool(out[0])

    def xFileSize(self) -> int:
        out = ffi.new("int64_t *")
        _check(lib.lsvfs_file_size(self._f, out))
        return int(out[0])

    def pragma(self, name: str, value: str | None = None) -> str | None:
        result = ffi.new("char **")
        rc = lib.lsvfs_file_pragma(self._f, name.encode(), ffi.NULL if value is None else value.encode(), result)
        text = None if result[0] == ffi.NULL else ffi.string(result[0]).decode()
        lib.lsvfs_free_result(self._f, result[0])
        if rc == SQLITE_NOTFOUND:
            raise KeyError(name)
        if rc:
            raise apsw.SQLError(text or name)
        return text

    def xClose(self) -> None:
        if self._f is not None:
            lib.lsvfs_file_close(self._f)
            self._f = None
