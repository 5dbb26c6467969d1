"""The product: SQL against a live Litestream replica through the `litestream` VFS."""

from __future__ import annotations

import gc
from contextlib import closing
import os
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import Any
from urllib.parse import quote

import apsw
import pytest
import ltx_writer
from replica_file import ReplicaFile
from replication import ReplicatedPrimary, wait_until
from scenario_support import FAST, rows, txid_of, unshim, workload
from wrappers import WrappedStorage

import drivers
from drivers import DRIVERS, READ_ONLY, script, sqlite_temp_fds

import lsvfs
from lsvfs import ltx
from lsvfs.options import resolve
from lsvfs.registry import acquire, release
from lsvfs.storage import open_storage
from lsvfs.vfs import register


def vfs_pages(url: str) -> tuple[int, bytes]:
    """(TXID, every page) read through the VFS file under one SHARED lock."""
    f = ReplicaFile(register(), url)
    try:
        f.xLock(apsw.SQLITE_LOCK_SHARED)
        snap = f.pinned
        assert snap is not None
        size = f.xFileSize()
        data = b"".join(f.xRead(snap.page_size, off) for off in range(0, size, snap.page_size))
        f.xUnlock(apsw.SQLITE_LOCK_NONE)
        return snap.txid, data
    finally:
        f.xClose()


# ---- the oracle -------------------------------------------------------------

@pytest.mark.parametrize("storage", ["file", "s3"])
def test_oracle_pages_in_one_transaction_equal_restore_at_that_txid(replicated_primary: Any, tmp_path: Path,
                                                                    storage: str) -> None:
    p = replicated_primary(storage)
    workload(p)
    txid = p.wait_replicated()
    seen_txid, data = vfs_pages(p.replica_url)
    assert seen_txid == txid
    expected = p.litestream_restore(tmp_path / "at.db", txid=txid).read_bytes()
    assert len(data) == len(expected)
    ps = p.page_size
    assert data[18:20] == b"\x01\x01"
    assert unshim(data[:ps], expected) + data[ps:] == expected
    assert ltx_writer.database_checksum(unshim(data[:ps], expected) + data[ps:], ps) == \
        ltx_writer.database_checksum(expected, ps)
    with closing(lsvfs.connect(p.replica_url)) as conn:
        assert rows(conn) == p.execute("SELECT * FROM t ORDER BY id")


