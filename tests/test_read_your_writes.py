"""Read your writes: a bookmark (the TXID a primary's commit was replicated in)
sets a floor under a replica connection, which then waits for it.

A real `litestream replicate` with its control socket hands out the bookmarks
(lsvfs.bookmark); readers poll every 10 s, so only the floor's poll-now makes
a commit visible within wait_timeout. Directory and S3 replicas, both drivers.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import apsw
import pytest
from drivers import DRIVERS
from replication import MakePrimary, ReplicatedPrimary, wait_until
from test_lineage import _commit_rows, _second_primary, _wipe

import lsvfs
from lsvfs.errors import WaitTimeout
from lsvfs.replica.poller import ASKED_SPACING

SLOW_POLL = 10.0
"""The readers' poll_interval: far longer than any wait in these tests."""
BUSY = {"apsw": apsw.BusyError, "sqlite3": sqlite3.OperationalError}


def _connect(driver: str, url: str, **options: Any) -> Any:
    """A replica connection; sqlite3's own busy timeout is kept short (its retries
    come on top of wait_timeout, see docs/reference.md)."""
    if driver == "apsw":
        return lsvfs.connect(url, **options)
    return sqlite3.connect(lsvfs.uri(url, **options), uri=True, timeout=0.2, check_same_thread=False)


def _primary(make: MakePrimary, storage: str = "file") -> ReplicatedPrimary:
    p = make(storage, control_socket=True)
    p.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    p.wait_replicated()
    return p


def _bookmark(p: ReplicatedPrimary) -> str:
    return lsvfs.bookmark(p.db_path, socket=p.socket_path)


def _lists(url: str) -> int:
    return int(lsvfs.open_replicas()[url].stats()["storage"]["list"]["requests"])


def _floor(conn: Any, txid: str) -> str:
    return str(conn.execute(f"PRAGMA litestream_min_txid = '{txid}'").fetchall()[0][0])


@pytest.mark.parametrize("storage", ["file", "s3"])
def test_every_commit_is_read_at_once_through_its_bookmark(replicated_primary: MakePrimary, storage: str) -> None:
    """200 rounds of commit, bookmark, read with the floor set, alternating the
    drivers: the row is there every time, each long before the next poll.
    Without the floor's poll-now the read would wait out SLOW_POLL and fail at
    wait_timeout; without the floor it would miss the row."""
    p = _primary(replicated_primary, storage)
    conns = {d: _connect(d, p.replica_url, poll_interval=SLOW_POLL, wait_timeout=SLOW_POLL / 2) for d in DRIVERS}
    slowest = 0.0
    try:
        for i in range(1, 201):
            p.execute("INSERT INTO t(id, v) VALUES (?, ?)", (i, f"row {i}"))
            mark = _bookmark(p)
            conn = conns[DRIVERS[i % 2]]
            start = time.monotonic()
            assert _floor(conn, mark) == mark
            got = conn.execute("SELECT max(id), litestream_txid() FROM t").fetchall()[0]
            slowest = max(slowest, time.monotonic() - start)
            assert got[0] == i
            assert int(got[1], 16) >= int(mark, 16)
        assert slowest < SLOW_POLL / 2, slowest
    finally:
        for c in conns.values():
            c.close()


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_floor_never_reached_fails_with_the_busy_code_and_clearing_it_reads_again(
        file_primary: ReplicatedPrimary, driver: str) -> None:
    p = file_primary
    p.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
    newest = p.wait_replicated()
    with closing(_connect(driver, p.replica_url, poll_interval=SLOW_POLL, wait_timeout=0.3)) as conn:
        far = newest + 1000
        with pytest.raises(BUSY[driver]) as exc:
            _floor(conn, f"{far:016x}")
        message = str(exc.value)
        assert f"did not reach TXID {far:016x} within 0.3s" in message and f"{newest:016x}" in message
        if driver == "sqlite3":
            assert exc.value.sqlite_errorcode == sqlite3.SQLITE_BUSY  # type: ignore[attr-defined]
        # The floor stays: a read fails the same way, and says why.
        assert conn.execute("PRAGMA litestream_min_txid").fetchall()[0][0] == f"{far:016x}"
        with pytest.raises(BUSY[driver]):
            conn.execute("SELECT count(*) FROM t").fetchall()
        assert f"did not reach TXID {far:016x}" in conn.execute("PRAGMA litestream_error").fetchall()[0][0]
        _floor(conn, "0")
        assert conn.execute("SELECT count(*) FROM t").fetchall() == [(0,)]
        assert conn.execute("PRAGMA litestream_min_txid").fetchall()[0][0] == "0" * 16


