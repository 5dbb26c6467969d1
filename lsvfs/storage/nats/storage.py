"""The NATS storage client: listing, and reads that pick how to fetch."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from datetime import datetime
from typing import TYPE_CHECKING, Any

from nats.js import errors as jserr

from ...futures import claim
from ..base import FileInfo, check_range, exact, format_filename, infos_from_names, level_dir
from .chunks import Chunks
from .connection import CALL_TIMEOUT, Connection
from .whole import read_whole

if TYPE_CHECKING:
    from .. import ReplicaURL

log = logging.getLogger(__name__)

CACHE_BYTES = 64 << 20
"""Chunks (and whole objects read whole) kept for ranged reads."""
LISTING_TTL = 0.25
"""Seconds one bucket index answers listings for (collapses list_all's ten calls)."""


class NATSStorage:
    """Read-only client of a Litestream NATS object-store replica."""

    local = False

    def __init__(self, host: str, bucket: str, *, port: int = 4222, user: str | None = None,
                 password: str | None = None, token: str | None = None, creds: str | None = None,
                 cache_bytes: int = CACHE_BYTES) -> None:
        self.bucket = bucket
        self._lock = threading.Lock()
        self._listing: tuple[float, list[Any]] | None = None
        self._objects: dict[str, Any] = {}
        """The latest listing's ObjectInfo by object name."""
        self._inflight: dict[tuple[int, int, int], Future[bytes]] = {}
        """Whole-object reads in flight, shared by concurrent readers."""
        self._conn = Connection(host, port, bucket, user=user, password=password, token=token, creds=creds)
        self.server, self.url = self._conn.server, self._conn.url
        self._chunks = Chunks(self._conn, cache_bytes)

    @classmethod
    def from_url(cls, u: ReplicaURL) -> NATSStorage:
        assert u.host is not None and u.bucket is not None
        return cls(u.host, u.bucket, port=u.port or 4222, user=u.user, password=u.password,
                   token=u.param("token"), creds=u.param("creds"))

    def __repr__(self) -> str:
        return f"NATSStorage({self.url!r})"

    @property
    def fetched(self) -> dict[str, int]:
        """What reads fetched from the server (see `Chunks.fetched`)."""
        return self._chunks.fetched

    # -- listing ----------------------------------------------------------

    def _index(self) -> list[Any]:
        with self._lock:
            if self._listing is not None and time.monotonic() - self._listing[0] < LISTING_TTL:
                return self._listing[1]

        async def ls() -> list[Any]:
            try:
                return list(await self._conn.obs.list(ignore_deletes=True))
            except jserr.NotFoundError:
                return []  # an empty bucket has no index at all

        infos: list[Any] = self._conn.run(ls(), "list")
        with self._lock:
            self._listing = (time.monotonic(), infos)
            self._objects = {i.name: i for i in infos}
        return infos

    def list_files(self, level: int, min_txid: int = 0) -> list[FileInfo]:
        """One level's files, from the bucket's whole index (read once for every
        level for a moment, so `list_all` over ten levels costs one round)."""
        prefix = level_dir("", level, "ltx")
        entries = [(i.name[len(prefix):], int(i.size or 0), _mtime(i.mtime))
                   for i in self._index() if i.name.startswith(prefix) and not i.deleted]
        return infos_from_names(level, entries, min_txid)

    # -- reading ----------------------------------------------------------

    def object_name(self, info: FileInfo) -> str:
        return level_dir("", info.level, "ltx") + format_filename(info.min_txid, info.max_txid)

    def _listed(self, name: str) -> Any:
        with self._lock:
            return self._objects.get(name)

    def read(self, info: FileInfo, offset: int, length: int) -> bytes:
        """By chunk layout where known, else by chunk map, else from the whole object."""
        check_range(offset, length)
        if length == 0:
            return b""
        end = min(offset + length, info.size)
        name, where = self.object_name(info), self._where(info)
        data = self._chunks.ranged(name, self._listed(name), info.size, offset, end, where) if offset < end else b""
        if data is None:
            key = (info.level, info.min_txid, info.max_txid)
            data = self._chunks.mapped(self._listed(name), key, info.size, offset, end, where)
        if data is None:
            data = self._object(info)[offset:offset + length]
        return exact(data, info, where, offset, length)

    def read_all(self, info: FileInfo) -> bytes:
        # All chunks at once by direct get where the layout allows (see bench/README.md).
        name, where = self.object_name(info), self._where(info)
        data = self._chunks.ranged(name, self._listed(name), info.size, 0, info.size, where) if info.size else None
        return exact(self._object(info) if data is None else data, info, where)

    def _where(self, info: FileInfo) -> str:
        return f"{self.url}/{self.object_name(info)}"

    def _object(self, info: FileInfo) -> bytes:
        key = (info.level, info.min_txid, info.max_txid)
        hit = self._chunks.kept(key)
        if hit is not None:
            return hit
        with self._lock:
            fut, owner = claim(self._inflight, key)
        if not owner:
            return fut.result(CALL_TIMEOUT * 2)
        try:
            name, where = self.object_name(info), self._where(info)
            data: bytes = self._conn.run(read_whole(self._conn, self._chunks, self._listed(name), name, info.size,
                                                    where), "get", where)
            fut.set_result(data)
        except BaseException as e:
            fut.set_exception(e)
            raise
        finally:
            with self._lock:
                self._inflight.pop(key, None)
        self._chunks.remember(key, data)
        return data

    def close(self) -> None:
        self._conn.close()
        self._chunks.clear()


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
