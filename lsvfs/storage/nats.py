"""NATS JetStream object-store replicas: object `ltx/<level>/<min>-<max>.ltx`
in the bucket named by `nats://host[:port]/bucket`.

Uses nats-py (extra `lsvfs[nats]`), which is asyncio-only: each storage runs
one event loop on its own daemon thread and every call from the replica's
threads is submitted to it and waited for (bounded).

The object store has no ranged read, so `read` fetches the whole object and
keeps it in a small LRU of whole objects (LTX files never change, so a cached
object is valid forever); concurrent reads of one object share one fetch.
Listing reads the bucket's whole object index once and answers every level
from it for a moment, so `list_all` over ten levels costs one round.

Credentials: `nats://user:password@host`, `?token=`, or `?creds=FILE` (the
names of Litestream's `username`/`password`, `token` and `creds` settings).
A server that refuses them fails the open at once, naming which credentials
were refused: retrying cannot fix a wrong password.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from datetime import datetime
from typing import TYPE_CHECKING, Any

import nats
from nats import errors as nerr
from nats.js import errors as jserr

from ..errors import MissingFileError, StorageError
from ..futures import claim
from .base import FileInfo, check_range, exact, format_filename, infos_from_names, level_dir
from .redact import scrub

if TYPE_CHECKING:
    from . import ReplicaURL

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
CALL_TIMEOUT = 30.0
CACHE_BYTES = 64 << 20
"""Whole objects kept for ranged reads."""
LISTING_TTL = 0.25
"""Seconds one bucket index answers listings for (collapses list_all's ten calls)."""


class NATSStorage:
    """Read-only client of a Litestream NATS object-store replica."""

    local = False

    def __init__(self, host: str, bucket: str, *, port: int = 4222, user: str | None = None,
                 password: str | None = None, token: str | None = None, creds: str | None = None,
                 cache_bytes: int = CACHE_BYTES) -> None:
        self.bucket = bucket
        self.server = f"nats://{host}:{port}"
        self.url = f"{self.server}/{bucket}"
        self._secrets = (password, token)
        self._offered = (f"creds file {creds}" if creds else "the token (?token=)" if token
                         else f"user {user!r} and its password" if user is not None else None)
        """What credentials were offered, for an authorization error (never the secret itself)."""
        self._opts: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT, "max_reconnect_attempts": -1,
                                      "reconnect_time_wait": 0.5, "allow_reconnect": True,
                                      "error_cb": self._on_error, "name": "lsvfs"}
        if user is not None:
            self._opts.update(user=user, password=password or "")
        if token:
            self._opts["token"] = token
        if creds:
            self._opts["user_credentials"] = creds
        self._cache_cap = cache_bytes
        self._cache: OrderedDict[tuple[int, int, int], bytes] = OrderedDict()
        self._cache_used = 0
        self._inflight: dict[tuple[int, int, int], Future[bytes]] = {}
        self._lock = threading.Lock()
        self._listing: tuple[float, list[Any]] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"lsvfs-nats {self.url}", daemon=True)
        self._thread.start()
        self._nc: Any = None
        self._obs: Any = None
        self._last_error: BaseException | None = None
        self._refused: asyncio.Future[None] | None = None
        """Set on the loop while the first connect runs; done when the server refuses the credentials."""
        try:
            self._run(self._open(), "connect")
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_url(cls, u: ReplicaURL) -> NATSStorage:
        assert u.host is not None and u.bucket is not None
        return cls(u.host, u.bucket, port=u.port or 4222, user=u.user, password=u.password,
                   token=u.param("token"), creds=u.param("creds"))

    def __repr__(self) -> str:
        return f"NATSStorage({self.url!r})"

    async def _on_error(self, e: Exception) -> None:
        if self._last_error is None or not _refusal(self._last_error):
            self._last_error = e  # an authorization error explains the resets that follow it
        if _refusal(e) and self._refused is not None and not self._refused.done():
            self._refused.set_result(None)
        log.debug("nats %s: %s", self.server, scrub(str(e) or type(e).__name__, self._secrets))

    async def _open(self) -> None:
        """Connect (reconnecting forever afterwards). The first connect gives up
        as soon as the server refuses the credentials, else after
        CONNECT_TIMEOUT, with the last error the client saw."""
        self._refused = asyncio.get_running_loop().create_future()
        connecting: asyncio.Future[Any] = asyncio.ensure_future(nats.connect(self.server, **self._opts))
        first: set[asyncio.Future[Any]] = {connecting, self._refused}
        try:
            await asyncio.wait(first, timeout=CONNECT_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._refused = None
        if not connecting.done():
            connecting.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await connecting
            raise (self._last_error or nerr.NoServersError()) from None
        self._nc = connecting.result()
        self._obs = await self._nc.jetstream().object_store(self.bucket)

    def _run(self, coro: Any, op: str, where: str | None = None) -> Any:
        where = where or self.url
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(CALL_TIMEOUT)
        except TimeoutError:
            fut.cancel()
            raise StorageError(f"{where}: {op} failed: no answer from {self.server} "
                               f"within {CALL_TIMEOUT:.0f}s") from None
        except Exception as e:  # noqa: BLE001 - translated, never swallowed
            raise self._error(e, op, where) from None

    def _error(self, e: BaseException, op: str, where: str) -> StorageError:
        if isinstance(e, StorageError):
            return e
        if isinstance(e, (jserr.BucketNotFoundError,)) or (
            isinstance(e, jserr.NotFoundError) and op == "connect"
        ):
            return StorageError(f"{where}: {op} failed: object-store bucket {self.bucket!r} does not exist")
        if isinstance(e, (jserr.ObjectNotFoundError, jserr.NotFoundError)):
            return MissingFileError(f"{where}: {op} failed: object not found")
        text = scrub(str(e) or type(e).__name__, self._secrets)
        if isinstance(e, (nerr.NoServersError, ConnectionRefusedError, OSError)):
            return StorageError(f"{where}: {op} failed: endpoint unreachable ({self.server}): {text}")
        if _refusal(e):
            why = (f"the server refused {self._offered}" if self._offered else "the server wants credentials and "
                   "none were given (nats://user:password@host/bucket, ?token= or ?creds=FILE)")
            return StorageError(f"{where}: {op} failed: authorization violation: {why}")
        if isinstance(e, (nerr.TimeoutError, asyncio.TimeoutError)):
            return StorageError(f"{where}: {op} failed: timed out talking to {self.server}")
        return StorageError(f"{where}: {op} failed: {type(e).__name__}: {text}")

    # -- listing ----------------------------------------------------------

    def _index(self) -> list[Any]:
        with self._lock:
            if self._listing is not None and time.monotonic() - self._listing[0] < LISTING_TTL:
                return self._listing[1]

        async def ls() -> list[Any]:
            try:
                return list(await self._obs.list(ignore_deletes=True))
            except jserr.NotFoundError:
                return []  # an empty bucket has no index at all

        infos: list[FileInfo] = self._run(ls(), "list")
        with self._lock:
            self._listing = (time.monotonic(), infos)
        return infos

    def list_files(self, level: int, min_txid: int = 0) -> list[FileInfo]:
        prefix = level_dir("", level, "ltx")
        entries = [(i.name[len(prefix):], int(i.size or 0), _mtime(i.mtime))
                   for i in self._index() if i.name.startswith(prefix) and not i.deleted]
        return infos_from_names(level, entries, min_txid)

    # -- reading ----------------------------------------------------------

    def object_name(self, info: FileInfo) -> str:
        return level_dir("", info.level, "ltx") + format_filename(info.min_txid, info.max_txid)

    def read(self, info: FileInfo, offset: int, length: int) -> bytes:
        check_range(offset, length)
        if length == 0:
            return b""
        return exact(self._object(info)[offset:offset + length], info, self._where(info), offset, length)

    def read_all(self, info: FileInfo) -> bytes:
        return exact(self._object(info), info, self._where(info))

    def _where(self, info: FileInfo) -> str:
        return f"{self.url}/{self.object_name(info)}"

    def _object(self, info: FileInfo) -> bytes:
        key = (info.level, info.min_txid, info.max_txid)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
            fut, owner = claim(self._inflight, key)
        if not owner:
            return fut.result(CALL_TIMEOUT * 2)
        try:
            name = self.object_name(info)

            async def get() -> bytes:
                res = await self._obs.get(name)
                return bytes(res.data or b"")

            data: bytes = self._run(get(), "get", self._where(info))
            fut.set_result(data)
        except BaseException as e:
            fut.set_exception(e)
            raise
        finally:
            with self._lock:
                self._inflight.pop(key, None)
        self._remember(key, data)
        return data

    def _remember(self, key: tuple[int, int, int], data: bytes) -> None:
        if len(data) > self._cache_cap // 4:
            return
        with self._lock:
            if key in self._cache:
                return
            self._cache[key] = data
            self._cache_used += len(data)
            while self._cache_used > self._cache_cap:
                _, old = self._cache.popitem(last=False)
                self._cache_used -= len(old)

    def close(self) -> None:
        if self._nc is not None:
            nc, self._nc = self._nc, None
            try:
                asyncio.run_coroutine_threadsafe(nc.close(), self._loop).result(5)
            except Exception:  # noqa: BLE001 - best effort
                log.debug("closing NATS connection failed", exc_info=True)
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        with self._lock:
            self._cache.clear()
            self._cache_used = 0


def _refusal(e: BaseException) -> bool:
    """Whether `e` is the server refusing our credentials."""
    text = str(e).lower()
    return isinstance(e, nerr.AuthorizationError) or "authorization" in text or "authentication" in text


def _mtime(v: Any) -> datetime | None:
    """The object's mtime; None where the store has none (it reports year 1)."""
    if v is None:
        return None
    if not isinstance(v, datetime):
        try:
            v = datetime.fromisoformat(str(v).replace("Z", "+00:00"))
        except ValueError:
            return None
    return v if v.year >= 1971 else None