def test_a_busy_handler_retrying_does_not_wait_again(file_primary: ReplicatedPrimary) -> None:
    """sqlite3's busy timeout retries the lock: each retry looks again and asks
    for a poll, but only the first waits out wait_timeout (one wait counted)."""
    p = file_primary
    newest = p.wait_replicated()
    with closing(sqlite3.connect(lsvfs.uri(p.replica_url, poll_interval=SLOW_POLL, wait_timeout=0.2), uri=True,
                                 timeout=1.0)) as conn:
        rep = lsvfs.open_replicas()[p.replica_url]
        with pytest.raises(sqlite3.OperationalError):
            _floor(conn, f"{newest + 50:016x}")
        before = rep.stats()["waits"]
        with pytest.raises(sqlite3.OperationalError) as exc:
            conn.execute("SELECT 1 FROM sqlite_master").fetchall()
        assert exc.value.sqlite_errorcode == 5 | (3 << 8)  # type: ignore[attr-defined]  # SQLITE_BUSY_TIMEOUT
        after = rep.stats()["waits"]
        assert after["waits"] == before["waits"] + 1 and after["timeouts"] == before["timeouts"] + 1
        assert after["waiting"] == 0


def test_a_hundred_waiters_share_their_polls(file_primary: ReplicatedPrimary) -> None:
    """A hundred connections setting one floor make one poll's LISTs, not a
    hundred; waiting on a floor never reached, they poll at most once per
    ASKED_SPACING between them."""
    p = file_primary
    p.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
    p.wait_replicated()
    conns = [lsvfs.connect(p.replica_url, poll_interval=SLOW_POLL, wait_timeout=1.0) for _ in range(100)]
    try:
        p.execute("INSERT INTO t VALUES (1)")
        mark = f"{p.wait_replicated():016x}"

        def run_all(fn: Callable[[Any], Any]) -> list[Any]:
            out: list[Any] = [None] * len(conns)
            go = threading.Barrier(len(conns))

            def one(i: int) -> None:
                go.wait()
                try:
                    out[i] = fn(conns[i])
                except apsw.Error as exc:
                    out[i] = exc
            threads = [threading.Thread(target=one, args=(i,)) for i in range(len(conns))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            return out

        lists = _lists(p.replica_url)
        got = run_all(lambda c: (_floor(c, mark), c.execute("SELECT count(*) FROM t").fetchall()[0][0]))
        assert got == [(mark, 1)] * len(conns)
        assert _lists(p.replica_url) - lists <= 3

        lists = _lists(p.replica_url)
        start = time.monotonic()
        far = f"{int(mark, 16) + 1000:016x}"
        got = run_all(lambda c: _floor(c, far))
        waited = time.monotonic() - start
        assert all(isinstance(g, apsw.BusyError) for g in got), got
        assert _lists(p.replica_url) - lists <= waited / ASKED_SPACING + 3
    finally:
        for c in conns:
            c.close()


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_pin_wins_over_a_floor(file_primary: ReplicatedPrimary, driver: str) -> None:
    p = file_primary
    p.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
    p.execute("INSERT INTO t DEFAULT VALUES")
    first = p.wait_replicated()
    for _ in range(2):
        p.execute("INSERT INTO t DEFAULT VALUES")
        newest = p.wait_replicated()
    with closing(_connect(driver, p.replica_url, poll_interval=SLOW_POLL)) as conn:
        conn.execute(f"PRAGMA litestream_txid = '{first:016x}'").fetchall()
        with pytest.raises((apsw.SQLError, sqlite3.OperationalError), match="can never reach"):
            _floor(conn, f"{newest:016x}")
        assert _floor(conn, f"{first:016x}") == f"{first:016x}"
        assert conn.execute("SELECT count(*) FROM t").fetchall() == [(1,)]
        # A floor set first, then a pin below it: the pin is read.
        conn.execute("PRAGMA litestream_txid = LATEST").fetchall()
        _floor(conn, f"{newest:016x}")
        conn.execute(f"PRAGMA litestream_txid = '{first:016x}'").fetchall()
        assert conn.execute("SELECT count(*) FROM t").fetchall() == [(1,)]
        conn.execute("PRAGMA litestream_txid = LATEST").fetchall()
        assert conn.execute("SELECT count(*) FROM t").fetchall() == [(3,)]


@pytest.mark.parametrize("storage", ["file", "s3"])
def test_a_lineage_change_ends_a_wait_with_an_error(replicated_primary: MakePrimary, storage: str) -> None:
    """A reader waits for a TXID the first lineage never reaches; the replica is
    wiped and another primary writes past that TXID. The wait ends with an
    error naming the lineage change, never with either lineage's rows; with the
    floor cleared the connection reads the new lineage."""
    a = replicated_primary(storage)
    a.execute("CREATE TABLE who(id INTEGER PRIMARY KEY, name TEXT)")
    held = _commit_rows(a, "a", 3)
    floor = held + 2
    conn = lsvfs.connect(a.replica_url, poll_interval=0.1, wait_timeout=60)
    try:
        assert conn.execute("SELECT count(*) FROM who").fetchall() == [(3,)]
        outcome: list[Any] = []

        def wait() -> None:
            try:
                outcome.append(_floor(conn, f"{floor:016x}"))
                outcome.append(conn.execute("SELECT name, count(*) FROM who GROUP BY name").fetchall())
            except apsw.Error as exc:
                outcome.append(exc)
        waiter = threading.Thread(target=wait)
        waiter.start()
        wait_until(lambda: lsvfs.open_replicas()[a.replica_url].stats()["waits"]["waiting"] == 1, 10,
                   what="the reader to wait")
        _wipe(a)
        b = _second_primary(replicated_primary, a)
        b.execute("CREATE TABLE who(id INTEGER PRIMARY KEY, name TEXT)")
        _commit_rows(b, "b", floor + 2)
        waiter.join(60)
        assert not waiter.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], apsw.Error), outcome
        assert "replaced by another lineage" in str(outcome[0])
        _floor(conn, "0")
        wait_until(lambda: conn.execute("SELECT name, count(*) FROM who GROUP BY name").fetchall()
                   == [("b", floor + 2)], 20, what="the new lineage's rows")
    finally:
        conn.close()


