"""Decoded pages keyed by frame location, bounded by bytes.

LTX files never change once written, so (file slot, frame offset) names the
same page bytes forever: nothing here is ever invalidated by a poll. Misses
are single-flight, so a storm of readers wanting one page makes one request.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future

Key = tuple[int, int]  # (file slot, frame offset)


class FrameCache:
    """LRU of decoded pages, thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._pages: OrderedDict[Key, bytes] = OrderedDict()
        self._inflight: dict[Key, Future[bytes]] = {}
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def _hit(self, key: Key) -> bytes | None:
        """Lookup with the lock held: a hit becomes most recently used."""
        page = self._pages.get(key)
        if page is not None:
            self._pages.move_to_end(key)
            self.hits += 1
        return page

    def get(self, key: Key) -> bytes | None:
        with self._lock:
            return self._hit(key)

    def put(self, key: Key, page: bytes) -> None:
        if len(page) > self.max_bytes:
            return
        with self._lock:
            old = self._pages.pop(key, None)
            if old is not None:
                self.bytes -= len(old)
            self._pages[key] = page
            self.bytes += len(page)
            while self.bytes > self.max_bytes:
                _, evicted = self._pages.popitem(last=False)
                self.bytes -= len(evicted)

    def get_or_load(self, key: Key, load: Callable[[], dict[Key, bytes]]) -> bytes:
        """The page at `key`; on a miss one caller runs `load`, the rest wait.

        `load` may return neighbouring pages too (read-ahead); all are cached.
        """
        with self._lock:
            page = self._hit(key)
            if page is not None:
                return page
            fut = self._inflight.get(key)
            owner = fut is None
            if owner:
                fut = self._inflight[key] = Future()
                self.misses += 1
        assert fut is not None
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

    def __contains__(self, key: Key) -> bool:
        with self._lock:
            return key in self._pages

    def __len__(self) -> int:
        return len(self._pages)
