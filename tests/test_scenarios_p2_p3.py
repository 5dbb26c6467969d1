"""Test plan, priorities 2 and 3 (isolation & locking; polling & synchronization): scenarios 6-13.

Our design has no pending/main index: a read transaction pins one immutable
Snapshot at SHARED and drops it at NONE. The plan's index races become
"does a pinned snapshot stay exactly itself while the poller publishes".
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
from faults import AllocFailureStorage, BlockingStorage, FaultyStorage
from replication import ReplicatedPrimary, wait_until
from synthetic import STRESS_SECONDS, DirTarget, SyntheticPrimary, in_txn, make_target, open_replica
from wrappers import WrappedStorage

import lsvfs
from lsvfs.storage import open_storage
from lsvfs.vfs import ReplicaFile, register


def txid_of(conn: apsw.Connection) -> int:
    return int(conn.execute("PRAGMA litestream_txid").fetchall()[0][0], 16)


def replica_file(rep: Any) -> ReplicaFile:
    """A VFS main-db file on `rep` (it takes one reference; xClose gives it back)."""
    return ReplicaFile(register(), rep.url)


def all_pages(f: ReplicaFile) -> bytes:
    snap = f.snapshot()
    return b"".join(f.xRead(snap.page_size, off) for off in range(0, f.xFileSize(), snap.page_size))


def table(p: SyntheticPrimary, rows: int = 200) -> None:
    rnd = random.Random(3)
    p.commit("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    p.commit("INSERT INTO t(v) VALUES (?)", many=[(rnd.randbytes(200),) for _ in range(rows)])


# ---- 6: pinned snapshots vs the poller (the plan's pending-index races) -------------------

def test_s06_pinned_snapshot_survives_polls_that_grow_and_shrink_the_db(tmp_path: Path) -> None:
    """Scenario 6: a file locked SHARED keeps its snapshot, size and every page
    byte for byte while polls publish a bigger and then a VACUUMed, smaller
    database (pages past the new end included); the next SHARED lock sees the
    newest state exactly."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    table(p)
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
    table(p, rows=50)
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
def test_s06_transactions_never_straddle_a_poll(tmp_path: Path) -> None:
    """Scenario 6 under load: 16 threads run read transactions (two reads with a
    pause between) while a writer commits and the poller publishes every 5 ms;
    both reads of a transaction always see one TXID and equal that TXID's rows."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    table(p, rows=100)
    sql = "SELECT count(*), sum(length(v)), max(id) FROM t"
    stop = threading.Event()
    errors: list[str] = []
    seen: set[int] = set()

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
                    if t1 != t2 or a != b or a != p.rows(sql, t1):
                        errors.append(f"TXIDs {t1:x}/{t2:x}: {a} vs {b}")
                    seen.add(t1)
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
            p.commit("INSERT INTO t(v) VALUES (randomblob(?))", (100 + n % 500,))
            if n % 5 == 0:
                p.commit("DELETE FROM t WHERE id % 7 = ?", (n % 7,))
            time.sleep(0.003)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors, errors[:5]
    assert len(seen) > 3


# ---- 7: lock state machine ---------------------------------------------------------------

def test_s07_lock_state_machine(tmp_path: Path) -> None:
    """Scenario 7: NONE->SHARED pins the newest snapshot, RESERVED and EXCLUSIVE
    are refused (read-only) without disturbing the pin, a SHARED->SHARED call
    keeps it, unlock to SHARED keeps it, unlock to NONE drops it;
    xCheckReservedLock is always False (no writer can exist)."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    table(p, rows=10)
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
    table(p, rows=10)
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



# ---- 8: long-running transactions ----------------------------------------------------

@pytest.mark.stress
def test_s08_long_read_transaction_while_primary_commits(file_primary: ReplicatedPrimary) -> None:
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


