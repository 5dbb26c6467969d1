"""Which LTX files, in which order, rebuild the database at a target.

One greedy rule serves every level layout Litestream leaves behind: start at
TXID 0 and repeatedly take the file, from any level, that starts at or before
current+1 and reaches furthest. Snapshots (min_txid 1) and compactions are
just files that reach far; L0 files deleted by retention are covered by the
higher level that compacted them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

from .errors import GapError, ReplicaError
from .futures import run_all
from .ltx import HEADER_SIZE, Header
from .storage.base import LEVELS, PARALLEL_REQUESTS, FileInfo, StorageClient, list_every_level
from .timeutil import format_time


@dataclass(frozen=True)
class Target:
    """Restore target: latest (both None), a TXID, or a time (ms since epoch)."""

    txid: int | None = None
    timestamp_ms: int | None = None


@contextmanager
def _pool(given: Executor | None, width: int) -> Iterator[Executor]:
    """`given`, or a pool of our own at most PARALLEL_REQUESTS wide for the block."""
    if given is not None:
        yield given
        return
    with ThreadPoolExecutor(max_workers=max(1, min(width, PARALLEL_REQUESTS)), thread_name_prefix="lsvfs-plan") as own:
        yield own


def list_all(storage: StorageClient, min_txid: int = 0, pool: Executor | None = None) -> list[FileInfo]:
    """Every LTX file of every level: in one listing where the storage can,
    else remote levels in parallel (in `pool` if given) and a local
    directory's in turn, which is faster than starting threads."""
    every = list_every_level(storage, min_txid)
    if every is not None:
        return every
    calls: list[Callable[[], list[FileInfo]]] = [partial(storage.list_files, lvl, min_txid) for lvl in LEVELS]
    if storage.local:
        per_level = [call() for call in calls]
    else:
        with _pool(pool, len(calls)) as p:
            per_level = run_all(p, calls)
    return [f for files in per_level for f in files]


def list_past(storage: StorageClient, pool: Executor | None = None) -> list[FileInfo]:
    """Every file a past state may be built from: list_all, or `list_past()`
    of a storage that lists only what the newest state needs (a shared mirror)."""
    past = getattr(getattr(storage, "inner", storage), "list_past", None)
    return past() if past is not None else list_all(storage, pool=pool)


def extend(files: list[FileInfo], start: int) -> list[FileInfo]:
    """The chain of files that carries the state at `start` furthest.

    Among candidates reaching equally far, the higher level wins: it is the
    one fewer requests and the one L0 retention will not delete next.
    """
    by_reach = sorted(files, key=lambda f: (f.min_txid, -f.max_txid, -f.level))
    chain: list[FileInfo] = []
    cur = start
    i = 0
    best: FileInfo | None = None
    while True:
        while i < len(by_reach) and by_reach[i].min_txid <= cur + 1:
            f = by_reach[i]
            if f.max_txid > cur and (best is None or (f.max_txid, f.level) > (best.max_txid, best.level)):
                best = f
            i += 1
        if best is None:
            return chain
        chain.append(best)
        cur = best.max_txid
        best = None


def build(files: list[FileInfo], target: Target = Target()) -> list[FileInfo]:
    """The restore plan for `target`; ReplicaError/GapError if none exists.

    A timestamp target must already be reflected in `files` (pass only files
    whose header timestamp is at or before it): that needs header reads,
    which `plan_for` does.
    """
    usable = files if target.txid is None else [f for f in files if f.max_txid <= target.txid]
    if not files:
        raise ReplicaError("replica is empty: no LTX files found")
    chain = extend(usable, 0)
    first = min(files, key=lambda f: f.min_txid)
    if not chain and (target.txid is None or first.min_txid > 1 or target.txid < first.min_txid):
        if target.txid is not None and target.txid < first.min_txid:
            raise ReplicaError(f"TXID {target.txid:016x} is older than the replica, which starts at "
                               f"{first.min_txid:016x}")
        raise GapError(0, first.min_txid, "no snapshot: nothing starts at TXID 1")
    # An empty chain here means every file from TXID 1 reaches past the target.
    end = chain[-1].max_txid if chain else 0
    beyond = [f for f in usable if f.min_txid > end + 1]
    if target.txid is not None and end != target.txid:
        # A break that some file past the target bridges is no gap: the target lies inside that file.
        bridged = any(f.min_txid <= end + 1 and f.max_txid > end for f in files)
        if beyond and chain and not bridged:
            raise GapError(end, min(f.min_txid for f in beyond), f"cannot reach TXID {target.txid:016x}")
        newest = max(f.max_txid for f in files)
        if target.txid > newest:
            raise ReplicaError(f"TXID {target.txid:016x} is newer than the replica's newest, {newest:016x}")
        want = target.txid
        ends = sorted({f.max_txid for f in files}, key=lambda t: (abs(t - want), t))
        near = [t for t in ends[:64] if _reaches(files, t)][:5]
        hint = f"; restorable TXIDs near it include {', '.join(f'{t:016x}' for t in near)}" if near else ""
        raise ReplicaError(f"TXID {target.txid:016x} is not a restorable point in this replica "
                           f"(it lies inside a compacted file or beyond the newest){hint}")
    if target.txid is None and beyond:
        raise GapError(end, min(f.min_txid for f in beyond))
    return chain


def _reaches(files: list[FileInfo], txid: int) -> bool:
    """Whether a chain from TXID 1 ends exactly at `txid`."""
    chain = extend([f for f in files if f.max_txid <= txid], 0)
    return bool(chain) and chain[-1].max_txid == txid


def plan_for(storage: StorageClient, target: Target = Target(),
             files: list[FileInfo] | None = None, pool: Executor | None = None) -> list[FileInfo]:
    """List the replica (unless given) and plan; handles timestamp targets,
    whose header reads go out in parallel (in `pool` if given)."""
    files = list_all(storage, pool=pool) if files is None else files
    if target.timestamp_ms is None:
        return build(files, target)
    def stamp(f: FileInfo) -> int:
        return Header.decode(storage.read(f, 0, HEADER_SIZE), f.name).timestamp

    with _pool(pool, len(files)) as p:
        stamps = run_all(p, [partial(stamp, f) for f in files])
    usable = [f for f, ts in zip(files, stamps) if ts <= target.timestamp_ms]
    if not usable and files:
        oldest = min(stamps)
        raise ReplicaError(f"no state at or before {format_time(target.timestamp_ms)}: the oldest file is "
                           f"from {format_time(oldest)}")
    return build(usable, Target())

