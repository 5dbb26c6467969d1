"""Memory and scale: the page table of a million-page database, aggregates over
a large database, read-ahead under storage latency (scenarios 4, 23, 25).

See tests/TEST_PLAN.md for the scenario -> test map and what each proves.
"""

from __future__ import annotations

import gc
import logging
import time
import tracemalloc
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import ltx_writer
from faults import (
    LatencyStorage,
)
from longrun import LongRun
from replication import wait_until
from scenario_support import indexed_table, txid_of
from synthetic import (
    SOAK_SECONDS,
    DirTarget,
    SyntheticPrimary,
    fast_zero_snapshot,
    make_target,
    open_replica,
)

import lsvfs
from lsvfs import ltx
from lsvfs.storage import open_storage

log = logging.getLogger("lsvfs.tests")


# ---- 4: page table memory ----------------------------------------------------------------

@pytest.fixture(scope="module")
def million_page_replica(tmp_path_factory: pytest.TempPathFactory) -> DirTarget:
    """A replica whose snapshot holds 1,000,000 pages of 512 bytes."""
    target = DirTarget(tmp_path_factory.mktemp("million"))
    target.put(0, 1, 1, fast_zero_snapshot(1_000_000, 512))
    return target


@pytest.mark.soak
def test_s04_page_table_memory_bounded_and_flat_under_rewrites(million_page_replica: DirTarget,
                                                                record_property: Any, long_run: LongRun) -> None:
    """Scenario 4: the page table of a 1M-page database costs <= 20 MB (the C
    table's own accounting), and rewriting the same 64 pages for a thousand
    polls (each poll one new L0 file, old ones deleted as retention would)
    grows neither the table nor lsvfs's Python heap (tracemalloc, filtered to
    lsvfs's own code) nor the process RSS.

    LSVFS_SOAK_SECONDS runs the polls for that long instead of 1,000 polls.
    """
    target = million_page_replica
    ps = 512
    pgnos = [1 + k * 15_601 for k in range(64)]  # 64 different 1024-page chunks

    def l0(txid: int) -> None:
        hdr = ltx.Header(ltx.FLAG_NO_CHECKSUM, ps, 1_000_000, txid, txid, 1_700_000_000_000 + txid)
        page = txid.to_bytes(8, "big") * (ps // 8)
        target.put(0, txid, txid, ltx_writer.encode(hdr, [(n, page) for n in pgnos]))
        if txid > 4:
            target.delete(0, txid - 3, txid - 3)

    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096

    tracemalloc.start(1)  # before anything is allocated, so the baseline sees the caches full
    with open_replica(target.url, poll_interval=0, cache_size="1MiB") as rep:
        snap = rep.current()
        assert snap.commit == 1_000_000 and snap.table.count == 1_000_000
        mem = snap.table.memory
        record_property("page_table_bytes_1M_pages", mem)
        assert mem <= 20_000_000, f"page table for 1M pages is {mem / 1e6:.1f} MB"
        del snap
        txid = 1
        for _ in range(200):  # warm up: caches fill, descriptor cache fills, allocator settles
            txid += 1
            l0(txid)
            assert rep.poll()
        gc.collect()
        try:
            base_trace = tracemalloc.take_snapshot()
            base_table = (rep.current().table.memory, rep.current().table.unique_memory)
            base_rss = rss()
            polls = 0
            deadline = time.monotonic() + SOAK_SECONDS
            while polls < 1000 or time.monotonic() < deadline:
                txid += 1
                l0(txid)
                assert rep.poll()
                polls += 1
            gc.collect()
            end_trace = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        cur = rep.current()
        assert cur.txid == txid
        assert rep.read_page(cur, pgnos[5]) == txid.to_bytes(8, "big") * (ps // 8)
        end_table = (cur.table.memory, cur.table.unique_memory)
        flt = [tracemalloc.Filter(True, "*/lsvfs/*")]
        growth = sum(s.size_diff for s in end_trace.filter_traces(flt).compare_to(
            base_trace.filter_traces(flt), "filename"))
        rss_growth = rss() - base_rss
        record_property("polls", polls)
        long_run.count(commits=polls, reads_checked=1)
        record_property("lsvfs_heap_growth_bytes", growth)
        record_property("rss_growth_bytes", rss_growth)
        assert end_table == base_table, f"page table grew: {base_table} -> {end_table}"
        assert rep.open_slots() <= 4, "only the files the current snapshot uses stay registered"
        assert growth < 64 * 1024, (f"lsvfs heap grew {growth} bytes over {polls} polls:\n" + "\n".join(
            str(s) for s in end_trace.filter_traces(flt).compare_to(base_trace.filter_traces(flt), "lineno")[:8]))
        assert rss_growth < 32 << 20, f"RSS grew {rss_growth >> 20} MiB over {polls} polls"


# ---- 23: large database ------------------------------------------------------------------

AGGREGATES = ("SELECT count(*), sum(k), avg(length(v)) FROM t",
              "SELECT k % 10, count(*), max(id) FROM t GROUP BY 1 ORDER BY 1",
              "SELECT count(*) FROM t WHERE k BETWEEN 100 AND 300")


def test_s23_large_database_aggregates(tmp_path: Path, benchmark: Any, record_property: Any) -> None:
    """Scenario 23: 20,000 rows (~5 MB) of aggregates over a replica, cold and
    warm, each result equal to the primary's; times are recorded. The
    side-by-side benchmark against the Go VFS and local SQLite is
    bench/test_bench_vfs.py (python -m pytest bench --benchmark-enable)."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=4096, keep_images=False)
    indexed_table(p, 20_000)
    want = [p.rows(q) for q in AGGREGATES]
    with closing(lsvfs.connect(p.url, poll_interval=0)) as conn:
        t0 = time.perf_counter()
        assert [conn.execute(q).fetchall() for q in AGGREGATES] == want
        cold = time.perf_counter() - t0

        def warm() -> list[list[tuple[Any, ...]]]:
            with closing(lsvfs.connect(p.url)) as c:  # fresh SQLite cache, warm replica cache
                return [c.execute(q).fetchall() for q in AGGREGATES]

        assert benchmark(warm) == want
        t0 = time.perf_counter()
        warm()
        warm_s = time.perf_counter() - t0
    record_property("cold_s", round(cold, 4))
    record_property("warm_s", round(warm_s, 4))
    log.info("20k rows: cold %.3fs, warm %.3fs", cold, warm_s)
    assert warm_s < cold * 2 + 0.5


# ---- 25: latency -------------------------------------------------------------------------

@pytest.mark.parametrize("storage", ["file", "s3"])
def test_s25_latency_readahead_and_following(tmp_path: Path, request: pytest.FixtureRequest, storage: str,
                                             record_property: Any) -> None:
    """Scenario 25: with 10 ms added to every storage call, a sequential scan
    with read-ahead makes several times fewer requests (and takes less time)
    than page-at-a-time, and the replica still follows new commits."""
    p = SyntheticPrimary(make_target(storage, tmp_path, request), page_size=1024)
    indexed_table(p, 300)
    sql = "SELECT count(*), sum(length(v)) FROM t"
    stats = {}
    for readahead in (1, 64):
        slow = LatencyStorage(open_storage(p.url), delay=0.01)
        with closing(lsvfs.connect(p.url, storage=slow, poll_interval=0.02, readahead=readahead,
                                   cache_size="4MiB", prefetch="off")) as conn:
            rep = lsvfs.open_replicas()[p.url]
            rep.cache.clear()  # the open read small files whole: start cold
            reads0 = slow.calls["read"]
            t0 = time.perf_counter()
            assert conn.execute(sql).fetchall() == p.rows(sql)
            stats[readahead] = (slow.calls["read"] - reads0, time.perf_counter() - t0)
            p.commit("INSERT INTO t(k, v) VALUES (1, x'00')")
            wait_until(lambda: txid_of(conn) == p.txid, 10, interval=0.01, what="follows under latency")
            assert conn.execute(sql).fetchall() == p.rows(sql)
    (r1, t1), (r64, t64) = stats[1], stats[64]
    record_property("reads_page_at_a_time", r1)
    record_property("reads_readahead_64", r64)
    record_property("scan_s", f"{t1:.3f} vs {t64:.3f}")
    assert r64 * 4 <= r1, stats
    assert t64 < t1, stats
