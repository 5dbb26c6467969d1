"""The `litestream` VFS: registration in both SQLites, and its Python callbacks.

The VFS itself is C (csrc/vfs.c): locks, file size and every read that hits
the page cache run there without the GIL. Python is entered only through the
callbacks below: to open a main database, on a cache miss, for the
litestream_* PRAGMAs, and at close.

apsw links its own SQLite and exports none of its symbols, so the VFS
reaches it through a loadable-extension entry point, which hands over that
SQLite's api routines. The standard library's `sqlite3` uses the SQLite its
`_sqlite3` module links; its functions are looked up through that module,
never by a guessed library path.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode

import apsw

from . import _core, registry
from ._core import ffi, lib
from .errors import LsvfsError, LTXError, ReplicaError, WaitTimeout
from .ltx import parse_txid
from .options import from_params, replica_url, resolve
from .pragmas import PRAGMAS, READ_ONLY
from .replica import Replica, Snapshot
from .storage import parse_url
from .storage.base import StorageClient
from .storage.redact import redact_url
from .timeutil import format_time, parse_time

log = logging.getLogger(__name__)

SQLITE_OK = 0
SQLITE_ERROR = 1
SQLITE_BUSY = 5
SQLITE_BUSY_TIMEOUT = SQLITE_BUSY | (3 << 8)
SQLITE_INTERRUPT = 9
SQLITE_CORRUPT = 11
SQLITE_NOTFOUND = 12
SQLITE_CANTOPEN = 14
SQLITE_IOERR_READ = 10 | (1 << 8)
SQLITE_IOERR_LOCK = 10 | (15 << 8)

BUSY_RETRY_WINDOW = 0.25
"""Seconds after a wait for a floor timed out in which another lock of that file
is SQLite's busy handler retrying (every 100 ms at most): it only asks for a poll
and fails at once (C has looked at the newest snapshot already), rather than
wait out wait_timeout again on every retry."""

_ENTRY_POINT = "sqlite3_lsvfs_init"
_SQLITE_FUNCTIONS = ("sqlite3_vfs_find", "sqlite3_vfs_register", "sqlite3_uri_key", "sqlite3_uri_parameter",
                     "sqlite3_mprintf", "sqlite3_free", "sqlite3_auto_extension")  # in LSVFS_FN_* order
assert len(_SQLITE_FUNCTIONS) == lib.LSVFS_FN_COUNT


# ---- open files ---------------------------------------------------------------------

class OpenFile:
    """Python's side of one open main database: its Replica and its last error."""

    def __init__(self, vfs: Registration, replica: Replica, file: Any) -> None:
        self.vfs = vfs
        self.replica = replica
        self.file = file
        self.handle = ffi.new_handle(self)
        self.last_error = ""
        self.chosen: Snapshot | None = None  # pinned by PRAGMA litestream_txid / _time
        self.floor = 0  # PRAGMA litestream_min_txid (C holds it with its lineage)
        self.gave_up = -BUSY_RETRY_WINDOW  # time.monotonic() a wait for the floor last timed out

    def fail(self, rc: int, exc: BaseException, what: str = "read") -> int:
        """Record and log a failed read (or wait); SQLite gets only the code."""
        self.last_error = str(exc)
        lib.lsvfs_file_set_error(self.file, self.last_error.encode(errors="replace"))
        log.warning("%s: %s failed: %s", self.replica.name, what, exc)
        return rc

    def wait(self, txid: int, lineage: int) -> int:
        """A read transaction would start below the floor: wait for it (see lsvfs_py_wait)."""
        now = time.monotonic()
        if now - self.gave_up < BUSY_RETRY_WINDOW:
            self.gave_up = now
            self.replica.poller.ask()
            return SQLITE_BUSY_TIMEOUT
        try:
            self.replica.wait_for(txid, lineage)
        except WaitTimeout as exc:
            self.gave_up = time.monotonic()
            return self.fail(SQLITE_BUSY_TIMEOUT, exc, "wait")
        except LsvfsError as exc:
            return self.fail(SQLITE_IOERR_LOCK, exc, "wait")
        return SQLITE_OK

    def snapshot_info(self) -> Any:
        info = ffi.new("lsvfs_snapshot_info *")
        if lib.lsvfs_file_snapshot_info(self.file, info):
            raise ReplicaError(f"replica {self.replica.name} has no snapshot")
        return info

    def pragma(self, name: str, value: str | None) -> str | None:
        rep = self.replica
        if name in READ_ONLY and value is not None:
            raise ValueError(f"{name} is read-only")
        if name == "litestream_hydration_progress":
            return "0" if rep.hydrator is None else str(rep.hydrator.progress())
        if name == "litestream_hydration_file":
            return "" if rep.hydrator is None else rep.hydrator.path
        if name == "litestream_error":
            return self.last_error
        if name == "litestream_stats":
            return json.dumps(rep.stats(), sort_keys=True)
        if name == "litestream_lag":
            lag = rep.lag()
            return "-1" if lag < 0 else str(int(lag))
        if name == "litestream_min_txid":
            return f"{self.floor:016x}" if value is None else self._set_floor(value)
        # Setting one answers with what the connection will read from its next
        # transaction on (a PRAGMA that answers nothing has no column name,
        # which the standard library's sqlite3 takes for a failed allocation).
        if name == "litestream_txid":
            if value is None:
                return f"{self.snapshot_info().txid:016x}"
            txid = pinned_txid(value)
            # Resolved here, so an unreachable TXID fails at the PRAGMA.
            return self._choose(rep.snapshot_at(txid=txid) if txid is not None else None, name)
        if value is None:
            return format_time(self.snapshot_info().timestamp_ms)
        if value.strip().strip("'\"").upper() == "LATEST":
            return self._choose(None, name)
        return self._choose(rep.snapshot_at(timestamp_ms=parse_time(value)), name)

    def _set_floor(self, value: str) -> str:
        """Read at or after TXID `value` from the next read transaction on, and
        wait for the replica to reach it now (a statement that fails here says
        why; the floor stays until cleared)."""
        try:
            txid = parse_txid(value)
        except ValueError as exc:
            raise ValueError(f"litestream_min_txid: {exc}, or 0 to clear") from None
        if self.chosen is not None and txid > self.chosen.txid:
            raise ValueError(f"litestream_min_txid: this connection reads TXID {self.chosen.txid:016x} "
                             f"(PRAGMA litestream_txid or litestream_time), which can never reach {txid:016x}; "
                             "set PRAGMA litestream_txid = LATEST first")
        lineage = self.replica.lineages.number
        self.floor = txid
        lib.lsvfs_file_set_floor(self.file, txid, lineage)
        if txid and self.chosen is None:
            self.replica.wait_for(txid, lineage)
        return f"{txid:016x}"

    def _choose(self, snap: Snapshot | None, pragma: str) -> str:
        lib.lsvfs_file_choose(self.file, ffi.NULL if snap is None else self.replica.c_snapshot(snap))
        self.chosen = snap
        if snap is None:
            return "LATEST"
        return f"{snap.txid:016x}" if pragma == "litestream_txid" else format_time(snap.timestamp_ms)


