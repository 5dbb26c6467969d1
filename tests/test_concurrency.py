"""Concurrency: many readers, threads and connections on one replica while the
poller publishes; pinned snapshots and the lock state machine (scenarios 1, 6,
7, 8 (long read transaction), 24, 26).

Our design has no pending/main index: a read transaction pins one immutable
Snapshot at SHARED and drops it at NONE. The plan's index races become
"does a pinned snapshot stay exactly itself while the poller publishes".
See tests/TEST_PLAN.md for the scenario -> test map and what each proves.
"""

from __future__ import annotations

import random
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import apsw
import pytest
from replica_file import ReplicaFile
from faults import (
    LatencyStorage,
)
from longrun import LongRun
from replication import ReplicatedPrimary, wait_until
from scenario_support import blob_table, indexed_table, txid_of
from synthetic import (
    STRESS_SECONDS,
    DirTarget,
    RawPrimary,
    SyntheticPrimary,
    in_txn,
    make_target,
    open_replica,
)
from wrappers import WrappedStorage

import lsvfs
from lsvfs.storage import open_storage
from lsvfs.vfs import register

FORGET_AFTER = 5000
"""TXIDs of truth a long run keeps: a reader this far behind the writer fails (it lags)."""


def replica_file(rep: Any) -> ReplicaFile:
    """A VFS main-db file on `rep` (it takes one reference; xClose gives it back)."""
    return ReplicaFile(register(), rep.url)


def all_pages(f: ReplicaFile) -> bytes:
    snap = f.snapshot()
    return b"".join(f.xRead(snap.page_size, off) for off in range(0, f.xFileSize(), snap.page_size))


# ---- 1: concurrent index access ----------------------------------------------------------

@pytest.mark.stress
def test_s01_hundred_threads_read_while_poller_publishes(tmp_path: Path, long_run: LongRun) -> None:
    """Scenario 1: 100 reader threads against one shared Replica polled every 10 ms
    while a writer rewrites random pages of a 10,000-page database.

    Go's race detector does not apply; our equivalent is that every page read,
    under whatever snapshot the reader grabbed, is exactly the page as of that
    snapshot's TXID (never missing, never from another TXID), with no exception.
    The C page table's thread safety is also run under ASan (scenario 32).
    """
    prim = RawPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    prim.write(range(1, 10_001))
    stop = threading.Event()
    errors: list[str] = []
    reads = [0] * 100
    seen: set[int] = set()

    def writer() -> None:
        rnd = random.Random(7)
        while not stop.is_set():
            t = prim.write(rnd.sample(range(1, 10_001), 20))
            if t % 1000 == 0:
                prim.forget(t - FORGET_AFTER)  # the truth a long run keeps stays bounded
            time.sleep(0.004)

    def reader(i: int, rep: Any) -> None:
        rnd = random.Random(i)
        try:
            while not stop.is_set():
                snap = rep.current()
                pgno = rnd.randrange(1, snap.commit + 1)
                page = rep.read_page(snap, pgno, rnd.choice((1, 1, 4, 16)))
                want = prim.expected(pgno, snap.txid)
                if page != want:
                    errors.append(f"page {pgno} at TXID {snap.txid}: wrong bytes")
                reads[i] += 1
                seen.add(snap.txid)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(repr(exc))

    with open_replica(prim.url, poll_interval=0.01, cache_size="512KiB") as rep:
        threads = [threading.Thread(target=reader, args=(i, rep)) for i in range(100)]
        threads.append(threading.Thread(target=writer))
        for t in threads:
            t.start()
        time.sleep(STRESS_SECONDS)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads)
        final = prim.txid
        deadline = time.monotonic() + 10
        while rep.current().txid < final and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rep.current().txid == final
        assert rep.poll_errors == 0
    long_run.count(commits=prim.txid, reads_checked=sum(reads))
    assert not errors, errors[:5]
    assert all(n > 0 for n in reads), "every reader made progress"
    assert len(seen) >= 3, "readers saw the replica advance"


# ---- 6: pinned snapshots vs the poller (the plan's pending-index races) ------------------