@pytest.mark.parametrize("storage", ["file", "s3"])
def test_s08_retention_deletes_files_of_a_pinned_txid(tmp_path: Path, request: pytest.FixtureRequest,
                                                      storage: str) -> None:
    """Scenario 8 (long transaction vs L0 retention): the L0 files a pinned
    TXID was built from are deleted while the transaction is open. If a
    compaction ends exactly at that TXID the same state is rebuilt from it and
    the transaction reads on, unchanged; otherwise (S3, TXID inside a
    compaction) the read fails with an I/O error naming the TXID, and the
    connection's next transaction reads the newest state."""
    p = SyntheticPrimary(make_target(storage, tmp_path, request), page_size=1024)
    table(p, rows=60)
    sql = "SELECT count(*), sum(length(v)), hex(max(v)) FROM t"
    counting = WrappedStorage(open_storage(p.url))
    with closing(lsvfs.connect(p.url, storage=counting, poll_interval=0, cache_size="8KiB")) as conn:
        rep = lsvfs.open_replicas()[p.url]
        conn.execute("PRAGMA cache_size=2")
        for restorable in (True, False):
            conn.execute("BEGIN")
            got = conn.execute(sql).fetchall()
            pinned = txid_of(conn)
            want = p.rows(sql, pinned)
            assert got == want
            lo = rep.current().txid + 1
            for i in range(3):
                p.commit("UPDATE t SET v = randomblob(200) WHERE id % 5 = ?", (i,))
            if restorable:
                p.compact(1, 1, pinned)  # ends at the pinned TXID
                p.compact(1, lo, p.txid)
                for t in range(1, p.txid + 1):
                    p.delete(0, t, t)
            else:
                p.delete_all()
                p.compact(1, 1, p.txid)  # all that is left; the pinned TXID is inside it
            for _ in range(12):  # with L0 empty, the levels above are listed every 10th idle poll
                if rep.poll():
                    break
            assert rep.current().txid == p.txid
            lists = counting.calls["list"]
            if restorable or storage == "file":
                # S3 rebuilds the TXID from the compaction; a directory still serves the open descriptors
                assert conn.execute(sql).fetchall() == want and txid_of(conn) == pinned
                assert conn.execute(sql).fetchall() == want
            else:
                with pytest.raises(apsw.IOError):
                    conn.execute(sql).fetchall()
                assert f"{pinned:016x}" in conn.execute("PRAGMA litestream_error").fetchall()[0][0]
            assert counting.calls["list"] - lists <= 10, "one re-plan (10 levels listed) per pinned TXID, not per page"
            if not conn.getautocommit():
                conn.execute("COMMIT")
            assert in_txn(conn, sql) == (p.txid, [p.rows(sql)])
            p.snapshot()


# ---- 9: overlapping commits ------------------------------------------------------------

