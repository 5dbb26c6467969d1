"""`verify=files`: LTX files read whole, proven by their CRC-64, and kept in a
private local directory while a snapshot uses them, so pages are served only
from bytes whose checksum held."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future

from . import ltx
from .futures import claim
from .storage.base import FileInfo


class VerifiedCopies:
    """Slot -> local path of that file's checked copy, fetched once per slot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: dict[int, Future[str]] = {}
        self._dir: str | None = None

    def keep(self, slot: int, data: bytes) -> str:
        """Store `data` (already checked) as the copy of `slot`."""
        with self._lock:
            if self._dir is None:
                self._dir = tempfile.mkdtemp(prefix="lsvfs-verified-")
            path = os.path.join(self._dir, f"{slot}.ltx")
        tmp = f"{path}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        with self._lock:
            fut = self._paths.setdefault(slot, Future())
        if not fut.done():
            fut.set_result(path)
        return path

    def path(self, slot: int, fetch: Callable[[], bytes]) -> str:
        """The copy of `slot`; the first caller runs `fetch` (which must return
        bytes already proven by check()), the others wait for it."""
        with self._lock:
            fut, owner = claim(self._paths, slot)
        if owner:
            try:
                self.keep(slot, fetch())
            except BaseException as exc:  # noqa: BLE001 - handed to every waiter, not swallowed
                with self._lock:
                    self._paths.pop(slot, None)
                fut.set_exception(exc)
        return fut.result()

    def forget(self, slots: list[int]) -> None:
        """Freed slots' copies go with them."""
        with self._lock:
            futs = [self._paths.pop(slot, None) for slot in slots]
        for fut in futs:
            if fut is not None and fut.done() and fut.exception() is None:
                with contextlib.suppress(OSError):
                    os.unlink(fut.result())

    def close(self) -> None:
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)


def check(data: bytes, f: FileInfo) -> bytes:
    """`data`, once its CRC-64 (and every frame) has been proven."""
    ltx.decode(data, f.name, want_pages=False)
    return data
