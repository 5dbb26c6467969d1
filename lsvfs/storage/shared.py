"""Storage clients shared by everything that talks to one endpoint.

A GCS or Azure client is expensive to make (~0.1 s), and every client,
lsvfs's own S3 client included, holds a pool of warm connections, so two replicas in one bucket,
or a replica opened while another on its endpoint is open, should use one.
`SharedClients` hands out leases on clients by key; the key names everything
that makes two clients differ (scheme, endpoint, region, credentials,
options) and never the path inside the bucket. The last lease's close closes
the client. This module holds no state of its own: the process-wide instance
lives next to the replica registry (lsvfs/registry.py); a backend given no
instance makes a private one, so its client is its own.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

from ..futures import claim

log = logging.getLogger(__name__)

C = TypeVar("C")


class Lease(Generic[C]):
    """One holder's use of a client; `close()` lets go of it (a second close does nothing)."""

    def __init__(self, client: C, release: Callable[[], None]) -> None:
        self.client = client
        self._release: Callable[[], None] | None = release
        self._lock = threading.Lock()

    @classmethod
    def own(cls, client: C, close: Callable[[C], None]) -> Lease[C]:
        """A lease on a client nobody else holds (e.g. one the caller made): close() closes it."""
        return cls(client, lambda: _close_quietly(close, client))

    def close(self) -> None:
        with self._lock:
            release, self._release = self._release, None
        if release is not None:
            release()


class _Entry:
    __slots__ = ("client", "close", "refs")

    def __init__(self, client: Any, close: Callable[[Any], None]) -> None:
        self.client = client
        self.close = close
        self.refs = 0


class SharedClients:
    """Clients by key, reference counted by their leases; thread-safe.

    A client is made outside the lock (it can take a while), once per key:
    concurrent first users of a key wait for the one making it and share
    its failure, as the replica registry does.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[Hashable, _Entry] = {}
        self._making: dict[Hashable, Future[None]] = {}

    def lease(self, key: Hashable, make: Callable[[], C], close: Callable[[C], None]) -> Lease[C]:
        """A lease on the client for `key`, made by `make()` if nobody holds one;
        `close(client)` runs when the last lease on it is closed."""
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    entry.refs += 1
                    return self._lease(key, entry)
                fut, owner = claim(self._making, key)
            if not owner:
                exc = fut.exception()  # wait for the maker; share its failure
                if exc is not None:
                    raise exc
                continue
            try:
                client = make()
            except BaseException as exc:
                with self._lock:
                    del self._making[key]
                fut.set_exception(exc)
                raise
            with self._lock:
                del self._making[key]
                entry = self._entries[key] = _Entry(client, close)
                entry.refs = 1
            fut.set_result(None)
            return self._lease(key, entry)

    def _lease(self, key: Hashable, entry: _Entry) -> Lease[Any]:
        return Lease(entry.client, lambda: self._release(key, entry))

    def _release(self, key: Hashable, entry: _Entry) -> None:
        with self._lock:
            entry.refs -= 1
            if entry.refs > 0:
                return
            if self._entries.get(key) is entry:
                del self._entries[key]
        _close_quietly(entry.close, entry.client)

    def holders(self, key: Hashable) -> int:
        """Open leases on the client for `key` (0: none is open)."""
        with self._lock:
            entry = self._entries.get(key)
            return entry.refs if entry is not None else 0

    def __len__(self) -> int:
        """Clients open now."""
        with self._lock:
            return len(self._entries)


def lease(clients: SharedClients | None, key: Hashable, make: Callable[[], C],
          close: Callable[[C], None]) -> Lease[C]:
    """A lease on the client for `key` from `clients`, or, without them, on a
    client of the caller's own."""
    if clients is None:
        return Lease.own(make(), close)
    return clients.lease(key, make, close)


def _close_quietly(close: Callable[[C], None], client: C) -> None:
    try:
        close(client)
    except Exception:  # noqa: BLE001 - best effort: a client failing to close must not fail its holder
        log.debug("closing storage client %r failed", client, exc_info=True)


def fingerprint(*secrets: str | None, env: tuple[str, ...] = ()) -> str:
    """A digest that tells credentials apart without keeping them in a key:
    the given secrets, and every environment variable whose name starts with
    one of `env` (what an SDK's default credential chain and config read)."""
    h = hashlib.sha256()
    for s in secrets:
        h.update(b"\1" + s.encode() if s is not None else b"\0")
        h.update(b"\x1f")
    for name in sorted(os.environ):
        if name.startswith(env):
            h.update(f"{name}={os.environ[name]}\x1f".encode())
    return h.hexdigest()