def test_s09_two_writers_commit_storm(file_primary: ReplicatedPrimary) -> None:
    """Scenario 9: two writer threads run rapid overlapping BEGIN IMMEDIATE /
    COMMIT transfers on the primary (real Litestream); readers on the replica
    always see the ledger balanced, and the replica ends equal to the primary."""
    p = file_primary
    p.execute("CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER NOT NULL)")
    p.executemany("INSERT INTO acct(bal) VALUES (?)", [(100,)] * 20)
    p.wait_replicated()
    stop = threading.Event()
    errors: list[str] = []
    commits = [0, 0]

    def writer(w: int) -> None:
        conn = apsw.Connection(str(p.db_path))
        conn.set_busy_timeout(5000)
        rnd = random.Random(w)
        try:
            while not stop.is_set():
                a, b = rnd.sample(range(1, 21), 2)
                amount = rnd.randrange(1, 10)
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("UPDATE acct SET bal = bal - ? WHERE id = ?", (amount, a))
                conn.execute("UPDATE acct SET bal = bal + ? WHERE id = ?", (amount, b))
                conn.execute("COMMIT")
                commits[w] += 1
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(f"writer {w}: {exc!r}")
        finally:
            conn.close()

    seen: set[int] = set()

    def reader() -> None:
        try:
            with closing(lsvfs.connect(p.replica_url)) as conn:
                while not stop.is_set():
                    txid, [[(total, n)]] = in_txn(conn, "SELECT sum(bal), count(*) FROM acct")
                    seen.add(txid)
                    if (total, n) != (2000, 20):
                        errors.append(f"TXID {txid:x}: sum {total} over {n} accounts")
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(f"reader: {exc!r}")

    with closing(lsvfs.connect(p.replica_url, poll_interval=0.025)) as conn:
        threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
        threads += [threading.Thread(target=reader) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(max(STRESS_SECONDS, 1.5))
        stop.set()
        for t in threads:
            t.join(timeout=30)
        final = p.wait_replicated()
        wait_until(lambda: txid_of(conn) >= final, 15, what="replica catches up")
        assert conn.execute("SELECT * FROM acct ORDER BY id").fetchall() == p.execute(
            "SELECT * FROM acct ORDER BY id")
    assert not errors, errors[:5]
    assert min(commits) > 10 and len(seen) > 2


# ---- 10: the poller never dies ---------------------------------------------------------

def test_s10_poller_survives_listing_failures_and_allocation_failure(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Scenario 10: every listing fails for a while, then building the next
    snapshot's index raises MemoryError, then a custom client raises a
    non-lsvfs exception; the poller thread stays alive through all of it,
    PRAGMA litestream_lag shows the staleness while it lasts, and the replica
    catches up by itself once storage behaves."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    table(p, rows=20)

    class Odd(WrappedStorage):
        raise_once = False

        def list_files(self, level: int, min_txid: int = 0) -> list[Any]:
            if self.raise_once:
                self.raise_once = False
                raise RuntimeError("a custom client's own bug")
            return super().list_files(level, min_txid)

    failing = FaultyStorage(open_storage(p.url), rate=1.0, kinds=("5xx",), ops=("list",))
    failing.enabled = False
    oom = AllocFailureStorage(failing, failures=0)
    odd = Odd(oom)
    with closing(lsvfs.connect(p.url, storage=odd, poll_interval=0.02)) as conn:
        rep = lsvfs.open_replicas()[p.url]
        poller = rep._poller
        assert poller is not None and poller.is_alive()
        with caplog.at_level("CRITICAL", logger="lsvfs"):
            failing.enabled = True
            p.commit("INSERT INTO t(v) VALUES (1)")
            time.sleep(1.5)
            errors = rep.poll_errors
            assert errors >= 10 and poller.is_alive()
            assert int(conn.execute("PRAGMA litestream_lag").fetchall()[0][0]) >= 1
            assert txid_of(conn) == p.txid - 1
            oom.remaining = 2  # the next two index builds fail as if malloc did
            failing.enabled = False
            wait_until(lambda: oom.raised == 2, 10, interval=0.01, what="MemoryError raised during builds")
            odd.raise_once = True
            wait_until(lambda: not odd.raise_once, 10, interval=0.01)
            assert poller.is_alive()
            wait_until(lambda: txid_of(conn) == p.txid, 10, interval=0.01, what="replica catches up")
        assert rep.poll_errors >= errors + 3
        assert int(conn.execute("PRAGMA litestream_lag").fetchall()[0][0]) == 0
        p.commit("INSERT INTO t(v) VALUES (2)")
        wait_until(lambda: txid_of(conn) == p.txid, 10, interval=0.01)
        assert poller.is_alive()
    poller.join(timeout=5)
    assert not poller.is_alive()


# ---- 11: cancellation ----------------------------------------------------------------------

def test_s11_close_does_not_wait_for_a_poll_stuck_in_storage(tmp_path: Path) -> None:
    """Scenario 11: the poller is blocked inside a storage listing when the last
    connection closes. Closing returns promptly (no waiting on the stuck call),
    the storage client is closed once, the poller thread exits as soon as the
    call returns, publishes nothing, and makes no further storage call."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    table(p, rows=5)
    blocking = BlockingStorage(open_storage(p.url), max_block=20)
    conn = lsvfs.connect(p.url, storage=blocking, poll_interval=0.01)
    rep = lsvfs.open_replicas()[p.url]
    poller = rep._poller
    assert poller is not None
    blocking.armed = True
    assert blocking.blocked.wait(5), "poller reached the blocking call"
    p.commit("INSERT INTO t(v) VALUES (1)")
    t0 = time.monotonic()
    conn.close()
    took = time.monotonic() - t0
    assert took < 3.0, f"close waited {took:.1f}s for a stuck poll"
    assert lsvfs.open_replicas() == {}
    assert blocking.calls["close"] == 1
    assert poller.is_alive()  # still inside the storage call
    blocking.gate.set()
    poller.join(timeout=5)
    assert not poller.is_alive()
    assert blocking.calls_after_close <= 1  # the one that was in flight, nothing new
    assert rep.current().txid == p.txid - 1, "nothing published after close"


# ---- 12: rapid updates ------------------------------------------------------------------------

def test_s12_rapid_commits_are_coalesced(tmp_path: Path) -> None:
    """Scenario 12: 200 one-row commits 1 ms apart against a 5 ms poller: the
    replica ends at the final value, what readers see only moves forward, and
    polls coalesce many L0 files into one snapshot (far fewer snapshots than
    commits). A poll after a burst of 50 files applies all 50 at once."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    p.commit("CREATE TABLE c(n INTEGER)")
    p.commit("INSERT INTO c VALUES (0)")
    published: list[int] = []
    with closing(lsvfs.connect(p.url, poll_interval=0.005)) as conn:
        rep = lsvfs.open_replicas()[p.url]
        orig = rep._poll

        def counting() -> bool:
            advanced = orig()
            if advanced:
                published.append(rep.current().txid)
            return advanced

        rep._poll = counting  # type: ignore[method-assign]
        seen: list[int] = []
        for i in range(200):
            p.commit("UPDATE c SET n = ?", (i + 1,))
            if i % 10 == 0:
                seen.append(conn.execute("SELECT n FROM c").fetchall()[0][0])
            time.sleep(0.001)
        wait_until(lambda: conn.execute("SELECT n FROM c").fetchall() == [(200,)], 10, interval=0.01)
        assert seen == sorted(seen)
        assert rep.poll_errors == 0
        jumps = [b - a for a, b in zip([2, *published], published)]
        assert max(jumps) >= 2 and len(published) < 200, f"{len(published)} snapshots for 200 commits"
    with closing(lsvfs.connect(p.url, poll_interval=0)) as conn:
        rep = lsvfs.open_replicas()[p.url]
        start = rep.current().txid
        for i in range(50):
            p.commit("UPDATE c SET n = ?", (1000 + i,))
        assert rep.poll() is True
        assert rep.current().txid == start + 50
        assert conn.execute("SELECT n FROM c").fetchall() == [(1049,)]


# ---- 13: poll interval edges --------------------------------------------------------------------

@pytest.mark.parametrize(("interval", "lo", "hi"), [(0.005, 20, 230), (0.2, 3, 7)])
def test_s13_poll_interval_is_honoured_at_both_extremes(tmp_path: Path, interval: float, lo: int, hi: int) -> None:
    """Scenario 13: over one second a 5 ms poller polls often but does not spin,
    a 200 ms poller polls about five times; each poll costs one L0 listing
    (plus a full scan of the levels every tenth idle poll), whatever the
    number of connections."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    table(p, rows=5)
    counting = WrappedStorage(open_storage(p.url))
    with closing(lsvfs.connect(p.url, storage=counting, poll_interval=interval)), \
            closing(lsvfs.connect(p.url)), closing(lsvfs.connect(p.url)):
        rep = lsvfs.open_replicas()[p.url]
        polls0, lists0 = rep.poll_count, counting.calls["list"]
        time.sleep(1.0)
        polls, lists = rep.poll_count - polls0, counting.calls["list"] - lists0
    assert lo <= polls <= hi, polls
    assert lists <= 2.1 * polls + 10, (polls, lists)


def test_s13_poll_interval_zero_and_bad_values(tmp_path: Path) -> None:
    """Scenario 13: poll_interval=0 starts no poller at all (no listing after
    open); '250ms' and '2s' parse; negative or garbage intervals are refused
    with a ValueError naming the option, before anything is opened."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    table(p, rows=5)
    counting = WrappedStorage(open_storage(p.url))
    with closing(lsvfs.connect(p.url, storage=counting, poll_interval=0)):
        rep = lsvfs.open_replicas()[p.url]
        assert rep._poller is None
        lists = counting.calls["list"]
        time.sleep(0.3)
        assert counting.calls["list"] == lists and rep.poll_count == 0
    for text, secs in (("250ms", 0.25), ("2s", 2.0), (".5", 0.5)):
        with closing(lsvfs.connect(p.url, poll_interval=text)):
            assert lsvfs.open_replicas()[p.url].options.poll_interval == secs
    for bad in ("-1", "-5ms", "soon", "1 fortnight"):
        with pytest.raises(ValueError, match="poll_interval"):
            lsvfs.connect(p.url, poll_interval=bad)
    assert lsvfs.open_replicas() == {}
