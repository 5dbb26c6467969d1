"""Fault injection for storage: wrappers around the *real* clients, never replacements.

Every wrapper subclasses `wrappers.WrappedStorage`, forwards to a real
`FileStorage` or `S3Storage`, and bends one thing: errors (timeout, 5xx),
partial or corrupt bytes, latency, late listings, truncated uploads, a
corrupt page index, a descriptor budget, an allocation failure. They stack
(`chaos()` builds a seeded mix), so one test runs unchanged over both backends.

Determinism: a fault is decided by a `random.Random` seeded from
(seed, operation, request, how many times this request was seen), never
from a shared sequence, so thread interleaving cannot change which requests
fail. Where a backend has its own error translation (S3Storage._error), the
injected failure goes through it, so the message a user sees is the real one.
"""

from __future__ import annotations

import errno
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from wrappers import WrappedStorage

from lsvfs import core
from lsvfs.errors import StorageError
from lsvfs.storage.base import FileInfo, StorageClient

FAULT_KINDS = ("timeout", "5xx", "partial", "corrupt")
Request = tuple[Any, ...]


def _rng(seed: int, *key: Any) -> random.Random:
    """A Random determined only by its key (str seeds are hashed with SHA-512, not hash())."""
    return random.Random("|".join(map(str, (seed, *key))))


def _is_s3(inner: StorageClient) -> bool:
    return hasattr(inner, "_error") and hasattr(inner, "key_of")


def _where(inner: StorageClient, info: FileInfo | None, op: str) -> str:
    if info is None:
        return f"{inner.url}: {op}"
    if _is_s3(inner):
        return f"s3://{inner.bucket}/{inner.key_of(info)}"  # type: ignore[attr-defined]
    return f"{info.name}: {op}"


def server_error(inner: StorageClient, info: FileInfo | None, op: str) -> StorageError:
    """What a 500 from the server looks like through this backend."""
    if _is_s3(inner):
        from botocore.exceptions import ClientError

        resp = {"Error": {"Code": "InternalError", "Message": "We encountered an internal error (injected)"},
                "ResponseMetadata": {"HTTPStatusCode": 500}}
        key = inner.key_of(info) if info is not None else inner.level_prefix(0)  # type: ignore[attr-defined]
        return inner._error(ClientError(resp, "GetObject"), op, key)  # type: ignore[attr-defined]
    return StorageError(f"{_where(inner, info, op)} failed: [Errno {errno.EIO}] Input/output error (injected)")


def timeout_error(inner: StorageClient, info: FileInfo | None, op: str) -> StorageError:
    """What a read timeout looks like through this backend."""
    if _is_s3(inner):
        from botocore.exceptions import ReadTimeoutError

        key = inner.key_of(info) if info is not None else inner.level_prefix(0)  # type: ignore[attr-defined]
        exc = ReadTimeoutError(endpoint_url=f"{inner.endpoint} (injected)")  # type: ignore[attr-defined]
        return inner._error(exc, op, key)  # type: ignore[attr-defined]
    return StorageError(f"{_where(inner, info, op)} failed: [Errno {errno.ETIMEDOUT}] timed out (injected)")


def flip_bit(data: bytes, rnd: random.Random, lo: int = 0, hi: int | None = None) -> bytes:
    """`data` with one bit flipped at a random position in [lo, hi)."""
    hi = len(data) if hi is None else min(hi, len(data))
    if hi <= lo:
        return data
    b = bytearray(data)
    b[rnd.randrange(lo, hi)] ^= 1 << rnd.randrange(8)
    return bytes(b)