def test_oracle_rolling_checksum_equals_post_apply_checksum(tmp_path: Path) -> None:
    """On a replica whose files carry checksums, the pages one snapshot serves
    XOR to exactly the post-apply checksum of its last file."""
    ps = 1024
    conn = apsw.Connection(":memory:")
    conn.execute(f"PRAGMA page_size={ps}; CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    images = []
    for i in range(4):
        with conn:
            conn.executemany("INSERT INTO t(v) VALUES (randomblob(?))", [(300,)] * 40)
            conn.execute("DELETE FROM t WHERE id % 5 = ?", (i,))
        images.append(conn.serialize("main"))
    l0 = tmp_path / "ltx" / "0"
    l0.mkdir(parents=True)
    prev = b""
    for txid, image in enumerate(images, start=1):
        pages = [(n // ps + 1, image[n:n + ps]) for n in range(0, len(image), ps)
                 if prev[n:n + ps] != image[n:n + ps]]
        hdr = ltx.Header(0, ps, len(image) // ps, 1 if txid == 1 else txid, txid, 1_700_000_000_000 + txid,
                         pre_apply_checksum=ltx_writer.database_checksum(prev, ps) if txid > 1 else 0)
        (l0 / ltx.format_filename(hdr.min_txid, txid)).write_bytes(
            ltx_writer.encode(hdr, pages, post_apply_checksum=ltx_writer.database_checksum(image, ps)))
        prev = image
    rep = acquire(str(tmp_path), resolve({}))
    try:
        snap = rep.current()
        raw = b"".join(rep.read_page(snap, n) for n in range(1, snap.commit + 1))
        assert snap.txid == 4
        assert ltx_writer.database_checksum(raw, ps) == ltx_writer.database_checksum(images[-1], ps)
    finally:
        release(rep)


# ---- live, isolated ---------------------------------------------------------

@pytest.mark.parametrize("driver", DRIVERS)
def test_replica_follows_primary_and_txid_advances(file_primary: ReplicatedPrimary, driver: str) -> None:
    p = file_primary
    p.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    first = p.wait_replicated()
    with closing(drivers.connect(driver, p.replica_url, **FAST)) as conn:
        assert txid_of(conn) == first
        for n in range(1, 4):
            p.execute("INSERT INTO t(v) VALUES (?)", (n,))
            target = p.wait_replicated()
            wait_until(lambda: txid_of(conn) >= target, 10, what=f"replica at {target:x}")
            assert rows(conn, "SELECT count(*) FROM t") == [(n,)]
        assert txid_of(conn) > first


@pytest.mark.parametrize("driver", DRIVERS)
def test_read_transaction_sees_one_txid_while_primary_commits(file_primary: ReplicatedPrimary, driver: str) -> None:
    p = file_primary
    p.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    p.executemany("INSERT INTO t(v) VALUES (?)", [(i,) for i in range(100)])
    start = p.wait_replicated()
    with closing(drivers.connect(driver, p.replica_url, **FAST)) as conn, closing(drivers.connect(driver, p.replica_url)) as other:
        conn.execute("BEGIN")
        assert txid_of(conn) == start
        before = rows(conn, "SELECT count(*), sum(v) FROM t")
        for i in range(15):
            p.execute("INSERT INTO t(v) VALUES (?)", (1000 + i,))
        newest = p.wait_replicated()
        wait_until(lambda: txid_of(other) == newest, 10, what="other connection sees newest")
        assert rows(conn, "SELECT count(*), sum(v) FROM t") == before
        assert txid_of(conn) == start
        conn.execute("COMMIT")
        assert txid_of(conn) == newest
        assert rows(conn, "SELECT count(*) FROM t") == [(115,)]


def test_old_snapshots_are_freed_when_unpinned(file_primary: ReplicatedPrimary) -> None:
    """A pinned snapshot outlives newer ones; unpinned, C frees it at once and
    Python lets go of its bookkeeping at the next poll."""
    p = file_primary
    p.execute("CREATE TABLE t(v)")
    p.wait_replicated()
    with closing(lsvfs.connect(p.replica_url, **FAST)) as conn:
        rep = lsvfs.open_replicas()[p.replica_url]
        conn.execute("BEGIN")
        rows(conn, "SELECT count(*) FROM t")
        old = weakref.ref(rep.current())
        p.execute("INSERT INTO t VALUES (1)")
        target = p.wait_replicated()
        wait_until(lambda: rep.current().txid == target, 10)
        gc.collect()
        assert old() is not None, "pinned snapshot must stay alive"
        assert rep.c_snapshots() == 2, "the newest and the pinned one"
        conn.execute("COMMIT")
        assert rep.c_snapshots() == 1
        wait_until(lambda: gc.collect() >= 0 and old() is None, 10, what="old snapshot freed")


def test_hundred_reader_threads_while_primary_writes(file_primary: ReplicatedPrimary) -> None:
    """Every transaction sees a consistent state: transfers keep the total at 0
    and `n` always equals the row count, whatever the poller publishes meanwhile."""
    p = file_primary
    p.execute("CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER); CREATE TABLE meta(n INTEGER)")
    with p.transaction():
        p.executemany("INSERT INTO acct(bal) VALUES (0)", [()] * 50)
        p.execute("INSERT INTO meta VALUES (50)")
    p.wait_replicated()
    stop = threading.Event()
    errors: list[str] = []
    seen: set[int] = set()

    def writer() -> None:
        conn = apsw.Connection(str(p.db_path))
        conn.set_busy_timeout(5000)
        i = 0
        while i < 80:
            i += 1
            with conn:
                conn.execute("UPDATE acct SET bal = bal - ? WHERE id = ?", (i, i % 50 + 1))
                conn.execute("UPDATE acct SET bal = bal + ? WHERE id = ?", (i, (i * 7) % 50 + 1))
                conn.execute("INSERT INTO acct(bal) VALUES (0)")
                conn.execute("UPDATE meta SET n = n + 1")
            time.sleep(0.005)
        conn.close()

    def reader() -> None:
        try:
            with closing(lsvfs.connect(p.replica_url, **FAST)) as conn:
                deadline = time.monotonic() + 90
                while not stop.is_set() and time.monotonic() < deadline:
                    with conn:
                        total, count = conn.execute("SELECT sum(bal), count(*) FROM acct").fetchone()
                        (n,), = conn.execute("SELECT n FROM meta").fetchall()
                        seen.add(txid_of(conn))
                    if total != 0 or count != n:
                        errors.append(f"inconsistent: sum={total} count={count} n={n}")
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(repr(exc))

    readers = [threading.Thread(target=reader) for _ in range(100)]
    for t in readers:
        t.start()
    w = threading.Thread(target=writer)
    w.start()
    w.join(timeout=60)
    target = p.wait_replicated(exact=False)
    wait_until(lambda: errors or max(seen, default=0) >= target, 30, what="readers see the last write")
    stop.set()
    for t in readers:
        t.join(timeout=60)
    assert not errors, errors[:5]
    assert len(seen) > 1, "readers should have seen the replica advance"


# ---- SQLite integration -----------------------------------------------------

def test_header_shim_keeps_sqlite_cache_while_nothing_changes(file_primary: ReplicatedPrimary) -> None:
    """Every page SQLite reads is a cache lookup in C (hit or miss), so their
    count is the VFS reads: after the first query, only page 1's change
    counter is read per transaction, because it did not change."""
    p = file_primary
    workload(p, rounds=1)
    p.wait_replicated()

    def vfs_reads() -> int:
        return rep.cache.hits + rep.cache.misses

    with closing(lsvfs.connect(p.replica_url, poll_interval=0)) as conn:
        rep = lsvfs.open_replicas()[p.replica_url]
        assert rows(conn, "PRAGMA journal_mode") == [("delete",)]
        start = vfs_reads()
        rows(conn)
        first = vfs_reads() - start
        start = vfs_reads()
        for _ in range(5):
            rows(conn)
        assert vfs_reads() - start <= 5
        assert first > 5
    assert not any(Path(p.workdir).rglob("*-journal"))


@pytest.mark.parametrize("driver", DRIVERS)
def test_vacuum_shrinks_the_replica(file_primary: ReplicatedPrimary, driver: str) -> None:
    p = file_primary
    workload(p, rounds=3)
    p.wait_replicated()
    with closing(drivers.connect(driver, p.replica_url, **FAST)) as conn:
        (big,), = conn.execute("PRAGMA page_count").fetchall()
        p.execute("DELETE FROM t WHERE id > 20")
        p.vacuum()
        target = p.wait_replicated()
        wait_until(lambda: txid_of(conn) >= target, 10)
        (small,), = conn.execute("PRAGMA page_count").fetchall()
        assert small < big / 4
        assert rows(conn) == p.execute("SELECT * FROM t ORDER BY id")
        assert rows(conn, "PRAGMA integrity_check") == [("ok",)]
        assert lsvfs.open_replicas()[p.replica_url].current().size == small * p.page_size


@pytest.mark.parametrize("driver", DRIVERS)
def test_txid_pinning_and_time_travel_are_per_connection(file_primary: ReplicatedPrimary, driver: str,
                                                        tmp_path: Path) -> None:
    p = file_primary
    p.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    p.execute("INSERT INTO t(v) VALUES ('one')")
    t1 = p.wait_replicated()
    time.sleep(1.1)  # a second between states, for time travel by RFC 3339
    p.execute("INSERT INTO t(v) VALUES ('two')")
    t2 = p.wait_replicated()
    with closing(drivers.connect(driver, p.replica_url, **FAST)) as a, closing(drivers.connect(driver, p.replica_url)) as b:
        wait_until(lambda: txid_of(a) == t2, 10)
        (when1,), = a.execute(f"PRAGMA litestream_txid = {t1:x}").fetchall() or [(None,)]
        assert txid_of(a) == t1
        assert rows(a, "SELECT v FROM t ORDER BY id") == [("one",)]
        assert txid_of(b) == t2 and rows(b, "SELECT count(*) FROM t") == [(2,)]
        expected = p.litestream_restore(tmp_path / "t1.db", txid=t1)
        assert rows(a, "SELECT * FROM t ORDER BY id") == rows(apsw.Connection(str(expected)),
                                                               "SELECT * FROM t ORDER BY id")
        (stamp,), = a.execute("PRAGMA litestream_time").fetchall()
        a.execute("PRAGMA litestream_txid = LATEST")
        assert txid_of(a) == t2
        a.execute(f"PRAGMA litestream_time = '{stamp}'")
        assert txid_of(a) == t1 and rows(a, "SELECT count(*) FROM t") == [(1,)]
        a.execute("PRAGMA litestream_time = '1 seconds ago'")
        assert txid_of(a) in (t1, t2)
        a.execute("PRAGMA litestream_time = LATEST")
        assert txid_of(a) == t2
        assert rows(b, "PRAGMA litestream_time") != [(stamp,)]


@pytest.mark.parametrize("driver", DRIVERS)
def test_bad_pragma_values_fail_the_statement_and_keep_the_connection(file_primary: ReplicatedPrimary,
                                                                     driver: str) -> None:
    p = file_primary
    p.execute("CREATE TABLE t(v)")
    txid = p.wait_replicated()
    with closing(drivers.connect(driver, p.replica_url)) as conn:
        for bad, msg in [("PRAGMA litestream_txid = zz", "not a TXID"),
                         ("PRAGMA litestream_txid = '7fffffff'", "newer than the replica"),
                         ("PRAGMA litestream_time = 'yesterday-ish'", "cannot parse time"),
                         ("PRAGMA litestream_time = '2001-01-01T00:00:00Z'", "no state at or before"),
                         ("PRAGMA litestream_lag = 5", "read-only")]:
            with pytest.raises((apsw.SQLError, sqlite3.OperationalError), match=msg):
                conn.execute(bad)
            assert txid_of(conn) == txid
            assert rows(conn, "SELECT count(*) FROM t") == [(0,)]
        (lag,), = conn.execute("PRAGMA litestream_lag").fetchall()
        assert int(lag) >= 0


@pytest.mark.parametrize("driver", DRIVERS)
def test_writes_are_refused_and_temp_files_are_removed(file_primary: ReplicatedPrimary, driver: str) -> None:
    """Writes fail with SQLite's read-only error; temp files (a spilling sort,
    a temp table) go to SQLite's default VFS and are gone after close."""
    p = file_primary
    p.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    p.executemany("INSERT INTO t(v) VALUES (randomblob(500))", [()] * 2000)
    p.wait_replicated()
    before = sqlite_temp_fds()
    conn = drivers.connect(driver, p.replica_url)
    try:
        with pytest.raises(READ_ONLY[driver], match="readonly"):
            conn.execute("INSERT INTO t(v) VALUES (1)")
        with pytest.raises(READ_ONLY[driver], match="readonly"):
            conn.execute("CREATE TABLE x(a)")
        script(conn, "PRAGMA temp_store = FILE; PRAGMA cache_size = 10")
        cur = conn.execute("SELECT v FROM t ORDER BY v")  # a sort that spills to a temp file
        cur.fetchone()
        assert sqlite_temp_fds() > before
        cur.close()
        conn.execute("CREATE TEMP TABLE scratch AS SELECT id FROM t")
        assert conn.execute("SELECT count(*) FROM scratch").fetchall() == [(2000,)]
    finally:
        conn.close()
    assert sqlite_temp_fds() == before


# ---- opening ------------------------------------------------------------------

def test_plain_apsw_with_uri_and_environment(file_primary: ReplicatedPrimary,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    p = file_primary
    p.execute("CREATE TABLE t(v)")
    p.execute("INSERT INTO t VALUES (42)")
    p.wait_replicated()
    register()
    flags = apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI
    conn = apsw.Connection(f"file:app.db?vfs=litestream&replica={quote(p.replica_url, safe='')}", flags=flags)
    assert rows(conn, "SELECT v FROM t") == [(42,)]
    monkeypatch.setenv("LITESTREAM_REPLICA_URL", p.replica_url)
    conn2 = apsw.Connection("file:app.db?vfs=litestream", flags=flags)
    assert rows(conn2, "SELECT v FROM t") == [(42,)]
    assert len(lsvfs.open_replicas()) == 1
    conn.close()
    conn2.close()
    assert lsvfs.open_replicas() == {}


def test_options_precedence(file_primary: ReplicatedPrimary, monkeypatch: pytest.MonkeyPatch) -> None:
    p = file_primary
    p.execute("CREATE TABLE t(v)")
    p.wait_replicated()
    monkeypatch.setenv("LSVFS_POLL_INTERVAL", "250ms")
    monkeypatch.setenv("LSVFS_CACHE_SIZE", "2MiB")
    with closing(lsvfs.connect(p.replica_url, cache_size="1MiB")):
        opts = lsvfs.open_replicas()[p.replica_url].options
        assert opts.poll_interval == 0.25 and opts.cache_size == 1 << 20
    with pytest.raises(ValueError, match="LSVFS_CACHE_SIZE"):
        monkeypatch.setenv("LSVFS_CACHE_SIZE", "lots")
        lsvfs.connect(p.replica_url)
    with pytest.raises(ValueError, match="unknown option"):
        lsvfs.connect(p.replica_url, pol_interval=1)


def test_many_replicas_in_one_process(replicated_primary: Any) -> None:
    primaries = [replicated_primary("file") for _ in range(3)]
    for i, p in enumerate(primaries):
        p.execute("CREATE TABLE t(v)")
        p.execute("INSERT INTO t VALUES (?)", (i,))
        p.wait_replicated()
    conns = [lsvfs.connect(p.replica_url) for p in primaries]
    assert [rows(c, "SELECT v FROM t") for c in conns] == [[(0,)], [(1,)], [(2,)]]
    assert set(lsvfs.open_replicas()) == {p.replica_url for p in primaries}
    for c in conns:
        c.close()


def test_connections_to_one_url_share_one_poller(file_primary: ReplicatedPrimary) -> None:
    p = file_primary
    p.execute("CREATE TABLE t(v)")
    p.wait_replicated()
    counting = WrappedStorage(open_storage(p.replica_url))
    first = lsvfs.connect(p.replica_url, storage=counting, poll_interval=0.05)
    others = [lsvfs.connect(p.replica_url, poll_interval=0.05) for _ in range(7)]
    rep = lsvfs.open_replicas()[p.replica_url]
    assert rep.storage.inner is counting and rep.refs == 8
    before, polls_before = counting.calls["list"], rep.poll_count
    time.sleep(1.0)
    lists, polls = counting.calls["list"] - before, rep.poll_count - polls_before
    assert 5 <= polls <= 25
    assert lists <= polls * 1.2 + 10  # one L0 listing per poll, not one per connection
    for c in [first, *others]:
        c.close()
    assert lsvfs.open_replicas() == {}
    assert counting.calls["close"] == 1


def test_bad_urls_and_storage(tmp_path: Path, s3_bucket: str, moto_s3: Any) -> None:
    with pytest.raises(lsvfs.URLError, match="s3://"):
        lsvfs.connect("ftp://example/x")
    with pytest.raises(lsvfs.StorageError, match="no-such-bucket"):
        lsvfs.connect(moto_s3.url("no-such-bucket", "db"))
    with pytest.raises(lsvfs.StorageError):
        lsvfs.connect("s3://lsvfs-nowhere/db?endpoint=http://127.0.0.1:9&region=us-east-1&force-path-style=true")
    assert lsvfs.open_replicas() == {}


def test_one_replica_however_the_url_is_spelled(file_primary: ReplicatedPrimary) -> None:
    p = file_primary
    p.execute("CREATE TABLE t(v)")
    p.wait_replicated()
    d = str(p.replica_dir)
    conns = [lsvfs.connect(u) for u in (f"file://{d}", d, d + "/", f"file://localhost{d}")]
    assert len(lsvfs.open_replicas()) == 1
    assert lsvfs.open_replicas()[f"file://{d}"].refs == 4
    for c in conns:
        c.close()
    assert lsvfs.open_replicas() == {}


def test_bad_credentials_fail_at_connect(moto_s3_auth: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith(("AWS_", "LITESTREAM_")):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "nope")
    with pytest.raises(lsvfs.StorageError, match="InvalidAccessKeyId"):
        lsvfs.connect(moto_s3_auth.url())
    assert lsvfs.open_replicas() == {}


@pytest.mark.parametrize("driver", DRIVERS)
def test_uri_parameters_set_options(file_primary: ReplicatedPrimary, driver: str,
                                    caplog: pytest.LogCaptureFixture) -> None:
    """Options as URI parameters, on both drivers; a bad one fails the open
    (SQLite's 'unable to open') and its reason is logged under `lsvfs`."""
    p = file_primary
    p.execute("CREATE TABLE t(v)")
    p.wait_replicated()
    register()
    uri = f"file:x.db?vfs=litestream&replica={quote(p.replica_url, safe='')}&poll_interval=300ms&verify=files"

    def open_(u: str) -> Any:
        if driver == "apsw":
            return apsw.Connection(u, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
        return sqlite3.connect(u, uri=True)

    conn = open_(uri)
    opts = lsvfs.open_replicas()[p.replica_url].options
    assert (opts.poll_interval, opts.verify) == (0.3, "files")
    assert conn.execute("SELECT count(*) FROM t").fetchall() == [(0,)]
    conn.close()
    with pytest.raises((apsw.CantOpenError, sqlite3.OperationalError), match="unable to open"):
        open_(uri.replace("verify=files", "verify=most"))
    assert any("verify must be one of" in r.getMessage() and r.name.startswith("lsvfs") for r in caplog.records)
    assert lsvfs.open_replicas() == {}


class ConcurrencyMeter(WrappedStorage):
    """Counts how many reads are in flight at once (each held briefly)."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.in_flight = 0
        self.peak = 0

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def read(self, info: Any, offset: int, length: int) -> bytes:
        self._enter()
        try:
            time.sleep(0.02)
            return super().read(info, offset, length)
        finally:
            self._leave()

    def read_all(self, info: Any) -> bytes:
        self._enter()
        try:
            time.sleep(0.02)
            return super().read_all(info)
        finally:
            self._leave()


def test_open_fetches_page_indexes_in_parallel(tmp_path: Path) -> None:
    """A plan of many files is opened with its page indexes fetched concurrently."""
    ps = 512
    conn = apsw.Connection(":memory:")
    conn.execute(f"PRAGMA page_size={ps}; CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    l0 = tmp_path / "ltx" / "0"
    l0.mkdir(parents=True)
    prev = b""
    for txid in range(1, 21):
        with conn:
            conn.execute("INSERT INTO t(v) VALUES (randomblob(200))")
        image = conn.serialize("main")
        pages = [(n // ps + 1, image[n:n + ps]) for n in range(0, len(image), ps)
                 if prev[n:n + ps] != image[n:n + ps]]
        hdr = ltx.Header(ltx.FLAG_NO_CHECKSUM, ps, len(image) // ps, 1 if txid == 1 else txid, txid, txid)
        (l0 / ltx.format_filename(hdr.min_txid, txid)).write_bytes(ltx_writer.encode(hdr, pages))
        prev = image
    meter = ConcurrencyMeter(open_storage(str(tmp_path)))
    with closing(lsvfs.connect(str(tmp_path), storage=meter, poll_interval=0)) as c:
        assert rows(c, "SELECT count(*) FROM t") == [(20,)]
    assert meter.peak > 1