def test_wait_for_returns_the_txid_reached_or_times_out(file_primary: ReplicatedPrimary) -> None:
    p = file_primary
    p.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
    old = p.wait_replicated()
    with closing(lsvfs.connect(p.replica_url, poll_interval=SLOW_POLL)):  # the replica, polling slowly
        p.execute("INSERT INTO t VALUES (1)")
        mark = p.wait_replicated()
        assert int(lsvfs.wait_for(p.replica_url, f"{mark:016x}"), 16) >= mark > old
        with pytest.raises(WaitTimeout, match=f"did not reach TXID {mark + 99:016x}"):
            lsvfs.wait_for(p.replica_url, mark + 99, timeout=0.2)


def test_a_follower_asks_the_leader_to_poll(replicated_primary: MakePrimary, tmp_path: Path) -> None:
    """With shared_dir the leader polls storage: a dedicated leader (`lsvfs
    mirror`) polling every 10 s, a reader in this process following it; a
    bookmark is read within a wait_timeout far shorter than the leader's
    interval, so the reader's ring made the leader poll."""
    import subprocess
    import sys
    p = _primary(replicated_primary)
    shared = tmp_path / "shared"
    leader = subprocess.Popen([sys.executable, "-m", "lsvfs", "mirror", p.replica_url, "--shared-dir", str(shared),
                               "--poll-interval", str(SLOW_POLL)])
    try:
        wait_until(lambda: (shared / "status.json").exists(), 30, what="the leader's first fill")
        with closing(lsvfs.connect(p.replica_url, poll_interval=SLOW_POLL, wait_timeout=SLOW_POLL / 4,
                                   shared_dir=str(shared))) as conn:
            assert lsvfs.open_replicas()[p.replica_url].stats()["shared"]["leader"] is False
            for i in range(1, 6):
                p.execute("INSERT INTO t(id) VALUES (?)", (i,))
                _floor(conn, _bookmark(p))
                assert conn.execute("SELECT max(id) FROM t").fetchall() == [(i,)]
    finally:
        leader.terminate()
        leader.wait(10)


def test_a_replica_without_a_polling_thread_polls_in_the_waiting_reader(file_primary: ReplicatedPrimary) -> None:
    """poll_interval=0: nothing polls in the background, so the reader waiting
    for its floor polls itself (and a floor never reached still ends)."""
    p = file_primary
    p.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
    p.wait_replicated()
    with closing(lsvfs.connect(p.replica_url, poll_interval=0, wait_timeout=0.3)) as conn:
        rep = lsvfs.open_replicas()[p.replica_url]
        assert rep.poller.thread is None
        for i in range(1, 4):
            p.execute("INSERT INTO t VALUES (?)", (i,))
            mark = f"{p.wait_replicated():016x}"
            assert conn.execute("SELECT count(*) FROM t").fetchall() == [(i - 1,)]  # nobody polled
            _floor(conn, mark)
            assert conn.execute("SELECT count(*) FROM t").fetchall() == [(i,)]
        polls = rep.stats()["polls"]
        with pytest.raises(apsw.BusyError):
            _floor(conn, f"{int(mark, 16) + 9:016x}")
        assert 1 <= rep.stats()["polls"] - polls <= 0.3 / ASKED_SPACING + 2