class FaultyStorage(WrappedStorage):
    """Fails a fraction `rate` of requests with a fault drawn from `kinds`.

    - timeout: waits `timeout_s`, then the backend's timeout error;
    - 5xx: the backend's server error;
    - partial: the real bytes, cut short (breaks the "exactly length" contract);
    - corrupt: the real bytes with one bit flipped.

    `ops` picks what can fail ("read", "read_all", "list"); `select(info)`
    narrows it to some files. `enabled = False` stops every fault at once.
    """

    def __init__(self, inner: StorageClient, *, rate: float = 0.0, kinds: Sequence[str] = ("5xx",),
                 ops: Sequence[str] = ("read", "read_all"), seed: int = 0, timeout_s: float = 0.005,
                 select: Callable[[FileInfo], bool] | None = None) -> None:
        super().__init__(inner)
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}")
        self.rate = rate
        self.kinds = tuple(kinds)
        self.ops = tuple(ops)
        self.seed = seed
        self.timeout_s = timeout_s
        self.select = select
        self.enabled = True
        self.injected: Counter[str] = Counter()
        self._seen: Counter[Request] = Counter()

    def _decide(self, op: str, key: Request, info: FileInfo | None) -> tuple[str | None, random.Random]:
        with self._lock:
            n = self._seen[key]
            self._seen[key] += 1
        rnd = _rng(self.seed, op, *key, n)
        if (not self.enabled or op not in self.ops or (self.select is not None and info is not None
                                                       and not self.select(info))):
            return None, rnd
        if rnd.random() >= self.rate:
            return None, rnd
        kind = rnd.choice(self.kinds)
        if op == "list" and kind in ("partial", "corrupt"):
            kind = "5xx"
        with self._lock:
            self.injected[kind] += 1
        return kind, rnd

    def _raise(self, kind: str, info: FileInfo | None, op: str) -> None:
        if kind == "timeout":
            time.sleep(self.timeout_s)
            raise timeout_error(self.inner, info, op)
        raise server_error(self.inner, info, op)

    def list_files(self, level: int, min_txid: int = 0) -> list[FileInfo]:
        kind, _ = self._decide("list", (level, min_txid), None)
        if kind:
            self._count("list")
            self._raise(kind, None, "list")
        return super().list_files(level, min_txid)

    def read(self, info: FileInfo, offset: int, length: int) -> bytes:
        kind, rnd = self._decide("read", (info.name, offset, length), info)
        if kind in ("timeout", "5xx"):
            self._count("read")
            self._raise(kind, info, "get")
        data = super().read(info, offset, length)
        return self._bend(kind, data, rnd)

    def read_all(self, info: FileInfo) -> bytes:
        kind, rnd = self._decide("read_all", (info.name,), info)
        if kind in ("timeout", "5xx"):
            self._count("read_all")
            self._raise(kind, info, "get")
        data = super().read_all(info)
        return self._bend(kind, data, rnd)

    @staticmethod
    def _bend(kind: str | None, data: bytes, rnd: random.Random) -> bytes:
        if kind == "partial" and data:
            return data[:rnd.randrange(len(data))]
        if kind == "corrupt" and data:
            return flip_bit(data, rnd)
        return data


class LatencyStorage(WrappedStorage):
    """Adds `delay` (+ seeded uniform `jitter`) seconds to every call in `ops`."""

    def __init__(self, inner: StorageClient, delay: float = 0.01, *, jitter: float = 0.0, seed: int = 0,
                 ops: Sequence[str] = ("list", "read", "read_all")) -> None:
        super().__init__(inner)
        self.delay = delay
        self.jitter = jitter
        self.ops = tuple(ops)
        self._rnd = random.Random(seed)
        self.slept = 0.0

    def _sleep(self, op: str) -> None:
        if op not in self.ops:
            return
        with self._lock:
            d = self.delay + (self._rnd.uniform(0, self.jitter) if self.jitter else 0.0)
            self.slept += d
        time.sleep(d)

    def list_files(self, level: int, min_txid: int = 0) -> list[FileInfo]:
        self._sleep("list")
        return super().list_files(level, min_txid)

    def read(self, info: FileInfo, offset: int, length: int) -> bytes:
        self._sleep("read")
        return super().read(info, offset, length)

    def read_all(self, info: FileInfo) -> bytes:
        self._sleep("read_all")
        return super().read_all(info)


class EventuallyConsistentStorage(WrappedStorage):
    """A file shows up in listings only after it has been left out of `hide_listings` of them.

    Like S3 (or R2) right after an upload: reads of a file find it, listings
    do not yet. `select(info)` picks the files that are late (default: all
    files of `levels`); files listed while it is not `enabled` are old, never
    late. `hidden` counts how often a file was left out.
    """

    def __init__(self, inner: StorageClient, hide_listings: int = 2, *, levels: Sequence[int] = (0,),
                 select: Callable[[FileInfo], bool] | None = None) -> None:
        super().__init__(inner)
        self.hide_listings = hide_listings
        self.levels = tuple(levels)
        self.select = select
        self.enabled = True
        self.hidden: Counter[FileInfo] = Counter()

    def list_files(self, level: int, min_txid: int = 0) -> list[FileInfo]:
        files = super().list_files(level, min_txid)
        if level not in self.levels:
            return files
        if not self.enabled:  # files listed before are old by the time it is enabled, not just uploaded
            with self._lock:
                for f in files:
                    self.hidden[f] = max(self.hidden[f], self.hide_listings)
            return files
        out = []
        with self._lock:
            for f in files:
                if (self.select is None or self.select(f)) and self.hidden[f] < self.hide_listings:
                    self.hidden[f] += 1
                    continue
                out.append(f)
        return out


