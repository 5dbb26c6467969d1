"""Test plan, priorities 6 and 7 (performance & scalability; failure recovery): scenarios 23-31.

Every fault here comes from a wrapper in tests/faults.py around the real
directory or S3 client; key tests run over both.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import apsw
import pytest
from faults import (
    AllocFailureStorage,
    CorruptIndexStorage,
    DescriptorBudgetStorage,
    EventuallyConsistentStorage,
    LatencyStorage,
    TruncatedUploadStorage,
)
from replication import ReplicatedPrimary, wait_until
from synthetic import DirTarget, SyntheticPrimary, fd_count, make_target, open_replica
from wrappers import WrappedStorage

import lsvfs
from lsvfs import core
from lsvfs.storage import open_storage

log = logging.getLogger("lsvfs.tests")


def txid_of(conn: apsw.Connection) -> int:
    return int(conn.execute("PRAGMA litestream_txid").fetchall()[0][0], 16)


def table(p: SyntheticPrimary, rows: int, size: int = 200, seed: int = 8) -> None:
    rnd = random.Random(seed)
    p.commit("CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v BLOB)")
    p.commit("CREATE INDEX t_k ON t(k)")
    p.commit("INSERT INTO t(k, v) VALUES (?, ?)", many=[(rnd.randrange(1000), rnd.randbytes(size))
                                                          for _ in range(rows)])


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
    table(p, 20_000)
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


# ---- 24: cache miss storm ---------------------------------------------------------------

@pytest.mark.parametrize("storage", ["file", "s3"])
def test_s24_cache_miss_storm_is_single_flight(tmp_path: Path, request: pytest.FixtureRequest,
                                               storage: str) -> None:
    """Scenario 24: 32 threads released together on one cold page (storage
    answers after 50 ms) cause exactly one storage read and one cache miss;
    then 16 connections cold-scanning one table at once cost about as many
    storage reads as one scan alone."""
    p = SyntheticPrimary(make_target(storage, tmp_path, request), page_size=1024)
    table(p, 400)
    slow = LatencyStorage(open_storage(p.url), delay=0.05, ops=("read",))
    with open_replica(p.url, slow, poll_interval=0, cache_size="16MiB") as rep:
        snap = rep.current()
        pgno = snap.commit // 2
        rep.cache.clear()  # cold
        reads0 = slow.calls["read"]
        barrier = threading.Barrier(32)
        got: list[bytes] = []

        def hit() -> None:
            barrier.wait(5)
            got.append(rep.read_page(snap, pgno))

        threads = [threading.Thread(target=hit) for _ in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert len(got) == 32 and len(set(got)) == 1 and got[0] == p.page(p.txid, pgno)
        assert slow.calls["read"] - reads0 == 1
        assert rep.cache.misses == 1
    sql = "SELECT count(*), sum(k), sum(length(v)) FROM t"

    def cold_scans(n: int) -> int:
        counting = WrappedStorage(open_storage(p.url))
        with closing(lsvfs.connect(p.url, storage=counting, poll_interval=0)):
            before = counting.calls["read"] + counting.calls["read_all"]
            results: list[Any] = []
            barrier = threading.Barrier(n)

            def scan() -> None:
                with closing(lsvfs.connect(p.url)) as c:
                    barrier.wait(5)
                    results.append(c.execute(sql).fetchall())

            threads = [threading.Thread(target=scan) for _ in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=30)
            assert results == [p.rows(sql)] * n
            return counting.calls["read"] + counting.calls["read_all"] - before

    one, many = cold_scans(1), cold_scans(16)
    assert many <= one * 2 + 4, f"16 concurrent cold scans made {many} reads; one scan makes {one}"


# ---- 25: latency -------------------------------------------------------------------------

@pytest.mark.parametrize("storage", ["file", "s3"])
def test_s25_latency_readahead_and_following(tmp_path: Path, request: pytest.FixtureRequest, storage: str,
                                             record_property: Any) -> None:
    """Scenario 25: with 10 ms added to every storage call, a sequential scan
    with read-ahead makes several times fewer requests (and takes less time)
    than page-at-a-time, and the replica still follows new commits."""
    p = SyntheticPrimary(make_target(storage, tmp_path, request), page_size=1024)
    table(p, 300)
    sql = "SELECT count(*), sum(length(v)) FROM t"
    stats = {}
    for readahead in (1, 64):
        slow = LatencyStorage(open_storage(p.url), delay=0.01)
        with closing(lsvfs.connect(p.url, storage=slow, poll_interval=0.02, readahead=readahead,
                                   cache_size="4MiB")) as conn:
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


# ---- 26: connection scaling ---------------------------------------------------------------

def test_s26_thirty_two_connections_one_poller(tmp_path: Path, record_property: Any) -> None:
    """Scenario 26: 32 connections in 32 threads run aggregates while the
    primary commits; every transaction sees a consistent state (sum of k is
    a function of the row count by construction), and the replica still
    lists storage once per poll, not once per connection."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    p.commit("CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER)")
    p.commit("INSERT INTO t(k) VALUES (1)")
    counting = WrappedStorage(open_storage(p.url))
    stop = threading.Event()
    errors: list[str] = []
    queries = [0] * 32

    def reader(i: int) -> None:
        try:
            with closing(lsvfs.connect(p.url)) as c:
                while not stop.is_set():
                    (n, s), = c.execute("SELECT count(*), sum(k) FROM t").fetchall()
                    if s != n * (n + 1) // 2:
                        errors.append(f"count {n} sum {s}")
                    queries[i] += 1
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(repr(exc))

    with closing(lsvfs.connect(p.url, storage=counting, poll_interval=0.025)):
        rep = lsvfs.open_replicas()[p.url]
        threads = [threading.Thread(target=reader, args=(i,)) for i in range(32)]
        for t in threads:
            t.start()
        polls0, lists0 = rep.poll_count, counting.calls["list"]
        for n in range(2, 120):
            p.commit("INSERT INTO t(k) VALUES (?)", (n,))
            time.sleep(0.01)
        polls, lists = rep.poll_count - polls0, counting.calls["list"] - lists0
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors, errors[:5]
    assert min(queries) > 0
    assert lists <= 2.1 * polls + 10, (polls, lists)
    record_property("queries_per_connection", sum(queries) // 32)


# ---- 27: partial upload -------------------------------------------------------------------

@pytest.mark.parametrize("storage", ["file", "s3"])
def test_s27_partial_upload_is_not_applied_until_whole(tmp_path: Path, request: pytest.FixtureRequest,
                                                       storage: str) -> None:
    """Scenario 27: a new L0 file seen half-uploaded (listed at half size, bytes
    ending there) fails its poll, the replica stays on its last TXID and
    keeps answering from it; once the file is whole the next poll applies
    it. A half-uploaded snapshot at open is a typed error naming the file,
    and the next connect succeeds once it is whole."""
    p = SyntheticPrimary(make_target(storage, tmp_path, request), page_size=1024)
    table(p, 500)
    sql = "SELECT count(*), sum(k) FROM t"
    first_new = p.txid + 1
    cut = TruncatedUploadStorage(open_storage(p.url), select=lambda f: f.min_txid >= first_new, heal_after=3)
    with closing(lsvfs.connect(p.url, storage=cut, poll_interval=0, read_retries=0)) as conn:
        rep = lsvfs.open_replicas()[p.url]
        before = p.txid
        p.commit("INSERT INTO t(k, v) SELECT k, v FROM t LIMIT 50")
        for _ in range(3):
            assert rep.poll() is False
            assert txid_of(conn) == before and conn.execute(sql).fetchall() == p.rows(sql, before)
        assert rep.poll_errors >= 1
        assert rep.poll() is True
        assert txid_of(conn) == p.txid and conn.execute(sql).fetchall() == p.rows(sql)
    snap_cut = TruncatedUploadStorage(open_storage(p.url), select=lambda f: f.min_txid == 1)
    with pytest.raises((lsvfs.LTXError, lsvfs.StorageError), match=r"0000000000000001-"):
        lsvfs.connect(p.url, storage=snap_cut)
    assert lsvfs.open_replicas() == {}
    whole = TruncatedUploadStorage(open_storage(p.url), select=lambda f: False)  # a failed open closed the last
    with closing(lsvfs.connect(p.url, storage=whole)) as conn:
        assert conn.execute(sql).fetchall() == p.rows(sql)


# ---- 28: corrupt page index ----------------------------------------------------------------

@pytest.mark.parametrize(("storage", "mode"), [("file", "garbage"), ("s3", "garbage"), ("file", "zero"),
                                               ("file", "length"), ("s3", "length")])
def test_s28_corrupt_page_index_fails_cleanly_then_recovers(tmp_path: Path, request: pytest.FixtureRequest,
                                                           storage: str, mode: str) -> None:
    """Scenario 28: the page index of the snapshot (a file > 64 KiB, whose
    index is read from its tail without the file CRC) comes back mangled:
    overlong varints, an index ending at once, or a wrong index length.
    Opening fails with an LTXError naming the file, nothing stays registered,
    and the next connection succeeds once the index reads clean. The same
    corruption in a new L0 file fails only that poll."""
    p = SyntheticPrimary(make_target(storage, tmp_path, request), page_size=1024)
    table(p, 600)
    assert max(f.size for f in open_storage(p.url).list_files(0)) > 64 << 10
    sql = "SELECT count(*), sum(k), sum(length(v)) FROM t"
    bad = CorruptIndexStorage(open_storage(p.url), mode=mode)
    with pytest.raises(lsvfs.LTXError, match=r"[0-9a-f]{16}-[0-9a-f]{16}\.ltx"):
        lsvfs.connect(p.url, storage=bad, read_retries=1)
    assert bad.hits >= 2 and lsvfs.open_replicas() == {}  # the retry saw it too
    bad = CorruptIndexStorage(open_storage(p.url), mode=mode)
    bad.enabled = False
    with closing(lsvfs.connect(p.url, storage=bad, poll_interval=0, read_retries=0)) as conn:
        rep = lsvfs.open_replicas()[p.url]
        assert conn.execute(sql).fetchall() == p.rows(sql)
        p.commit("UPDATE t SET k = k + 1 WHERE id % 4 = 0")
        bad.enabled = True
        assert rep.poll() is False and rep.poll_errors == 1
        assert txid_of(conn) == p.txid - 1
        bad.enabled = False
        assert rep.poll() is True
        assert conn.execute(sql).fetchall() == p.rows(sql)


def test_s28_random_index_bit_flips_never_serve_wrong_pages(tmp_path: Path) -> None:
    """Scenario 28 (seeded bit flips anywhere in a snapshot's index, frames
    mode): every flip makes the open fail or a page read fail; none yields
    a wrong page (a snapshot's index must list exactly pages 1..commit)."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    table(p, 600)
    ref = {n: p.page(p.txid, n) for n in range(1, p.commits[p.txid] + 1)}
    outcomes = {"open": 0, "read": 0, "wrong": 0, "harmless": 0}
    for seed in range(40):
        bad = CorruptIndexStorage(open_storage(p.url), mode="flip", seed=seed)
        try:
            with open_replica(p.url, bad, poll_interval=0, read_retries=0, cache_size=0) as rep:
                snap = rep.current()
                try:
                    pages = {n: rep.read_page(snap, n) for n in range(1, snap.commit + 1)}
                except lsvfs.LsvfsError:
                    outcomes["read"] += 1
                    continue
                outcomes["wrong" if pages != ref else "harmless"] += 1
        except lsvfs.LsvfsError:
            outcomes["open"] += 1
    log.info("index flips: %s", outcomes)
    assert outcomes["wrong"] == 0, outcomes
    assert outcomes["open"] + outcomes["read"] >= 35, outcomes  # a flip can land in a no-op position rarely


# ---- 29: eventual consistency ----------------------------------------------------------------

@pytest.mark.parametrize("storage", ["file", "s3"])
def test_s29_files_listed_late_are_picked_up_without_error(tmp_path: Path, request: pytest.FixtureRequest,
                                                           storage: str) -> None:
    """Scenario 29: every new L0 file is left out of the first two listings
    that could show it (as S3/R2 may, just after an upload). The replica
    needs a few polls more, never reports an error, never serves a state
    it cannot prove; a file listed late while its successors are already
    visible (a temporary gap) is filled in by a later poll."""
    p = SyntheticPrimary(make_target(storage, tmp_path, request), page_size=1024)
    table(p, 50)
    late = EventuallyConsistentStorage(open_storage(p.url), hide_listings=2)
    late.enabled = False
    sql = "SELECT count(*), sum(k) FROM t"
    with closing(lsvfs.connect(p.url, storage=late, poll_interval=0)) as conn:
        rep = lsvfs.open_replicas()[p.url]
        late.enabled = True
        p.commit("INSERT INTO t(k) VALUES (7)")
        polls = 0
        while txid_of(conn) != p.txid and polls < 10:
            rep.poll()
            polls += 1
        assert polls == 3, "two listings missed the file, the third showed it"
        assert conn.execute(sql).fetchall() == p.rows(sql)
        middle = p.txid + 1
        late.select = lambda f: f.min_txid == middle
        late.hide_listings = 6
        for i in range(3):
            p.commit("INSERT INTO t(k) VALUES (?)", (i,))
        seen = []
        for _ in range(12):
            rep.poll()
            seen.append(txid_of(conn))
            assert conn.execute(sql).fetchall() == p.rows(sql, seen[-1])
        assert seen[0] == middle - 1 and seen[-1] == p.txid
        assert rep.poll_errors == 0
        assert late.hidden and all(n >= 2 for n in late.hidden.values())


def test_s29_real_litestream_on_s3_with_late_listings(replicated_primary: Any) -> None:
    """Scenario 29 against real Litestream on S3 (moto): with every L0 file
    listed late (the snapshot too: open_timeout makes the open wait for it),
    the replica follows the primary to its final state with no poll error."""
    p: ReplicatedPrimary = replicated_primary("s3")
    p.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    p.wait_replicated()
    late = EventuallyConsistentStorage(open_storage(p.replica_url), hide_listings=2)
    with closing(lsvfs.connect(p.replica_url, storage=late, poll_interval=0.03, open_timeout=10)) as conn:
        rep = lsvfs.open_replicas()[p.replica_url]
        for i in range(5):
            p.execute("INSERT INTO t(v) VALUES (?)", (i,))
            time.sleep(0.05)
        final = p.wait_replicated()
        wait_until(lambda: txid_of(conn) >= final, 20, interval=0.02, what="replica catches up")
        assert conn.execute("SELECT * FROM t ORDER BY id").fetchall() == p.execute("SELECT * FROM t ORDER BY id")
        assert rep.poll_errors == 0 and sum(late.hidden.values()) > 0


# ---- 30: descriptors -------------------------------------------------------------------------

@pytest.mark.parametrize("storage", ["file", "s3"])
def test_s30_descriptors_return_to_baseline(tmp_path: Path, request: pytest.FixtureRequest, storage: str,
                                            record_property: Any) -> None:
    """Scenario 30: 16 threads query a replica of 120 LTX files (no page cache,
    2 ms per read) through a budget of 4 concurrent storage requests (more
    fail like EMFILE and are retried); every query is right or fails with an
    I/O error that says so;
    requests in flight return to 0, and once the connections close the
    process's descriptors (files and sockets, counted in /proc/self/fd)
    return to the baseline."""
    p = SyntheticPrimary(make_target(storage, tmp_path, request), page_size=1024)
    p.commit("CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v BLOB)")
    for i in range(120):
        p.commit("INSERT INTO t(k, v) VALUES (?, randomblob(300))", (i,))
    sql = "SELECT count(*), sum(k) FROM t"
    want = p.rows(sql)
    ranged = "SELECT id, k, hex(v) FROM t WHERE id BETWEEN ? AND ? ORDER BY id"
    wants = {lo: p.rows(ranged, None, (lo, lo + 10)) for lo in range(110)}
    baseline = fd_count()
    real = open_storage(p.url)
    # 2 ms per read, so 16 threads really have requests in flight together
    budget = DescriptorBudgetStorage(LatencyStorage(real, 0.002, ops=("read",)), budget=1 << 20)
    budget.budget = 1 << 20  # the budget starts after open
    errors: list[str] = []
    ok = [0]
    peak_fds = [baseline]

    def worker(i: int) -> None:
        for j in range(6):
            try:
                with closing(lsvfs.connect(p.url)) as c:
                    try:
                        lo = (i * 7 + j * 31) % 110  # threads read different pages at once
                        if c.execute(ranged, (lo, lo + 10)).fetchall() != wants[lo]:
                            errors.append(f"wrong rows from {lo}")
                        if j == 5 and c.execute(sql).fetchall() != want:
                            errors.append("wrong rows")
                        ok[0] += 1
                    except apsw.IOError:
                        (cause,), = c.execute("PRAGMA litestream_error").fetchall()
                        if "Too many open files" not in cause:
                            errors.append(cause)
            except apsw.Error as exc:
                errors.append(repr(exc))
            peak_fds[0] = max(peak_fds[0], fd_count())

    with closing(lsvfs.connect(p.url, storage=budget, poll_interval=0.05, cache_size=0)):
        budget.budget, budget.peak = 4, 0
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        if storage == "file":
            assert real.open_handles() <= 64  # the directory client's own descriptor cache
    assert budget.in_flight == 0 and budget.peak <= 4
    assert not errors, errors[:5]
    assert ok[0] >= 32, ok
    assert budget.refused > 0, "the budget was reached (and its refusals retried)"
    wait_until(lambda: fd_count() <= baseline, 10, interval=0.05,
               what=f"descriptors back to {baseline} (now {fd_count()})")
    record_property("fds_baseline", baseline)
    record_property("fds_peak", peak_fds[0])
    record_property("budget_refusals", budget.refused)
    log.info("fds: baseline %d, peak %d; %d requests refused by the budget", baseline, peak_fds[0], budget.refused)


# ---- 31: allocation failure during index build ------------------------------------------

@pytest.mark.parametrize("storage", ["file", "s3"])
def test_s31_allocation_failure_during_index_build(tmp_path: Path, request: pytest.FixtureRequest,
                                                   storage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scenario 31: a MemoryError while the page index is built (the tail read
    of the snapshot at open; the page table's own ENOMEM path during a poll)
    propagates from connect() as MemoryError with nothing left registered or
    half-open, fails just that poll, and the next connect / poll succeeds."""
    p = SyntheticPrimary(make_target(storage, tmp_path, request), page_size=1024)
    table(p, 600)
    sql = "SELECT count(*), sum(k) FROM t"
    oom = AllocFailureStorage(open_storage(p.url), failures=1)
    with pytest.raises(MemoryError, match="allocation"):
        lsvfs.connect(p.url, storage=oom)
    assert oom.raised == 1 and lsvfs.open_replicas() == {}
    oom = AllocFailureStorage(open_storage(p.url), failures=0)  # the failed open closed the last one
    with closing(lsvfs.connect(p.url, storage=oom, poll_interval=0)) as conn:
        rep = lsvfs.open_replicas()[p.url]
        assert conn.execute(sql).fetchall() == p.rows(sql)
        p.commit("INSERT INTO t(k) VALUES (5)")
        real_apply = core.PageTable.apply
        calls = {"n": 0}

        def failing_apply(self: core.PageTable, slot: int, entries: Any) -> None:
            calls["n"] += 1
            if calls["n"] == 1:
                raise MemoryError("page table apply: out of memory")
            real_apply(self, slot, entries)

        monkeypatch.setattr(core.PageTable, "apply", failing_apply)
        assert rep.poll() is False and rep.poll_errors == 1
        assert txid_of(conn) == p.txid - 1 and conn.execute(sql).fetchall() == p.rows(sql, p.txid - 1)
        assert rep.poll() is True
        assert conn.execute(sql).fetchall() == p.rows(sql)
