"""lsvfs vs the Go VFS (litestream-vfs) vs plain local SQLite, on the same replica.

Every query benchmark runs the same batch of K queries in each system and
asserts all three return the same rows (checksum), so the suite doubles as a
correctness check. lsvfs and local run in this process; the Go VFS runs in a
worker process (go_worker.py) started with LITESTREAM_REPLICA_URL, and its
benchmarked call is one request for the whole batch (the worker's own timing
is kept in extra_info as `internal_*`).

Run: python -m pytest bench --benchmark-enable [--benchmark-json out.json]
Without --benchmark-enable each benchmark runs once on small replicas (smoke).
"""

from __future__ import annotations

import ctypes
import logging
import os
import random
import statistics
import struct
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import apsw
import pytest
from go_worker import WorkerClient, run_batch, run_cold
from replicas import (  # noqa: F401 - fixtures are used by name
    BenchReplica,
    benchmarks_enabled,
    bench_dir,
    big_replica,
    litestream_restore,
    name_of,
    small_replica,
)

import lsvfs
from lsvfs.storage import open_storage, parse_url
from lsvfs.storage.base import FileInfo, StorageClient

log = logging.getLogger("lsvfs.bench")

SYSTEMS = ("local", "go", "lsvfs")
"""In this order, so each lsvfs benchmark can put its ratios to the others in extra_info."""
CACHE_SIZE = 64 << 20
"""Page cache bytes for both VFSes (lsvfs's default; the Go VFS defaults to 10 MB)."""
RESTORE_ROUNDS = 5
POLL_INTERVAL_S = 0.2
POLL_WINDOW_S = 3.0
Result = dict[str, Any]
Params = list[list[Any]]


# ---------------------------------------------------------------------------
# the operations


@dataclass(frozen=True)
class Op:
    """One benchmarked operation: a query and how to make its batch of parameters."""

    name: str
    sql: str
    make_params: Callable[[BenchReplica, random.Random], Params]
    cold: bool = False
    doc: str = ""


def _ids(n: int) -> Callable[[BenchReplica, random.Random], Params]:
    return lambda r, rnd: [[rnd.randint(1, r.rows)] for _ in range(n)]


