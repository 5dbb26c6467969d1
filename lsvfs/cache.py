"""Decoded pages keyed by frame location: the C cache, seen from Python.

LTX files never change once written, so (file slot, frame offset) names the
same page bytes forever: nothing here is ever invalidated by a poll. The
pages live in C (csrc/cache.c), where the VFS's read path finds them without
Python; Python adds single-flight misses, so a storm of readers wanting one
page makes one request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from . import core
from ._core import ffi, lib
from .futures import claim

Key = tuple[int, int]  # (file slot, frame offset)


class FrameCache:
    """The page cache of one C replica, thread-safe; `owner` keeps it alive."""

    def __init__(self, owner: Any, max_bytes: int) -> None:
        self._owner = owner
        self._c = lib.lsvfs_replica_cache(owner)
        self.max_bytes = max_bytes
        self._inflight: dict[Key, Future[bytes]] = {}
        self._lock = threading.Lock()

    def get(self, key: Key, size: int) -> bytes | None:
        """The page at `key` if cached with `size` bytes (not counted in the stats)."""
        out = ffi.new("uint8_t[]", size)
        if lib.lsvfs_cache_get(self._c, key[0], key[1], out, size, 0):
            return bytes(ffi.buffer(out))
        return None

    def put(self, key: Key, page: bytes) -> None:
        if lib.lsvfs_cache_put(self._c, key[0], key[1], page, len(page)):
            raise MemoryError("page cache: out of memory")

    def get_or_load(self, key: Key, size: int, load: Callable[[], bytes]) -> bytes:
        """The page at `key`; on a miss one caller runs `load` (which returns the
        page and caches it, with any read-ahead), the others wait for it.

        The lock only guards the table of loads in flight: the cache itself is
        looked up outside it, so hits never queue behind a miss.
        """
        page = self.get(key, size)
        if page is not None:
            return page
        with self._lock:
            fut, owner = claim(self._inflight, key)
        if not owner:
            return fut.result()
        try:
            page = self.get(key, size)  # loaded by the previous owner meanwhile?
            if page is None:
                lib.lsvfs_cache_count_miss(self._c, key[0], key[1])
                page = load()
            fut.set_result(page)
        except BaseException as exc:  # noqa: BLE001 - handed to every waiter, then raised
            fut.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._inflight.pop(key, None)
        return page

    def fill(self, slot: int, buf: bytes, buf_offset: int, entries: core.IndexEntries, page_size: int,
             file: str, *, asked: bool = False) -> bytes:
        """Decode a run read from storage into the cache (core.fill_cache); its first page,
        which a reader asked for now if `asked` (else it is read ahead)."""
        return core.fill_cache(self._c, slot, buf, buf_offset, entries, page_size, file, asked=asked)

    def clear(self) -> None:
        lib.lsvfs_cache_clear(self._c)

    def stats(self) -> Any:
        out = ffi.new("lsvfs_cache_stats *")
        lib.lsvfs_cache_get_stats(self._c, out)
        return out

    @property
    def hits(self) -> int:
        return int(self.stats().hits)

    @property
    def misses(self) -> int:
        return int(self.stats().misses)

    @property
    def bytes(self) -> int:
        return int(self.stats().bytes)

    def __contains__(self, key: Key) -> bool:
        return bool(lib.lsvfs_cache_contains(self._c, key[0], key[1]))

    def __len__(self) -> int:
        return int(self.stats().entries)