def test_s06_pinned_snapshot_survives_polls_that_grow_and_shrink_the_db(tmp_path: Path) -> None:
    """Scenario 6: a file locked SHARED keeps its snapshot, size and every page
    byte for byte while polls publish a bigger and then a VACUUMed, smaller
    database (pages past the new end included); the next SHARED lock sees the
    newest state exactly."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    blob_table(p)
    with open_replica(p.url, poll_interval=0, cache_size="16KiB") as rep:
        f = replica_file(rep)
        try:
            f.xLock(apsw.SQLITE_LOCK_SHARED)
            pinned, size0, pages0 = f.pinned, f.xFileSize(), all_pages(f)
            p.commit("INSERT INTO t(v) SELECT v FROM t")
            assert rep.poll()
            assert f.pinned is pinned and f.xFileSize() == size0 and all_pages(f) == pages0
            p.commit("DELETE FROM t WHERE id > 20")
            p.commit("VACUUM", transaction=False)
            assert rep.poll()
            assert rep.current().commit < size0 // 1024
            assert f.pinned is pinned and f.xFileSize() == size0 and all_pages(f) == pages0
            f.xLock(apsw.SQLITE_LOCK_SHARED)  # SHARED again: no re-pin
            assert f.pinned is pinned
            f.xUnlock(apsw.SQLITE_LOCK_NONE)
            f.xLock(apsw.SQLITE_LOCK_SHARED)
            now = all_pages(f)
            assert f.pinned.txid == p.txid and len(now) == len(p.image())
            assert now[1024:] == p.image()[1024:]
        finally:
            f.xUnlock(apsw.SQLITE_LOCK_NONE)
            f.xClose()


def test_s06_connections_pinned_at_different_txids_at_once(tmp_path: Path) -> None:
    """Scenario 6: three connections, each inside a read transaction begun at a
    different TXID, read side by side; each sees exactly its own state."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    blob_table(p, rows=50)
    sql = "SELECT count(*), sum(length(v)), max(id) FROM t"
    with closing(lsvfs.connect(p.url, poll_interval=0)) as holder:
        rep = lsvfs.open_replicas()[p.url]
        conns = []
        for i in range(3):
            c = lsvfs.connect(p.url)
            c.execute("BEGIN")
            c.execute("SELECT 1 FROM t LIMIT 1").fetchall()  # the first read pins the snapshot
            assert txid_of(c) == p.txid
            conns.append((c, p.txid))
            p.commit("INSERT INTO t(v) SELECT randomblob(300) FROM t LIMIT ?", (10 * (i + 1),))
            rep.poll()
        for _ in range(2):
            for c, txid in conns:
                assert txid_of(c) == txid
                assert c.execute(sql).fetchall() == p.rows(sql, txid)
        for c, _ in conns:
            c.execute("COMMIT")
            assert txid_of(c) == p.txid
            c.close()
        assert txid_of(holder) == p.txid