def _ranges(n: int, length: int) -> Callable[[BenchReplica, random.Random], Params]:
    def make(r: BenchReplica, rnd: random.Random) -> Params:
        span = min(length, r.rows // 10)
        starts = (rnd.randint(1, r.rows - span) for _ in range(n))
        return [[s, s + span - 1] for s in starts]
    return make


def _same_range(n: int, length: int) -> Callable[[BenchReplica, random.Random], Params]:
    def make(r: BenchReplica, rnd: random.Random) -> Params:
        s = rnd.randint(1, r.rows - length)
        return [[s, s + length - 1]] * n
    return make


OPS: dict[str, Op] = {op.name: op for op in [
    Op("point_lookup", "SELECT id, name, grp, payload FROM items WHERE id = ?", _ids(500),
       doc="500 primary-key lookups (random ids), payload returned"),
    Op("range_scan", "SELECT id, name, grp, length(payload) FROM items WHERE id BETWEEN ? AND ?",
       _ranges(10, 1000), doc="10 scans of 1000 consecutive ids"),
    Op("count_star", "SELECT count(*) FROM items", lambda r, rnd: [[]] * 5,
       doc="5 x count(*): SQLite walks the smallest b-tree (the name index)"),
    Op("full_scan", "SELECT count(*), sum(length(payload)), max(grp) FROM items", lambda r, rnd: [[]],
       doc="1 full table scan: every table page"),
    Op("text_lookup", "SELECT id, grp FROM items WHERE name = ?",
       lambda r, rnd: [[name_of(rnd.randint(1, r.rows))] for _ in range(300)],
       doc="300 lookups through the text index"),
    Op("repeated_txn", "SELECT count(*), sum(grp), sum(length(payload)) FROM items WHERE id BETWEEN ? AND ?",
       _same_range(200, 300),
       doc="the same 300-row query 200 times, each its own transaction, nothing changing"),
    Op("cold_open", "SELECT name, grp FROM items WHERE id = ?", _ids(5), cold=True,
       doc="5 x (new connection, one lookup, close); lsvfs opens a fresh Replica each time"),
]}
MEMORY_OPS = ("point_lookup", "range_scan", "text_lookup", "count_star", "full_scan")


# ---------------------------------------------------------------------------
# systems


class System(Protocol):
    def batch(self, sql: str, params: Params) -> Result: ...

    def cold(self, sql: str, params: Params) -> Result: ...

    def close(self) -> None: ...


class InProcess:
    """lsvfs or local SQLite in this process, running go_worker's own batch code."""

    def __init__(self, conn: apsw.Connection, open_cold: Callable[[], apsw.Connection]) -> None:
        self.conn = conn
        self.open_cold = open_cold

    def batch(self, sql: str, params: Params) -> Result:
        return run_batch(self.conn, sql, params)

    def cold(self, sql: str, params: Params) -> Result:
        return run_cold(self.open_cold, sql, params)

    def close(self) -> None:
        self.conn.close()


class Remote:
    """A system in a worker process (the Go VFS): one request per batch."""

    def __init__(self, client: WorkerClient) -> None:
        self.client = client
        self.client.request("open")

    def batch(self, sql: str, params: Params) -> Result:
        return self.client.request("batch", sql=sql, params=params)

    def cold(self, sql: str, params: Params) -> Result:
        return self.client.request("cold", sql=sql, params=params)

    def close(self) -> None:
        self.client.close()


def same_replica(a: str, b: str) -> bool:
    """Whether two replica URLs name the same place (whatever their spelling)."""
    return parse_url(a) == parse_url(b)


def replica_open(url: str) -> bool:
    """Whether lsvfs has a Replica open on `url`'s replica, under any spelling."""
    return any(same_replica(u, url) for u in lsvfs.open_replicas())


def go_env(url: str) -> dict[str, str]:
    """Environment for a Go VFS worker: the replica URL must be there at process start."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITESTREAM_")}
    env["LITESTREAM_REPLICA_URL"] = url
    return env


class Harness:
    """Session state: replicas, systems (created lazily), batches, expected results."""

    def __init__(self, request: pytest.FixtureRequest, bench_dir: Path) -> None:
        self._request = request
        self.bench_dir = bench_dir
        self.enabled = benchmarks_enabled(request.config)
        self._systems: dict[tuple[str, str], System] = {}
        self._params: dict[tuple[str, str], Params] = {}
        self._expected: dict[tuple[str, str], Result] = {}
        self.medians: dict[tuple[str, ...], float] = {}

    def replica(self, db: str) -> BenchReplica:
        rep: BenchReplica = self._request.getfixturevalue(f"{db}_replica")
        return rep

    def params(self, db: str, op: str) -> Params:
        key = (db, op)
        if key not in self._params:
            self._params[key] = OPS[op].make_params(self.replica(db), random.Random(f"{db}/{op}"))
        return self._params[key]

    def system(self, db: str, system: str) -> System:
        key = (db, system)
        if key not in self._systems:
            self._systems[key] = self._open(db, system)
        return self._systems[key]

    def copy_url(self, db: str, tag: str) -> str:
        """URL of a hard-linked copy of the `db` replica, private to `tag`."""
        return self.replica(db).linked_copy(self.bench_dir / f"{db}-{tag}")

    def existing(self, db: str, system: str) -> System | None:
        """The system if a benchmark already opened it."""
        return self._systems.get((db, system))

    def _open(self, db: str, system: str) -> System:
        rep = self.replica(db)
        if system == "local":
            def open_local() -> apsw.Connection:
                return apsw.Connection(rep.local_path, flags=apsw.SQLITE_OPEN_READONLY)
            return InProcess(open_local(), open_local)
        if system == "lsvfs":
            cold_url = self.copy_url(db, "cold")

            def open_cold() -> apsw.Connection:
                # Nothing else open on this copy: lsvfs builds a fresh Replica.
                assert not replica_open(cold_url), "previous cold connection still open"
                return lsvfs.connect(cold_url, cache_size=CACHE_SIZE)
            return InProcess(lsvfs.connect(rep.url, cache_size=CACHE_SIZE), open_cold)
        client = WorkerClient("go", env=go_env(rep.url), options={"cache_size": CACHE_SIZE},
                              stderr_path=self.bench_dir / f"go-worker-{db}.log")
        return Remote(client)

    def expected(self, db: str, op: str) -> Result:
        """The local SQLite answer, which the VFSes must match."""
        key = (db, op)
        if key not in self._expected:
            local = self.system(db, "local")
            o = OPS[op]
            self._expected[key] = (local.cold if o.cold else local.batch)(o.sql, self.params(db, op))
        return self._expected[key]

    def close(self) -> None:
        for s in self._systems.values():
            try:
                s.close()
            except Exception:  # noqa: BLE001 - close the rest
                log.exception("closing a system failed")
        self._systems.clear()


@pytest.fixture(scope="session")
def harness(request: pytest.FixtureRequest, bench_dir: Path) -> Iterator[Harness]:  # noqa: F811
    h = Harness(request, bench_dir)
    try:
        yield h
    finally:
        h.close()


def _median(benchmark: Any) -> float | None:
    """Median seconds per call of a finished benchmark (None in smoke mode)."""
    stats = getattr(benchmark, "stats", None)
    return None if stats is None else float(stats.stats.median)


def _ratios(harness: Harness, key: tuple[str, ...], median: float | None) -> dict[str, float]:
    """lsvfs time / other system's time, for the others already measured."""
    out: dict[str, float] = {}
    if median is None:
        return out
    for other in ("go", "local"):
        m = harness.medians.get((*key, other))
        if m:
            out[f"ratio_vs_{other}"] = round(median / m, 3)
    return out


# ---------------------------------------------------------------------------
# 3. queries


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("db", ["small", "big"])
@pytest.mark.parametrize("op", list(OPS))
def test_query(benchmark: Any, harness: Harness, op: str, db: str, system: str) -> None:
    """One batch of K queries per round, same batch in every system."""
    o = OPS[op]
    params = harness.params(db, op)
    expected = harness.expected(db, op)
    sysobj = harness.system(db, system)
    run = sysobj.cold if o.cold else sysobj.batch
    first = run(o.sql, params)  # warm-up, and the correctness check
    assert (first["rows"], first["checksum"]) == (expected["rows"], expected["checksum"]), \
        f"{system} returned different rows than local SQLite for {op} on {db}"
    internal: list[float] = []

    def target() -> Result:
        r = run(o.sql, params)
        internal.append(r["elapsed"])
        return r

    counters = None
    if system == "lsvfs" and not o.cold:
        rep = lsvfs.open_replicas()[harness.replica(db).url]
        counters = (rep.cache, rep.cache.hits + rep.cache.misses, rep.cache.misses)
    benchmark.group = f"{op}[{db}]"
    result = benchmark(target)
    assert result["checksum"] == expected["checksum"]
    info: dict[str, Any] = {
        "kind": "query", "op": op, "db": db, "system": system, "queries": len(params), "rows": result["rows"],
        "internal_median_s": statistics.median(internal), "internal_min_s": min(internal),
    }
    if counters is not None:
        cache, lookups0, misses0 = counters
        info["vfs_page_reads_per_query"] = round((cache.hits + cache.misses - lookups0)
                                                 / (len(internal) * len(params)), 2)
        info["vfs_cache_misses"] = cache.misses - misses0
    median = _median(benchmark)
    if median is not None:
        harness.medians[(op, db, system)] = median
    if system == "lsvfs":
        info.update(_ratios(harness, (op, db), median))
    benchmark.extra_info.update(info)


# ---------------------------------------------------------------------------
# 2. restore


@pytest.mark.parametrize(("db", "tool"), [("small", "litestream"), ("small", "lsvfs"),
                                           ("big", "litestream"), ("big", "lsvfs")])
def test_restore(benchmark: Any, harness: Harness, db: str, tool: str) -> None:
    """`lsvfs.restore` vs `litestream restore -o` (a subprocess) of the whole replica."""
    rep = harness.replica(db)
    out = harness.bench_dir / f"restore-{tool}-{db}.db"

    def setup() -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{out}{suffix}").unlink(missing_ok=True)

    def run() -> None:
        if tool == "lsvfs":
            lsvfs.restore(rep.url, out, force=True)
        else:
            litestream_restore(rep.url, out)

    benchmark.group = f"restore[{db}]"
    benchmark.pedantic(run, setup=setup, rounds=RESTORE_ROUNDS if harness.enabled else 1, warmup_rounds=0)
    info: dict[str, Any] = {"kind": "restore", "op": "restore", "db": db, "system": tool,
                            "bytes": out.stat().st_size}
    median = _median(benchmark)
    if median is not None:
        harness.medians[("restore", db, tool)] = median
        other = harness.medians.get(("restore", db, "litestream"))
        if tool == "lsvfs" and other:
            info["ratio_vs_litestream"] = round(median / other, 3)
            info["mb_per_s"] = round(out.stat().st_size / median / 1e6, 1)
    # Same database as Litestream's own restore (the page images must agree
    # beyond the header's journal-mode bytes, which each tool sets its own way).
    other_out = harness.bench_dir / f"restore-litestream-{db}.db"
    if tool == "lsvfs" and other_out.exists():
        a, b = out.read_bytes(), other_out.read_bytes()
        assert len(a) == len(b) and a[100:] == b[100:] and a[:18] == b[:18] and a[20:100] == b[20:100], \
            "lsvfs restore differs from litestream restore"
    benchmark.extra_info.update(info)


# ---------------------------------------------------------------------------
# 4. memory


def _run_memory_workload(harness: Harness, batch: Callable[[str, Params], Result]) -> None:
    for op in MEMORY_OPS:
        r = batch(OPS[op].sql, harness.params("big", op))
        assert r["checksum"] == harness.expected("big", op)["checksum"], f"{op}: wrong rows"


def test_memory(benchmark: Any, harness: Harness) -> None:
    """lsvfs's page table / cache / traced Python memory for the big replica, and
    the RSS growth of a fresh worker process per system after the same queries."""
    rep = harness.replica("big")
    url = harness.copy_url("big", "memory")
    info: dict[str, Any] = {"kind": "memory", "op": "memory", "db": "big", "system": "all",
                            "cache_size": CACHE_SIZE, "db_bytes": os.path.getsize(rep.local_path)}

    def in_process() -> None:
        assert not replica_open(url)
        tracemalloc.start()
        conn = lsvfs.connect(url, cache_size=CACHE_SIZE)
        try:
            _run_memory_workload(harness, lambda sql, p: run_batch(conn, sql, p))
            r = lsvfs.open_replicas()[url]
            snap = r.current()
            cur, peak = tracemalloc.get_traced_memory()
            info.update(lsvfs_page_table_bytes=snap.table.memory, lsvfs_pages=snap.commit,
                        lsvfs_page_table_bytes_per_page=round(snap.table.memory / snap.commit, 2),
                        lsvfs_frame_cache_bytes=r.cache.bytes, lsvfs_traced_current_bytes=cur,
                        lsvfs_traced_peak_bytes=peak)
        finally:
            conn.close()
            tracemalloc.stop()

    def workers() -> None:
        for system in ("go", "lsvfs", "local"):
            target = {"go": None, "lsvfs": url, "local": rep.local_path}[system]
            options = {"cache_size": CACHE_SIZE} if system != "local" else {}
            with WorkerClient(system, target, env=go_env(rep.url) if system == "go" else None,
                              options=options, stderr_path=harness.bench_dir / f"mem-{system}.log") as w:
                base = w.request("rss")["baseline_kb"]
                opened = w.request("open")["rss_kb"]
                _run_memory_workload(harness, lambda sql, p: w.request("batch", sql=sql, params=p))
                after = w.rss_kb()
            info[f"{system}_rss_baseline_kb"] = base
            info[f"{system}_rss_open_delta_kb"] = opened - base
            info[f"{system}_rss_delta_kb"] = after - base
        # The long-lived Go worker of the query benchmarks, after all of them.
        go = harness.existing("big", "go")
        if isinstance(go, Remote):
            info["go_longlived_rss_kb"] = go.client.rss_kb()

    def measure() -> None:
        in_process()
        workers()

    benchmark.group = "memory"
    benchmark.pedantic(measure, rounds=1)
    benchmark.extra_info.update(info)
    log.info("memory: %s", info)


# ---------------------------------------------------------------------------
# 5. poll cost


class CountingStorage:
    """Forwards to a real storage client, counting LIST and read requests."""

    def __init__(self, inner: StorageClient) -> None:
        self.inner = inner
        self.url = inner.url
        self.local = inner.local
        self._lock = threading.Lock()
        self.lists = 0
        self.reads = 0

    def list_files(self, level: int, min_txid: int = 0) -> list[FileInfo]:
        with self._lock:
            self.lists += 1
        return self.inner.list_files(level, min_txid)

    def read(self, info: FileInfo, offset: int, length: int) -> bytes:
        with self._lock:
            self.reads += 1
        return self.inner.read(info, offset, length)

    def read_all(self, info: FileInfo) -> bytes:
        with self._lock:
            self.reads += 1
        return self.inner.read_all(info)

    def close(self) -> None:
        self.inner.close()


class DirOpenCounter:
    """Counts directory listings (opendir) of watched directories by any process,
    via inotify IN_OPEN on each directory itself: works for the Go VFS too."""

    IN_OPEN = 0x20
    IN_ISDIR = 0x40000000
    IN_NONBLOCK = 0o4000
    IN_CLOEXEC = 0o2000000

    def __init__(self, dirs: Sequence[Path]) -> None:
        self._libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self.fd = self._libc.inotify_init1(self.IN_NONBLOCK | self.IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        for d in dirs:
            if d.is_dir() and self._libc.inotify_add_watch(self.fd, os.fsencode(d), self.IN_OPEN) < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {d}")

    def drain(self) -> int:
        """Listings since the last drain."""
        n = 0
        while True:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return n
            off = 0
            while off < len(buf):
                _, mask, _, length = struct.unpack_from("iIII", buf, off)
                if mask & self.IN_ISDIR and length == 0:  # the directory itself, not a file in it
                    n += 1
                off += 16 + length

    def close(self) -> None:
        os.close(self.fd)


@pytest.mark.parametrize("system", ["lsvfs", "go"])
@pytest.mark.parametrize("conns", [1, 8])
def test_poll_cost(benchmark: Any, harness: Harness, conns: int, system: str) -> None:
    """LIST requests per second for N connections polling one replica every 200 ms,
    each running a tiny query every 100 ms. lsvfs shares one poller per URL."""
    work = harness.bench_dir / f"poll-{system}-{conns}"
    url = harness.replica("small").linked_copy(work / "replica")
    dirs = [work / "replica" / "ltx", *sorted((work / "replica" / "ltx").iterdir())]
    window = POLL_WINDOW_S if harness.enabled else 1.0
    probe = "SELECT count(*) FROM bench_meta"
    info: dict[str, Any] = {"kind": "poll", "op": "poll", "db": "small", "system": system, "conns": conns,
                            "poll_interval_s": POLL_INTERVAL_S, "window_s": window}

    def run_lsvfs() -> None:
        storage = CountingStorage(open_storage(url))
        cs = [lsvfs.connect(url, storage=storage, poll_interval=POLL_INTERVAL_S) for _ in range(conns)]
        try:
            for c in cs:
                c.execute(probe).fetchall()
            rep = lsvfs.open_replicas()[url]
            counter.drain()
            lists0, polls0 = storage.lists, rep.poll_count
            end = time.monotonic() + window
            while time.monotonic() < end:
                for c in cs:
                    c.execute(probe).fetchall()
                time.sleep(0.1)
            info.update(lists=storage.lists - lists0, polls=rep.poll_count - polls0, dir_opens=counter.drain(),
                        replicas_open=sum(1 for u in lsvfs.open_replicas() if same_replica(u, url)))
        finally:
            for c in cs:
                c.close()
        assert not replica_open(url)

    def run_go() -> None:
        with WorkerClient("go", env=go_env(url), options={"poll_interval": f"{int(POLL_INTERVAL_S * 1000)}ms"},
                          stderr_path=work / "worker.log") as w:
            w.request("open_extra", n=conns, sql=probe)
            counter.drain()
            end = time.monotonic() + window
            while time.monotonic() < end:
                w.request("batch_extra", sql=probe)
                time.sleep(0.1)
            info["dir_opens"] = counter.drain()
            w.request("close_extra")

    counter = DirOpenCounter(dirs)
    try:
        benchmark.group = f"poll[{conns}]"
        benchmark.pedantic(run_lsvfs if system == "lsvfs" else run_go, rounds=1)
    finally:
        counter.close()
    info["dir_opens_per_s"] = round(info["dir_opens"] / window, 2)
    info["dir_opens_per_s_per_conn"] = round(info["dir_opens"] / window / conns, 2)
    if "lists" in info:
        info["lists_per_s"] = round(info["lists"] / window, 2)
    benchmark.extra_info.update(info)
    log.info("poll cost: %s", info)