def pinned_txid(value: str) -> int | None:
    """The TXID `PRAGMA litestream_txid = value` pins; None for LATEST."""
    if value.strip().strip("'\"").lower() in ("latest", ""):
        return None
    try:
        txid = parse_txid(value)
    except ValueError as exc:
        raise ValueError(f"litestream_txid: {exc}, or LATEST") from None
    if txid == 0:
        raise ValueError("litestream_txid: TXIDs start at 1")
    return txid


def _params(raw: bytes) -> dict[str, str]:
    parts = raw.split(b"\0")
    out: dict[str, str] = {}
    for i in range(0, len(parts) - 1, 2):
        if not parts[i]:
            break
        out.setdefault(parts[i].decode(errors="replace"), parts[i + 1].decode(errors="replace"))
    return out


# ---- callbacks (csrc/lsvfs_core.h, "callbacks into Python") -------------------------

def _unexpected(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    log.error("lsvfs callback failed unexpectedly", exc_info=(exc_type, exc, tb))


def _interrupted_or_unexpected(exc_type: type[BaseException], exc: BaseException,
                               tb: TracebackType | None) -> int | None:
    """A Ctrl-C that lands while SQLite waits in a callback (a fetch from S3, an open's
    listing) fails the statement with SQLite's own "interrupted", as `interrupt()` does,
    rather than vanishing into an I/O error and a logged traceback. Anything else is a bug:
    logged, and the callback's `error` value stands."""
    if issubclass(exc_type, KeyboardInterrupt):
        log.debug("interrupted inside an lsvfs callback")
        return SQLITE_INTERRUPT
    _unexpected(exc_type, exc, tb)
    return None


@ffi.def_extern(error=SQLITE_CANTOPEN, onerror=_interrupted_or_unexpected)
def lsvfs_py_open(ctx: Any, params: Any, params_len: int, file: Any) -> int:
    vfs: Registration = ffi.from_handle(ctx)
    p = _params(ffi.buffer(params, params_len)[:])
    url = replica_url(p)
    if not url:
        log.error("cannot open: no replica URL (pass replica=<url> in the URI or set LITESTREAM_REPLICA_URL)")
        return SQLITE_CANTOPEN
    try:
        rep = registry.acquire(url, resolve(from_params(p)))
    except (ValueError, LsvfsError) as exc:
        log.error("cannot open %s: %s", redact_url(url), exc)
        return SQLITE_CANTOPEN
    f = OpenFile(vfs, rep, file)
    with vfs.lock:
        vfs.files.add(f)
        rep.add_connection()
    lib.lsvfs_file_attach(file, rep.c, f.handle)
    return SQLITE_OK


@ffi.def_extern(error=SQLITE_IOERR_READ, onerror=_interrupted_or_unexpected)
def lsvfs_py_fetch(handle: Any, file: Any, snap: Any, pgno: int, readahead: int, out: Any, size: int) -> int:
    f: OpenFile = ffi.from_handle(handle)
    try:
        page = f.replica.read_page(f.replica.snapshot_of(snap), pgno, readahead)
    except LTXError as exc:
        return f.fail(SQLITE_CORRUPT, exc)
    except LsvfsError as exc:
        return f.fail(SQLITE_IOERR_READ, exc)
    if len(page) != size:
        return f.fail(SQLITE_CORRUPT, LTXError(f"page {pgno} has {len(page)} bytes, not {size}"))
    ffi.memmove(out, page, size)
    return SQLITE_OK


@ffi.def_extern(error=SQLITE_ERROR, onerror=_interrupted_or_unexpected)
def lsvfs_py_pragma(handle: Any, file: Any, name: Any, value: Any) -> int:
    f: OpenFile = ffi.from_handle(handle)
    pragma = ffi.string(name).decode().lower()
    if pragma not in PRAGMAS:
        return SQLITE_NOTFOUND
    arg = None if value == ffi.NULL else ffi.string(value).decode(errors="replace")
    try:
        result = f.pragma(pragma, arg)
    except WaitTimeout as exc:  # the busy code: frameworks retry it
        lib.lsvfs_file_set_result(file, str(exc).encode())
        return SQLITE_BUSY
    except (ValueError, LsvfsError) as exc:
        lib.lsvfs_file_set_result(file, str(exc).encode())
        return SQLITE_ERROR
    lib.lsvfs_file_set_result(file, ffi.NULL if result is None else result.encode())
    return SQLITE_OK


@ffi.def_extern(error=SQLITE_IOERR_LOCK, onerror=_interrupted_or_unexpected)
def lsvfs_py_wait(handle: Any, file: Any, txid: int, lineage: int) -> int:
    f: OpenFile = ffi.from_handle(handle)
    return f.wait(txid, lineage)


@ffi.def_extern(onerror=_unexpected)
def lsvfs_py_error(handle: Any, rc: int, message: Any) -> None:
    f: OpenFile = ffi.from_handle(handle)
    f.last_error = ffi.string(message).decode(errors="replace")
    log.warning("%s: read failed (SQLite code %d): %s", f.replica.name, rc, f.last_error)


@ffi.def_extern(onerror=_unexpected)
def lsvfs_py_close(handle: Any) -> None:
    f: OpenFile = ffi.from_handle(handle)
    with f.vfs.lock:
        f.vfs.files.discard(f)
        f.replica.drop_connection()
    registry.release(f.replica)


# ---- registration -------------------------------------------------------------------

@dataclass(eq=False)
class Registration:
    """One VFS name, registered in apsw's SQLite and, where possible, the standard library's."""

    name: str
    files: set[OpenFile] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stdlib_error: str | None = None
    handle: Any = None
    vfs: dict[str, Any] = field(default_factory=dict)  # "apsw" / "sqlite3" -> lsvfs_vfs*

    def open_files(self) -> list[OpenFile]:
        with self.lock:
            return list(self.files)


_registrations: dict[str, Registration] = {}
_registrations_lock = threading.Lock()


def _apsw_functions() -> Any:
    """apsw's SQLite's functions, from our extension entry point loaded on a
    private connection (which is then closed: no other connection changes)."""
    conn = apsw.Connection(":memory:")
    try:
        conn.enable_load_extension(True)
        conn.load_extension(_core.__file__, _ENTRY_POINT)
    finally:
        conn.close()
    fns = ffi.new("void *[]", lib.LSVFS_FN_COUNT)
    if not lib.lsvfs_extension_fns(fns):
        raise LsvfsError("apsw did not call the lsvfs extension entry point")
    return fns


def _stdlib_functions() -> Any:
    """The functions of the SQLite that the running `_sqlite3` module uses.

    dlsym on the module's own handle searches the module, then the libraries
    it links, in load order: exactly what its calls resolve to. The library
    version found must be the one `sqlite3` reports, or we found another.
    """
    import _sqlite3
    import sqlite3

    path = _sqlite3.__file__
    try:
        dll = ctypes.CDLL(path)
        addrs = [ctypes.cast(getattr(dll, n), ctypes.c_void_p).value for n in _SQLITE_FUNCTIONS]
        version = dll.sqlite3_libversion
    except (OSError, AttributeError) as exc:
        raise LsvfsError(f"the standard library's sqlite3 ({path}) does not expose SQLite's C functions "
                         f"(SQLite linked in statically?): {exc}; use lsvfs.connect(), which uses apsw") from None
    version.restype = ctypes.c_char_p
    found = version().decode()
    if found != sqlite3.sqlite_version:
        raise LsvfsError(f"the SQLite found through {path} is {found}, but sqlite3 reports "
                         f"{sqlite3.sqlite_version}; not registering in the wrong library")
    fns = ffi.new("void *[]", lib.LSVFS_FN_COUNT)
    for i, a in enumerate(addrs):
        fns[i] = ffi.cast("void *", a)
    return fns


def _register_in(reg: Registration, which: str, fns: Any) -> None:
    err = ffi.new("char[]", 256)
    v = lib.lsvfs_vfs_register(reg.name.encode(), fns, reg.handle, err, 256)
    if v == ffi.NULL:
        raise LsvfsError(f"registering VFS {reg.name!r} in {which}'s SQLite: {ffi.string(err).decode()}")
    reg.vfs[which] = v


def register(name: str = "litestream") -> Registration:
    """Register the VFS as `name` in apsw's SQLite and the standard library's
    (once per process; later calls return the same registration)."""
    with _registrations_lock:
        reg = _registrations.get(name)
        if reg is not None:
            return reg
        reg = Registration(name)
        reg.handle = ffi.new_handle(reg)
        _register_in(reg, "apsw", _apsw_functions())
        try:
            _register_in(reg, "sqlite3", _stdlib_functions())
        except LsvfsError as exc:
            reg.stdlib_error = str(exc)
            log.info("VFS %r not available to the standard library's sqlite3: %s", name, exc)
        _registrations[name] = reg
        return reg


atexit.register(lib.lsvfs_python_gone)


# ---- URIs and connect() -------------------------------------------------------------

def uri(url: str, *, name: str = "replica.db", vfs: str = "litestream", **options: Any) -> str:
    """`file:` URI of a read-only replica connection, for `sqlite3.connect(..., uri=True)`.

    Registers the VFS; bad options or URL fail here, and so does a standard
    library whose SQLite cannot take a VFS (with the reason).
    """
    reg = register(vfs)
    if reg.stdlib_error is not None:
        raise LsvfsError(reg.stdlib_error)
    return _uri(url, name, vfs, options)


def _uri(url: str, name: str, vfs: str, options: dict[str, Any]) -> str:
    parse_url(url)
    given = {k: v for k, v in options.items() if v is not None}
    resolve(given)  # a ValueError naming the option
    params = {"vfs": vfs, "mode": "ro", "replica": url, **{k: str(v) for k, v in given.items()}}
    return f"file:{quote(name)}?{urlencode(params)}"


def connect(url: str | None = None, *, name: str = "replica.db", vfs: str = "litestream",
            storage: StorageClient | None = None, **options: Any) -> apsw.Connection:
    """A read-only apsw connection on the replica at `url` (or LITESTREAM_REPLICA_URL).

    Options (poll_interval, cache_size, open_timeout, verify, read_retries,
    readahead) may be keywords, URI parameters, or LSVFS_* environment
    variables, in that order of precedence. `storage` substitutes the client
    used to reach the replica (fault injection, custom backends).
    """
    register(vfs)
    url = url or replica_url()
    if not url:
        raise ReplicaError("no replica URL given and LITESTREAM_REPLICA_URL is not set")
    given = {k: v for k, v in options.items() if v is not None}
    rep = registry.acquire(url, resolve(given), storage)  # typed lsvfs errors surface here
    try:
        # The VFS's open finds the Replica acquired above, so it shares it.
        return apsw.Connection(_uri(url, name, vfs, given), flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI,
                               vfs=vfs)
    finally:
        registry.release(rep)
