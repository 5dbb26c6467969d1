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

    def get_or_load(self, key: Key, size: int, load: Callable[[], dict[Key, bytes]]) -> bytes:
        """The page at `key`; on a miss one caller runs `load`, the rest wait.

        `load` may return neighbouring pages too (read-ahead); all are cached.
        """
        with self._lock:
            if key not in self._inflight:
                page = self.get(key, size)
                if page is not None:
                    return page
            fut, owner = claim(self._inflight, key)
            if owner:
                lib.lsvfs_cache_count_miss(self._c, key[0], key[1])
        if not owner:
            return fut.result()
        try:
            pages = load()
            for k, p in pages.items():
                self.put(k, p)
            fut.set_result(pages[key])
        except BaseException as exc:
            fut.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._inflight.pop(key, None)
        return fut.result()

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
