"""Pooled HTTP sessions for the HTTP backends (GCS, Azure, WebDAV), whose
in-flight requests each storage can cut.

The replica reads from a thread pool; requests' default pool keeps 10
connections per host and drops the rest after each request, so a pool as
wide as the replica's parallelism is what lets its concurrent ranged reads
reuse warm connections.

One session serves every storage on an endpoint (lsvfs/storage/shared.py), so
closing a storage must end its own requests and no one else's: each storage
runs its calls inside `InFlight.call()`, the session's pools note which
connection each such call holds (from taking it out of the pool until it goes
back), and `InFlight.cut()` shuts those sockets down. A thread blocked on one
wakes at once with a StorageError (a connection error, if the cut came while
it read a body); any request the SDK then retries, or the storage starts
later, fails with StorageError before it is sent.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ..errors import StorageError
from .base import PARALLEL_REQUESTS

log = logging.getLogger(__name__)

POOL_SIZE = PARALLEL_REQUESTS

_CALL: ContextVar[_Call | None] = ContextVar("lsvfs_http_call", default=None)
"""The storage call the running thread is making, if any."""


class _Call:
    """One storage call in one thread: the connections it holds now."""

    __slots__ = ("conns", "owner")

    def __init__(self, owner: InFlight) -> None:
        self.owner = owner
        self.conns: set[Any] = set()


class InFlight:
    """The HTTP calls one storage has in flight, and the cut that ends them."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._lock = threading.Lock()
        self._calls: set[_Call] = set()
        self.closed = False

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """Run the block as one of this storage's calls: cut() ends its requests."""
        c = _Call(self)
        with self._lock:
            if self.closed:
                raise self.closed_error()
            self._calls.add(c)
        token = _CALL.set(c)
        try:
            yield
        finally:
            _CALL.reset(token)
            with self._lock:
                self._calls.discard(c)

    def closed_error(self) -> StorageError:
        return StorageError(f"{self.what}: storage closed")

    def cut(self) -> None:
        """End every request in flight now and refuse new ones (idempotent)."""
        with self._lock:
            self.closed = True
            conns = [conn for c in self._calls for conn in c.conns]
            for conn in conns:
                _shutdown(conn)
        if conns:
            log.debug("%s: closed with %d request(s) in flight; cut", self.what, len(conns))

    def _take(self, c: _Call, conn: Any) -> bool:
        """Record `conn` as held by call `c`; False if the storage is closed."""
        with self._lock:
            if self.closed:
                return False
            c.conns.add(conn)
            conn.lsvfs_call = c
            return True

    def _give(self, c: _Call, conn: Any) -> None:
        with self._lock:
            c.conns.discard(conn)
            conn.lsvfs_call = None

    def _connected(self, conn: Any) -> None:
        """A held connection has just connected: cut it if the cut came first."""
        with self._lock:
            if self.closed:
                _shutdown(conn)


def _shutdown(conn: Any) -> None:
    sock = getattr(conn, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class _Connection:
    """Checks, once its socket is up, whether its call was cut meanwhile."""

    lsvfs_call: _Call | None = None

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        c = self.lsvfs_call
        if c is not None:
            c.owner._connected(self)


class _HTTPConnection(_Connection, HTTPConnection):
    pass


class _HTTPSConnection(_Connection, HTTPSConnection):
    pass


class _Pool:
    """Notes which call holds each connection taken from the pool."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        c = _CALL.get()
        if c is not None and c.owner.closed:
            raise c.owner.closed_error()  # e.g. the SDK retrying the request the cut ended
        conn = super()._get_conn(timeout)  # type: ignore[misc]
        if c is not None and not c.owner._take(c, conn):
            super()._put_conn(conn)  # type: ignore[misc]
            raise c.owner.closed_error()
        return conn

    def urlopen(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().urlopen(*args, **kwargs)  # type: ignore[misc]
        except Exception:
            c = _CALL.get()
            if c is not None and c.owner.closed:  # cut: an error no SDK retries (it would pause first)
                raise c.owner.closed_error() from None
            raise

    def _put_conn(self, conn: Any) -> None:
        c = getattr(conn, "lsvfs_call", None)
        if c is not None:
            c.owner._give(c, conn)
        super()._put_conn(conn)  # type: ignore[misc]


class _HTTPPool(_Pool, HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(_Pool, HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _Adapter(HTTPAdapter):
    """requests' adapter over the pools above (direct and through a proxy)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: Any, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)
        manager.pool_classes_by_scheme = _POOLS
        return manager


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


def pooled_session(session: Any = None, pool_size: int = POOL_SIZE) -> Any:
    """`session` (or a new requests.Session) with wide http/https pools whose
    requests InFlight can cut, and no urllib3-level retries (each backend
    retries in its own SDK or above)."""
    s = session if session is not None else requests.Session()
    adapter = _Adapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s