@pytest.mark.stress
def test_s06_transactions_never_straddle_a_poll(tmp_path: Path, long_run: LongRun) -> None:
    """Scenario 6 under load: 16 threads run read transactions (two reads with a
    pause between) while a writer commits and the poller publishes every 5 ms;
    both reads of a transaction always see one TXID and equal that TXID's rows
    (recorded as each commit is made, before its file is published: the primary
    keeps no images, so a long run's memory stays bounded)."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024, keep_images=False)
    blob_table(p, rows=100)
    sql = "SELECT count(*), sum(length(v)), max(id) FROM t"
    stop = threading.Event()
    errors: list[str] = []
    seen: set[int] = set()
    want: dict[int, list[Any]] = {p.txid: p.rows(sql)}
    checked = [0]

    def commit(q: str, params: tuple[Any, ...]) -> None:
        t = p.commit(q, params, publish=False)
        want[t] = p.rows(sql)
        want.pop(t - FORGET_AFTER, None)
        p.write_l0(t)
        if t % 1000 == 0:
            p.forget(t - 1)  # the next file is encoded from the next commit's changes alone

    def reader(i: int) -> None:
        rnd = random.Random(i)
        try:
            with closing(lsvfs.connect(p.url)) as conn:
                while not stop.is_set():
                    conn.execute("BEGIN")
                    a = conn.execute(sql).fetchall()
                    t1 = txid_of(conn)
                    time.sleep(rnd.random() * 0.01)
                    t2, b = txid_of(conn), conn.execute(sql).fetchall()
                    conn.execute("COMMIT")
                    if t1 != t2 or a != b or a != want.get(t1):
                        errors.append(f"TXIDs {t1:x}/{t2:x}: {a} vs {b}, the primary's {want.get(t1)}")
                    seen.add(t1)
                    checked[0] += 1
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(repr(exc))

    with closing(lsvfs.connect(p.url, poll_interval=0.005, cache_size="64KiB")):
        threads = [threading.Thread(target=reader, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + STRESS_SECONDS
        n = 0
        while time.monotonic() < deadline:
            n += 1
            commit("INSERT INTO t(v) VALUES (randomblob(?))", (100 + n % 500,))
            if n % 5 == 0:
                commit("DELETE FROM t WHERE id % 7 = ?", (n % 7,))
            time.sleep(0.003)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    long_run.count(commits=p.txid, reads_checked=checked[0])
    assert not errors, errors[:5]
    assert len(seen) > 3


# ---- 7: lock state machine ---------------------------------------------------------------

def test_s07_lock_state_machine(tmp_path: Path) -> None:
    """Scenario 7: NONE->SHARED pins the newest snapshot, RESERVED and EXCLUSIVE
    are refused (read-only) without disturbing the pin, a SHARED->SHARED call
    keeps it, unlock to SHARED keeps it, unlock to NONE drops it;
    xCheckReservedLock is always False (no writer can exist)."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    blob_table(p, rows=10)
    with open_replica(p.url, poll_interval=0) as rep:
        f = replica_file(rep)
        try:
            assert f.lock == apsw.SQLITE_LOCK_NONE and f.pinned is None
            assert f.xCheckReservedLock() is False
            f.xLock(apsw.SQLITE_LOCK_SHARED)
            first = f.pinned
            assert first is rep.current() and f.lock == apsw.SQLITE_LOCK_SHARED
            for level in (apsw.SQLITE_LOCK_RESERVED, apsw.SQLITE_LOCK_PENDING, apsw.SQLITE_LOCK_EXCLUSIVE):
                with pytest.raises(apsw.ReadOnlyError):
                    f.xLock(level)
                assert f.lock == apsw.SQLITE_LOCK_SHARED and f.pinned is first
            assert f.xCheckReservedLock() is False
            p.commit("INSERT INTO t(v) VALUES (1)")
            assert rep.poll()
            f.xLock(apsw.SQLITE_LOCK_SHARED)
            f.xUnlock(apsw.SQLITE_LOCK_SHARED)
            assert f.pinned is first and f.snapshot() is first
            f.xUnlock(apsw.SQLITE_LOCK_NONE)
            assert f.pinned is None and f.snapshot() is rep.current()
            f.xLock(apsw.SQLITE_LOCK_SHARED)
            assert f.pinned is rep.current() and f.pinned.txid == p.txid
        finally:
            f.xUnlock(apsw.SQLITE_LOCK_NONE)
            f.xClose()