class TruncatedUploadStorage(WrappedStorage):
    """Selected files look half-uploaded: listed at a fraction of their size, and their bytes end there.

    Reads past the cut fail as the backend fails a short object (StorageError);
    whole reads return the cut bytes. After `heal_after` listings that showed
    a file cut (or `heal()`), it appears whole.
    """

    def __init__(self, inner: StorageClient, select: Callable[[FileInfo], bool], *, keep: float = 0.5,
                 heal_after: int | None = None) -> None:
        super().__init__(inner)
        self.select = select
        self.keep = keep
        self.heal_after = heal_after
        self.healed = False
        self.shown_cut: Counter[tuple[int, int, int]] = Counter()

    def heal(self) -> None:
        self.healed = True

    def _cut(self, size: int) -> int:
        return max(0, min(size - 1, int(size * self.keep)))

    def _active(self, f: FileInfo) -> bool:
        if self.healed or not self.select(f):
            return False
        return self.heal_after is None or self.shown_cut[(f.level, f.min_txid, f.max_txid)] < self.heal_after

    def list_files(self, level: int, min_txid: int = 0) -> list[FileInfo]:
        out = []
        for f in super().list_files(level, min_txid):
            if self._active(f):
                with self._lock:
                    self.shown_cut[(f.level, f.min_txid, f.max_txid)] += 1
                f = FileInfo(f.level, f.min_txid, f.max_txid, self._cut(f.size), f.modified)
            out.append(f)
        return out

    def _real_cut(self, info: FileInfo) -> int | None:
        key = (info.level, info.min_txid, info.max_txid)
        with self._lock:
            cut = key in self.shown_cut
        if not cut or self.healed or not self.select(info):
            return None
        return info.size  # the size it was listed with is where the upload stands

    def read(self, info: FileInfo, offset: int, length: int) -> bytes:
        cut = self._real_cut(info)
        if cut is not None and offset + length > cut:
            self._count("read")
            raise StorageError(f"{info.name}: short read: wanted {length} bytes at offset {offset}, "
                               f"object has {cut} (upload in progress, injected)")
        return super().read(info, offset, length)

    def read_all(self, info: FileInfo) -> bytes:
        cut = self._real_cut(info)
        if cut is not None:
            self._count("read_all")
            return self.inner.read(info, 0, cut) if cut else b""
        return super().read_all(info)


class CorruptIndexStorage(WrappedStorage):
    """Mangles the page-index bytes of selected files in every response that covers them.

    `mode`: "garbage" (0xFF runs: overlong varints), "zero" (the index ends at
    once), "length" (the u64 index length), or "flip" (one seeded bit). While
    `enabled`; `hits` counts responses that were mangled.
    """

    def __init__(self, inner: StorageClient, select: Callable[[FileInfo], bool] | None = None, *,
                 mode: str = "garbage", seed: int = 0) -> None:
        super().__init__(inner)
        self.select = select
        self.mode = mode
        self.seed = seed
        self.enabled = True
        self.hits = 0
        self._where: dict[FileInfo, tuple[int, int]] = {}

    def index_region(self, info: FileInfo) -> tuple[int, int]:
        """[start, end) of the varints + length of `info`, learned from the real file."""
        with self._lock:
            got = self._where.get(info)
        if got is None:
            tail_len = min(info.size, 64 << 10)
            tail = self.inner.read(info, info.size - tail_len, tail_len)
            off, ln = core.locate_index(tail, info.size)
            got = (off, off + ln + 8)  # varints, then the u64 length
            with self._lock:
                self._where[info] = got
        return got

    def _mangle(self, info: FileInfo, offset: int, data: bytes) -> bytes:
        if not self.enabled or (self.select is not None and not self.select(info)):
            return data
        start, end = self.index_region(info)
        lo, hi = max(start, offset), min(end, offset + len(data))
        if lo >= hi:
            return data
        b = bytearray(data)
        if self.mode == "garbage":
            for i in range(lo, min(hi, end - 8)):
                b[i - offset] = 0xFF
        elif self.mode == "zero":
            for i in range(lo, min(hi, end - 8)):
                b[i - offset] = 0
        elif self.mode == "length":
            for i in range(max(lo, end - 8), hi):
                b[i - offset] ^= 0x5A
        elif self.mode == "flip":
            rnd = _rng(self.seed, info.name)
            pos = rnd.randrange(start, end)
            if lo <= pos < hi:
                b[pos - offset] ^= 1 << rnd.randrange(8)
        else:
            raise ValueError(self.mode)
        with self._lock:
            self.hits += 1
        return bytes(b)

    def read(self, info: FileInfo, offset: int, length: int) -> bytes:
        return self._mangle(info, offset, super().read(info, offset, length))

    def read_all(self, info: FileInfo) -> bytes:
        return self._mangle(info, 0, super().read_all(info))


