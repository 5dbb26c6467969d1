"""The registry of replicas: one Replica per replica per process.

The one piece of global state: every connection to a replica, however its
URL is spelled, shares one Replica (one poller, one page table, one cache);
and every Replica on one storage endpoint shares its storage client (one
S3, GCS or Azure client per endpoint and credentials, not per replica).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from .errors import SharedDirError
from .futures import claim
from .options import Options, resolve
from .replica import Replica
from .storage import ReplicaURL, SharedClients, open_storage, parse_url
from .storage.base import StorageClient

log = logging.getLogger(__name__)

_registry: dict[ReplicaURL, Replica] = {}
_opening: dict[ReplicaURL, Future[Replica]] = {}
_registry_lock = threading.Lock()
_clients = SharedClients()
"""Storage clients of the replicas opened here, by endpoint and credentials; a
storage passed in by the caller is its own and never shared."""


def acquire(url: str, options: Options, storage: StorageClient | None = None) -> Replica:
    """The shared Replica for `url`, opened on first use; pair with release().

    Opening (which may wait `open_timeout` for an empty replica) happens
    outside the registry lock, so other URLs open and close meanwhile;
    concurrent openers of one URL wait for the same attempt.
    """
    key = parse_url(url)  # one Replica per replica, however its URL is spelled
    while True:
        with _registry_lock:
            rep = _registry.get(key)
            if rep is not None:
                if options != rep.options:
                    log.debug("%s already open with %s; ignoring %s", url, rep.options, options)
                rep.add_ref()
                return rep
            fut, owner = claim(_opening, key)
        if not owner:
            exc = fut.exception()  # wait for the opener; share its failure
            if exc is not None:
                raise exc
            continue  # take a reference under the lock
        try:
            rep = _new_replica(url, options, storage)
            try:
                rep.open()
                rep.start()  # may fail after starting the poller (a hydration file in use)
            except BaseException:
                rep.close()
                raise
        except BaseException as exc:
            with _registry_lock:
                del _opening[key]
            fut.set_exception(exc)
            raise
        with _registry_lock:
            del _opening[key]
            _registry[key] = rep
            rep.add_ref()
        fut.set_result(rep)
        return rep


def _new_replica(url: str, options: Options, storage: StorageClient | None) -> Replica:
    """A Replica on `storage`, or on a storage for `url` whose client is shared;
    with `shared_dir`, on the host's mirror of it (that storage is only the leader's)."""
    if options.shared_dir:
        from .shared import SharedStorage

        if options.hydration_path:
            raise SharedDirError(f"hydration_path {options.hydration_path} and shared_dir {options.shared_dir}: with "
                                 "shared_dir the hydration file is the directory's, shared by every process "
                                 "(use hydration=true)")

        given = storage
        remote: Callable[[], StorageClient] = (lambda: given) if given is not None else (
            lambda: open_storage(url, _clients))
        own: StorageClient = SharedStorage(url, options.shared_dir, poll_interval=options.poll_interval,
                                           open_timeout=options.open_timeout, open_remote=remote)
        storage = None  # ours now: closed below on failure, by the Replica after
    else:
        own = open_storage(url, _clients) if storage is None else storage
    try:
        return Replica(url, options, own)
    except BaseException:
        if storage is None:
            own.close()
        raise


def release(rep: Replica) -> None:
    """Drop one reference; the last one stops the poller and frees everything."""
    with _registry_lock:
        if rep.drop_ref() > 0:
            return
        key = parse_url(rep.url)
        if _registry.get(key) is rep:
            del _registry[key]
    rep.close()


def open_replicas() -> dict[str, Replica]:
    """A copy of the registry, for introspection and tests."""
    with _registry_lock:
        return {rep.url: rep for rep in _registry.values()}


def storage_clients() -> SharedClients:
    """The shared storage clients, for introspection and tests."""
    return _clients


def stats(url: str, **options: Any) -> dict[str, Any]:
    """What the replica at `url` is doing (see Replica.stats): the numbers of
    the Replica this process has open, or of one opened for the asking."""
    rep = acquire(url, resolve({k: v for k, v in options.items() if v is not None}))
    try:
        return rep.stats()
    finally:
        release(rep)
