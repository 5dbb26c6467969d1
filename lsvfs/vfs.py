"""The apsw glue: the `litestream` VFS, its main-database file, temp files, PRAGMAs.

A connection pins the Replica's newest snapshot when SQLite takes its SHARED
lock and lets go at NONE, so a read transaction sees exactly one TXID.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import tempfile
import threading
import uuid
from typing import Any
from urllib.parse import quote, urlencode

import apsw

from . import replica as registry
from .errors import LsvfsError, LTXError, ReplicaError
from .options import NAMES, resolve
from .replica import Replica, Snapshot
from .storage.base import StorageClient
from .timeutil import format_time, parse_time

log = logging.getLogger(__name__)

_TEMP_FLAGS = (apsw.SQLITE_OPEN_TEMP_DB | apsw.SQLITE_OPEN_TEMP_JOURNAL | apsw.SQLITE_OPEN_SUBJOURNAL
               | apsw.SQLITE_OPEN_TRANSIENT_DB)
_PRAGMAS = ("litestream_txid", "litestream_lag", "litestream_time")


def _sqlite_error(exc: LsvfsError) -> apsw.Error:
    """Map our errors to what SQLite expects: bad bytes are corruption, the rest I/O."""
    if isinstance(exc, LTXError):
        return apsw.CorruptError(str(exc))
    return apsw.IOError(str(exc))


class ReplicaFile:
    """The main database file of one connection, served from its Replica."""

    def __init__(self, vfs: LitestreamVFS, rep: Replica) -> None:
        self.vfs = vfs
        self.replica = rep
        self.lock = apsw.SQLITE_LOCK_NONE
        self.pinned: Snapshot | None = None
        self.pin_txid: int | None = None
        self.pin_time_ms: int | None = None
        self._next_pgno = 0
        self._run = 1
        self._closed = False

    # -- snapshot selection --

    def _wanted(self) -> Snapshot:
        if self.pin_txid is not None:
            return self.replica.snapshot_at(txid=self.pin_txid)
        if self.pin_time_ms is not None:
            return self.replica.snapshot_at(timestamp_ms=self.pin_time_ms)
        return self.replica.current()

    def snapshot(self) -> Snapshot:
        return self.pinned if self.pinned is not None else self._wanted()

    # -- VFSFile methods --

    def xRead(self, amount: int, offset: int) -> bytes:
        try:
            snap = self.snapshot()
            return self._read(snap, amount, offset)
        except LsvfsError as exc:
            raise _sqlite_error(exc) from exc

    def _read(self, snap: Snapshot, amount: int, offset: int) -> bytes:
        ps = snap.page_size
        end = min(offset + amount, snap.size)
        if offset >= end:
            return b""
        first = offset // ps + 1
        last = (end - 1) // ps + 1
        # Sequential access grows the read-ahead window; a jump resets it.
        self._run = min(self._run * 2, self.replica.options.readahead) if first == self._next_pgno else 1
        self._next_pgno = last + 1
        readahead = max(self._run, last - first + 1)
        if first != 1 and amount == ps and offset == (first - 1) * ps and end - offset == ps:
            return self.replica.read_page(snap, first, readahead)  # the hot path: one whole page
        parts = []
        for pgno in range(first, last + 1):
            page = self.replica.read_page(snap, pgno, readahead if pgno == first else 1)
            if pgno == 1:
                page = _shim_page1(page, snap)
            parts.append(page)
        data = b"".join(parts)
        start = offset - (first - 1) * ps
        return data[start:start + (end - offset)]

    def xWrite(self, data: bytes, offset: int) -> None:
        raise apsw.ReadOnlyError("litestream replicas are read-only")

    def xTruncate(self, newsize: int) -> None:
        raise apsw.ReadOnlyError("litestream replicas are read-only")

    def xSync(self, flags: int) -> None:
        pass

    def xFileSize(self) -> int:
        try:
            return self.snapshot().size
        except LsvfsError as exc:
            raise _sqlite_error(exc) from exc

    def xLock(self, level: int) -> None:
        if level >= apsw.SQLITE_LOCK_RESERVED:
            raise apsw.ReadOnlyError("litestream replicas are read-only")
        if self.lock == apsw.SQLITE_LOCK_NONE and level >= apsw.SQLITE_LOCK_SHARED:
            try:
                self.pinned = self._wanted()
            except LsvfsError as exc:
                raise _sqlite_error(exc) from exc
        self.lock = level

    def xUnlock(self, level: int) -> None:
        if level == apsw.SQLITE_LOCK_NONE:
            self.pinned = None
        self.lock = level

    def xCheckReservedLock(self) -> bool:
        return False

    def xSectorSize(self) -> int:
        return 4096

    def xDeviceCharacteristics(self) -> int:
        return 0

    def xFileControl(self, op: int, ptr: int) -> bool:
        if op != apsw.SQLITE_FCNTL_PRAGMA:
            return False
        pragma = apsw.VFSFcntlPragma(ptr)
        name = pragma.name.lower()
        if name not in _PRAGMAS:
            return False
        try:
            pragma.result = self._pragma(name, pragma.value)
        except (ValueError, LsvfsError) as exc:
            pragma.result = str(exc)
            raise apsw.SQLError(str(exc)) from exc
        return True

    def _pragma(self, name: str, value: str | None) -> str | None:
        rep = self.replica
        if name == "litestream_lag":
            if value is not None:
                raise ValueError("litestream_lag is read-only")
            lag = rep.lag()
            return "-1" if lag < 0 else str(int(lag))
        if name == "litestream_txid":
            if value is None:
                return f"{self.snapshot().txid:016x}"
            txid = _parse_txid(value)
            if txid is not None:
                rep.snapshot_at(txid=txid)  # fails here, at the PRAGMA, if unreachable
            self.pin_txid, self.pin_time_ms = txid, None
            return None
        if value is None:
            return format_time(self.snapshot().timestamp_ms)
        if value.strip().upper() == "LATEST":
            self.pin_txid = self.pin_time_ms = None
            return None
        ms = parse_time(value)
        rep.snapshot_at(timestamp_ms=ms)
        self.pin_txid, self.pin_time_ms = None, ms
        return None

    def xClose(self) -> None:
        if not self._closed:
            self._closed = True
            self.pinned = None
            registry.release(self.replica)


def _parse_txid(value: str) -> int | None:
    v = value.strip().strip("'\"").lower()
    if v in ("latest", ""):
        return None
    try:
        txid = int(v.removeprefix("0x"), 16)
    except ValueError:
        raise ValueError(f"litestream_txid: {value!r} is not a TXID (16 hex digits, or LATEST)") from None
    if txid <= 0:
        raise ValueError("litestream_txid: TXIDs start at 1")
    return txid


def _shim_page1(page: bytes, snap: Snapshot) -> bytes:
    """Present a rollback-journal database whose change counter moves exactly
    when the data can have changed, so SQLite keeps its cache otherwise."""
    buf = bytearray(page)
    buf[18] = buf[19] = 1
    counter = struct.pack(">I", snap.change_counter)
    buf[24:28] = counter
    buf[28:32] = struct.pack(">I", snap.commit)
    buf[92:96] = counter
    return bytes(buf)


class TempFile:
    """A temp file SQLite asked for, in our private directory, removed on close."""

    def __init__(self, vfs: LitestreamVFS, path: str, flags: list[int]) -> None:
        self._vfs = vfs
        self.path = path
        self._file = apsw.VFSFile("", path, [flags[0] | apsw.SQLITE_OPEN_DELETEONCLOSE, 0])
        flags[1] = flags[0]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def xClose(self) -> None:
        self._file.xClose()
        self._vfs._temp_closed(self.path)


class LitestreamVFS(apsw.VFS):
    """Opens main databases from replicas; delegates temp files to the default VFS."""

    def __init__(self, name: str = "litestream") -> None:
        super().__init__(name, "")
        self.name = name
        self.temp_dir = tempfile.mkdtemp(prefix="lsvfs-tmp-")
        self._temp_open: set[str] = set()
        self._temp_lock = threading.Lock()

    def temp_files_open(self) -> int:
        with self._temp_lock:
            return len(self._temp_open)

    def _temp_closed(self, path: str) -> None:
        with self._temp_lock:
            self._temp_open.discard(path)
        if os.path.exists(path):
            os.unlink(path)

    def xOpen(self, name: Any, flags: list[int]) -> Any:
        inflags = flags[0]
        if inflags & apsw.SQLITE_OPEN_MAIN_DB:
            url, opts = _replica_params(name)
            try:
                rep = registry.acquire(url, resolve(opts))
            except ValueError as exc:
                raise apsw.CantOpenError(str(exc)) from exc
            except LsvfsError as exc:
                raise apsw.CantOpenError(f"{url}: {exc}") from exc
            flags[1] = (inflags & ~(apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)) | apsw.SQLITE_OPEN_READONLY
            return ReplicaFile(self, rep)
        if inflags & _TEMP_FLAGS:
            path = os.path.join(self.temp_dir, f"tmp-{uuid.uuid4().hex}")
            with self._temp_lock:
                self._temp_open.add(path)
            try:
                return TempFile(self, path, flags)
            except BaseException:
                self._temp_closed(path)
                raise
        raise apsw.CantOpenError("litestream replicas are read-only: no journal or WAL is ever created")

    def xAccess(self, pathname: str, flags: int) -> bool:
        if pathname.startswith(self.temp_dir + os.sep):
            return bool(super().xAccess(pathname, flags))
        return False

    def xDelete(self, filename: str, syncdir: bool) -> None:
        if filename.startswith(self.temp_dir + os.sep):
            super().xDelete(filename, syncdir)

    def xFullPathname(self, name: str) -> str:
        return name

    def cleanup(self) -> None:
        shutil.rmtree(self.temp_dir, ignore_errors=True)


# ---- registration and connect() -------------------------------------------

_vfs_lock = threading.Lock()
_vfs: dict[str, LitestreamVFS] = {}


def register(name: str = "litestream") -> LitestreamVFS:
    """Register the VFS under `name` (once per process; later calls return it)."""
    with _vfs_lock:
        vfs = _vfs.get(name)
        if vfs is None:
            vfs = _vfs[name] = LitestreamVFS(name)
        return vfs


def _replica_params(name: Any) -> tuple[str, dict[str, str]]:
    params: dict[str, str] = {}
    url = None
    if isinstance(name, apsw.URIFilename):
        url = name.uri_parameter("replica")
        for opt in NAMES:
            v = name.uri_parameter(opt)
            if v is not None:
                params[opt] = v
    url = url or os.environ.get("LITESTREAM_REPLICA_URL")
    if not url:
        raise apsw.CantOpenError("no replica URL: pass replica=<url> in the URI or set LITESTREAM_REPLICA_URL")
    return url, params


def connect(url: str | None = None, *, name: str = "replica.db", vfs: str = "litestream",
            storage: StorageClient | None = None, **options: Any) -> apsw.Connection:
    """A read-only connection on the replica at `url` (or LITESTREAM_REPLICA_URL).

    Options (poll_interval, cache_size, open_timeout, verify, read_retries,
    readahead) may be keywords, URI parameters, or LSVFS_* environment
    variables, in that order of precedence. `storage` substitutes the client
    used to reach the replica (fault injection, custom backends).
    """
    register(vfs)
    url = url or os.environ.get("LITESTREAM_REPLICA_URL")
    if not url:
        raise ReplicaError("no replica URL given and LITESTREAM_REPLICA_URL is not set")
    given = {k: v for k, v in options.items() if v is not None}
    opts = resolve(given)  # fail early, as a ValueError naming the option
    rep = registry.acquire(url, opts, storage)  # typed lsvfs errors surface here
    params = {"vfs": vfs, "replica": url, **{k: str(v) for k, v in given.items()}}
    uri = f"file:{quote(name)}?{urlencode(params)}"
    try:
        # xOpen finds the Replica acquired above, so it shares it.
        return apsw.Connection(uri, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI, vfs=vfs)
    finally:
        registry.release(rep)