class DescriptorBudgetStorage(WrappedStorage):
    """At most `budget` requests in flight (each holds a descriptor or socket); more fail like EMFILE.

    `peak` is the most ever in flight, `in_flight` now; `refused` counts the
    requests turned away.
    """

    def __init__(self, inner: StorageClient, budget: int = 8) -> None:
        super().__init__(inner)
        self.budget = budget
        self.in_flight = 0
        self.peak = 0
        self.refused = 0

    def _enter(self, info: FileInfo | None, op: str) -> None:
        with self._lock:
            if self.in_flight >= self.budget:
                self.refused += 1
                raise StorageError(f"{_where(self.inner, info, op)} failed: [Errno {errno.EMFILE}] "
                                   f"Too many open files (budget {self.budget}, injected)")
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)

    def _exit(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def list_files(self, level: int, min_txid: int = 0) -> list[FileInfo]:
        self._enter(None, "list")
        try:
            return super().list_files(level, min_txid)
        finally:
            self._exit()

    def read(self, info: FileInfo, offset: int, length: int) -> bytes:
        self._enter(info, "get")
        try:
            return super().read(info, offset, length)
        finally:
            self._exit()

    def read_all(self, info: FileInfo) -> bytes:
        self._enter(info, "get")
        try:
            return super().read_all(info)
        finally:
            self._exit()


class AllocFailureStorage(WrappedStorage):
    """Raises MemoryError on the read that fetches a file's page index (the tail),
    as an allocation failing while the index is built. `remaining` failures are left."""

    def __init__(self, inner: StorageClient, failures: int = 1,
                 select: Callable[[FileInfo], bool] | None = None) -> None:
        super().__init__(inner)
        self.remaining = failures
        self.select = select
        self.raised = 0

    def _maybe_fail(self, info: FileInfo) -> None:
        if self.select is not None and not self.select(info):
            return
        with self._lock:
            if self.remaining <= 0:
                return
            self.remaining -= 1
            self.raised += 1
        raise MemoryError(f"{info.name}: simulated allocation failure while building the page index")

    def read(self, info: FileInfo, offset: int, length: int) -> bytes:
        if offset + length == info.size and offset > 0:  # the tail read that finds the index
            self._maybe_fail(info)
        return super().read(info, offset, length)

    def read_all(self, info: FileInfo) -> bytes:
        self._maybe_fail(info)
        return super().read_all(info)


class BlockingStorage(WrappedStorage):
    """`list_files` blocks (bounded by `max_block` s) while `gate` is clear, once armed."""

    def __init__(self, inner: StorageClient, max_block: float = 10.0) -> None:
        super().__init__(inner)
        self.armed = False
        self.gate = threading.Event()
        self.blocked = threading.Event()
        self.max_block = max_block
        self.calls_after_close = 0
        self.closed = False

    def list_files(self, level: int, min_txid: int = 0) -> list[FileInfo]:
        if self.closed:
            with self._lock:
                self.calls_after_close += 1
        if self.armed:
            self.blocked.set()
            self.gate.wait(self.max_block)
        return super().list_files(level, min_txid)

    def read(self, info: FileInfo, offset: int, length: int) -> bytes:
        if self.closed:
            with self._lock:
                self.calls_after_close += 1
        return super().read(info, offset, length)

    def close(self) -> None:
        self.closed = True
        super().close()


@dataclass
class Chaos:
    """The stack `chaos()` built, outermost first, with its parts by name."""

    storage: StorageClient
    faulty: FaultyStorage
    latency: LatencyStorage
    late: EventuallyConsistentStorage

    def stop(self) -> None:
        """End every fault (latency included): the replica must now recover by itself."""
        self.faulty.enabled = False
        self.late.enabled = False
        self.latency.delay = self.latency.jitter = 0.0

    def summary(self) -> dict[str, int]:
        return {**{f"fault_{k}": v for k, v in self.faulty.injected.items()},
                "late_listings": sum(self.late.hidden.values()),
                "latency_ms": int(self.latency.slept * 1000)}


def chaos(inner: StorageClient, seed: int, *, rate: float = 0.15,
          kinds: Sequence[str] = ("timeout", "5xx", "partial"), max_latency: float = 0.004,
          hide_listings: int = 1) -> Chaos:
    """A seeded mix: latency and jitter on everything, failures of every kind in
    `kinds` on reads and listings, and L0 files listed late."""
    faulty = FaultyStorage(inner, rate=rate, kinds=kinds, ops=("read", "read_all", "list"), seed=seed)
    late = EventuallyConsistentStorage(faulty, hide_listings=hide_listings)
    lat = LatencyStorage(late, delay=0.0, jitter=max_latency, seed=seed)
    return Chaos(lat, faulty, lat, late)