def test_s07_sql_write_locks_refused_and_connection_recovers(tmp_path: Path) -> None:
    """Scenario 7 through SQL: BEGIN IMMEDIATE/EXCLUSIVE become read transactions
    (SQLite never asks a read-only file for RESERVED) in which writes fail with
    SQLITE_READONLY; a pin to a TXID the replica cannot reach fails at the
    PRAGMA and leaves the connection on what it had; the same connection then
    works. With locking_mode=EXCLUSIVE SQLite keeps SHARED, so the connection
    stays on its TXID until it returns to NORMAL (documented behaviour)."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    blob_table(p, rows=10)
    with closing(lsvfs.connect(p.url, poll_interval=0)) as conn:
        rep = lsvfs.open_replicas()[p.url]
        for sql in ("BEGIN IMMEDIATE", "BEGIN EXCLUSIVE"):
            conn.execute(sql)  # SQLite downgrades both to a read transaction on a read-only database
            with pytest.raises(apsw.ReadOnlyError):
                conn.execute("INSERT INTO t(v) VALUES (0)")
            conn.execute("ROLLBACK")
        assert in_txn(conn, "SELECT count(*) FROM t")[1] == [[(10,)]]
        with pytest.raises(apsw.SQLError, match="7777|newer"):
            conn.execute("PRAGMA litestream_txid = 7777")
        assert txid_of(conn) == p.txid
        assert conn.execute("SELECT count(*) FROM t").fetchall() == [(10,)]
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        assert conn.execute("SELECT count(*) FROM t").fetchall() == [(10,)]
        held = txid_of(conn)
        p.commit("INSERT INTO t(v) VALUES (1)")
        assert rep.poll()
        assert txid_of(conn) == held and conn.execute("SELECT count(*) FROM t").fetchall() == [(10,)]
        conn.execute("PRAGMA locking_mode=NORMAL")
        conn.execute("SELECT 1 FROM t LIMIT 1").fetchall()  # the next read lets go of SHARED
        assert conn.execute("SELECT count(*) FROM t").fetchall() == [(11,)]


# ---- 8: long-running transactions --------------------------------------------------------

@pytest.mark.stress
def test_s08_long_read_transaction_while_primary_commits(file_primary: ReplicatedPrimary,
                                                         long_run: LongRun) -> None:
    """Scenario 8: with real Litestream, a read transaction stays open
    (LSVFS_STRESS_SECONDS) while the primary commits continuously and another
    connection follows it; every re-read inside the long transaction (through
    a page cache too small to hold the table, so pages come from storage
    again) returns the same TXID and the same rows."""
    p = file_primary
    p.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    p.executemany("INSERT INTO t(v) VALUES (randomblob(400))", [()] * 300)
    start = p.wait_replicated()
    sql = "SELECT count(*), sum(length(v)), hex(max(v)) FROM t"
    with closing(lsvfs.connect(p.replica_url, poll_interval=0.05, cache_size="32KiB")) as long, \
            closing(lsvfs.connect(p.replica_url)) as follower:
        long.execute("PRAGMA cache_size=2")  # SQLite's own cache too: re-reads go to the VFS
        long.execute("BEGIN")
        first = long.execute(sql).fetchall()
        assert txid_of(long) == start
        deadline = time.monotonic() + max(STRESS_SECONDS, 1.0)
        n = rereads = 0
        while time.monotonic() < deadline:
            n += 1
            p.execute("INSERT INTO t(v) VALUES (randomblob(400))")
            p.execute("UPDATE t SET v = randomblob(400) WHERE id = ?", (n % 300 + 1,))
            if n % 10 == 0:
                assert txid_of(long) == start
                assert long.execute(sql).fetchall() == first
                rereads += 1
            time.sleep(0.01)
        newest = p.wait_replicated(exact=False)
        wait_until(lambda: txid_of(follower) >= newest, 15, what="follower catches up")
        assert txid_of(long) == start and long.execute(sql).fetchall() == first
        long.execute("COMMIT")
        assert txid_of(long) >= newest
        assert rereads >= 3
    long_run.count(commits=2 * n, reads_checked=rereads)


# ---- 24: cache miss storm ----------------------------------------------------------------

@pytest.mark.parametrize("storage", ["file", "s3"])
def test_s24_cache_miss_storm_is_single_flight(tmp_path: Path, request: pytest.FixtureRequest,
                                               storage: str) -> None:
    """Scenario 24: 32 threads released together on one cold page (storage
    answers after 50 ms) cause exactly one storage read and one cache miss;
    then 16 connections cold-scanning one table at once cost about as many
    storage reads as one scan alone."""
    p = SyntheticPrimary(make_target(storage, tmp_path, request), page_size=1024)
    indexed_table(p, 400)
    slow = LatencyStorage(open_storage(p.url), delay=0.05, ops=("read",))
    # No background prefetch: a prefetch read still in flight at the clear()
    # would fill the page behind it, and the storm would then never miss.
    with open_replica(p.url, slow, poll_interval=0, cache_size="16MiB", prefetch="off") as rep:
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


# ---- 26: connection scaling --------------------------------------------------------------

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
