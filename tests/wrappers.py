"""Storage wrappers for tests: they wrap a real client, never replace it."""

from __future__ import annotations

import threading
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
        return getattr(self.inner, name)
