"""Storage wrappers for tests: they wrap a real client, never replace it."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from lsvfs.storage.base import FileInfo, StorageClient


class WrappedStorage:
    """Forwards everything to the real client; subclasses add faults."""

    def __init__(self, inner: StorageClient) -> None:
        self.inner = inner
        self.url = inner.url
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(self, what: str) -> None:
        with self._lock:
            self.calls[what] += 1

    def list_files(self, level: int, min_txid: int = 0) -> list[FileInfo]:
        self._count("list")
        return self.inner.list_files(level, min_txid)

    def read(self, info: FileInfo, offset: int, length: int) -> bytes:
        self._count("read")
        return self.inner.read(info, offset, length)

    def read_all(self, info: FileInfo) -> bytes:
        self._count("read_all")
        return self.inner.read_all(info)

    def close(self) -> None:
        self._count("close")
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        if name == "list_every_level":
            # Listings go through list_files, which subclasses count and fault.
            raise AttributeError(name)
        return getattr(self.inner, name)


class GatedStorage(WrappedStorage):
    """Records every request, and shows whether reads go out together.

    Each read waits at a gate until `width` reads are in flight at once (the
    gate then stays open) or `patience` seconds have passed since the first
    read: reads sent together pass at once, and `peak` says how many were in
    flight together; reads sent one after another each wait out what is left
    of the patience, and `peak` stays low. No timing is asserted on.
    """

    def __init__(self, inner: StorageClient, width: int, *, patience: float = 5.0) -> None:
        super().__init__(inner)
        self.width = width
        self.patience = patience
        self.requests: list[tuple[str, FileInfo | None, int, int | None]] = []  # (kind, file, offset, length)
        self.in_flight = 0
        self.peak = 0
        self._open = threading.Event()
        self._deadline: float | None = None

    def _gate(self, kind: str, info: FileInfo | None, offset: int, length: int | None) -> None:
        with self._lock:
            self.requests.append((kind, info, offset, length))
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            if self.in_flight >= self.width:
                self._open.set()
            if self._deadline is None:
                self._deadline = time.monotonic() + self.patience
            left = self._deadline - time.monotonic()
        self._open.wait(max(0.0, left))

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def list_files(self, level: int, min_txid: int = 0) -> list[FileInfo]:
        with self._lock:
            self.requests.append(("list", None, level, None))
        return super().list_files(level, min_txid)

    def read(self, info: FileInfo, offset: int, length: int) -> bytes:
        self._gate("read", info, offset, length)
        try:
            return super().read(info, offset, length)
        finally:
            self._done()

    def read_all(self, info: FileInfo) -> bytes:
        self._gate("read_all", info, 0, None)
        try:
            return super().read_all(info)
        finally:
            self._done()

    def kinds(self) -> Counter[str]:
        """Requests made so far, by kind."""
        with self._lock:
            return Counter(kind for kind, *_ in self.requests)
