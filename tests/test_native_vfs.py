"""The C VFS itself: its methods called directly, its registration in both
SQLites, the hot path staying out of Python, and errors keeping their cause.

Replicas here are synthetic (tests/synthetic.py), so every byte the VFS
serves can be checked against the image of the TXID it claims.
"""

from __future__ import annotations

import logging
import sqlite3
import struct
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import apsw
import pytest
from replica_file import ReplicaFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synthetic import FUZZ_EXAMPLES, DirTarget, SyntheticPrimary, make_target, open_replica

import drivers
import lsvfs
import lsvfs.ltx
import lsvfs.storage
import lsvfs.timeutil
from drivers import CORRUPT, DRIVERS, IO_ERROR
from lsvfs import vfs as vfs_module
from lsvfs.errors import LsvfsError
from lsvfs.vfs import register


def shimmed(image: bytes, txid: int, page_size: int) -> bytes:
    """`image` as the VFS serves it: page 1 says rollback journal, its change
    counter is the TXID and its size the image's."""
    buf = bytearray(image)
    buf[18] = buf[19] = 1
    counter = struct.pack(">I", txid & 0xFFFFFFFF)
    buf[24:28] = counter
    buf[28:32] = struct.pack(">I", len(image) // page_size)
    buf[92:96] = counter
    return bytes(buf)


def table(p: SyntheticPrimary, rows: int = 200, size: int = 300) -> None:
    p.commit("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    p.commit("INSERT INTO t(v) VALUES (randomblob(?))", many=[(size,)] * rows)


@pytest.fixture(scope="module")
def fuzz_replica(tmp_path_factory: pytest.TempPathFactory) -> SyntheticPrimary:
    p = SyntheticPrimary(DirTarget(tmp_path_factory.mktemp("fuzz") / "r"), page_size=1024)
    table(p, rows=120)
    return p


@settings(max_examples=FUZZ_EXAMPLES * 3, deadline=None, suppress_health_check=list(HealthCheck))
@given(offset=st.integers(0, 200_000), amount=st.integers(0, 9000))
def test_reads_at_any_offset_and_length_are_exact(fuzz_replica: SyntheticPrimary, offset: int, amount: int) -> None:
    """Bad input, fuzzed: any (offset, amount) SQLite could ask for, inside a
    page, across boundaries, past the end: the bytes of the TXID's image (page 1
    shimmed), and past the end a short read, never other bytes."""
    p = fuzz_replica
    want = shimmed(p.image(), p.txid, p.page_size)
    with open_replica(p.url, poll_interval=0):
        f = ReplicaFile(register(), p.url)
        try:
            f.xLock(apsw.SQLITE_LOCK_SHARED)
            assert f.xRead(amount, offset) == want[offset:offset + amount]
            f.xUnlock(apsw.SQLITE_LOCK_NONE)
        finally:
            f.xClose()


def test_negative_offsets_and_amounts_are_errors(fuzz_replica: SyntheticPrimary) -> None:
    with open_replica(fuzz_replica.url, poll_interval=0):
        f = ReplicaFile(register(), fuzz_replica.url)
        try:
            with pytest.raises(apsw.IOError):
                f.xRead(100, -1)
            with pytest.raises(apsw.IOError):
                f.xRead(-5, 0)
            assert f.xRead(0, 10**12) == b""
        finally:
            f.xClose()


def test_lock_levels_pin_and_release_in_c(tmp_path: Path) -> None:
    """SHARED pins the newest snapshot (a C reference), NONE drops it; the
    snapshot count in C says so, and a poll in between does not move the pin."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    table(p, rows=10)
    with open_replica(p.url, poll_interval=0) as rep:
        f = ReplicaFile(register(), p.url)
        try:
            assert rep.c_snapshots() == 1 and f.pinned is None
            f.xLock(apsw.SQLITE_LOCK_SHARED)
            first = f.pinned
            assert first is rep.current()
            p.commit("INSERT INTO t(v) VALUES (1)")
            assert rep.poll()
            assert rep.c_snapshots() == 2 and f.pinned is first and f.xFileSize() == first.size
            f.xUnlock(apsw.SQLITE_LOCK_NONE)
            assert f.pinned is None and rep.c_snapshots() == 1
            assert f.snapshot() is rep.current()
        finally:
            f.xClose()
    assert rep.c_snapshots() == 0


@pytest.mark.parametrize("driver", DRIVERS)
def test_hot_path_never_enters_python(tmp_path: Path, driver: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the pages are cached, transactions (lock, size, page-1 read,
    unlock) and page reads are C only: the callbacks' Python work (a page
    fetch, a PRAGMA) never runs, though every page goes through the VFS."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    table(p, rows=300)
    calls: list[str] = []
    read_page, pragma = lsvfs.replica.Replica.read_page, vfs_module.OpenFile.pragma
    monkeypatch.setattr(lsvfs.replica.Replica, "read_page",
                        lambda *a, **k: calls.append("fetch") or read_page(*a, **k))
    monkeypatch.setattr(vfs_module.OpenFile, "pragma", lambda *a, **k: calls.append("pragma") or pragma(*a, **k))
    conn = drivers.connect(driver, p.url, poll_interval=0, cache_size="8MiB")
    try:
        rep = lsvfs.open_replicas()[p.url]
        drivers.script(conn, "PRAGMA cache_size = 0")  # SQLite's own cache is off: every page is a VFS read
        want = conn.execute("SELECT count(*), sum(length(v)) FROM t").fetchall()
        assert conn.execute("PRAGMA litestream_txid").fetchall() == [(f"{p.txid:016x}",)]
        assert "pragma" in calls, "the counting really sees callbacks"
        calls.clear()
        hits = rep.cache.hits
        for _ in range(20):
            assert conn.execute("SELECT count(*), sum(length(v)) FROM t").fetchall() == want
        assert rep.cache.hits - hits >= 20 * 10, "the reads really went through the VFS"
        assert calls == []
    finally:
        conn.close()


@pytest.mark.parametrize("driver", DRIVERS)
def test_both_sqlite_versions_serve_the_same_rows(tmp_path: Path, driver: str) -> None:
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=4096)
    table(p)
    with closing(drivers.connect(driver, p.url, poll_interval=0)) as conn:
        version = conn.execute("SELECT sqlite_version()").fetchall()[0][0]
        assert version == (apsw.sqlite_lib_version() if driver == "apsw" else sqlite3.sqlite_version)
        assert conn.execute("SELECT id, v FROM t ORDER BY id").fetchall() == p.rows("SELECT id, v FROM t ORDER BY id")
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA journal_mode").fetchall() == [("delete",)]


def test_registration_without_the_standard_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the standard library's SQLite cannot take a VFS, `lsvfs.uri` says
    why, in one error, and apsw still works."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    table(p, rows=5)

    def unavailable() -> Any:
        raise LsvfsError("the standard library's sqlite3 links SQLite statically")
    monkeypatch.setattr(vfs_module, "_stdlib_functions", unavailable)
    reg = register("litestream-apsw-only")
    assert reg.stdlib_error and "statically" in reg.stdlib_error and "sqlite3" not in reg.vfs
    with pytest.raises(LsvfsError, match="statically"):
        lsvfs.uri(p.url, vfs="litestream-apsw-only")
    with closing(lsvfs.connect(p.url, vfs="litestream-apsw-only", poll_interval=0)) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchall() == [(5,)]


def test_registering_loads_nothing_into_other_connections(tmp_path: Path) -> None:
    """The extension entry point is loaded on a private connection: others
    still refuse extension loading, before and after."""
    before = apsw.Connection(":memory:")
    register("litestream-isolated")
    after = apsw.Connection(":memory:")
    from lsvfs import _core
    for conn in (before, after):
        with pytest.raises(apsw.Error):
            conn.load_extension(_core.__file__, "sqlite3_lsvfs_init")
        conn.close()


@pytest.mark.parametrize("driver", DRIVERS)
def test_uri_without_a_replica_fails_to_open(driver: str, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("LITESTREAM_REPLICA_URL", raising=False)
    register()
    with pytest.raises((apsw.CantOpenError, sqlite3.OperationalError), match="unable to open"):
        if driver == "apsw":
            apsw.Connection("file:x.db?vfs=litestream", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
        else:
            sqlite3.connect("file:x.db?vfs=litestream&mode=ro", uri=True)
    assert any("no replica URL" in r.getMessage() for r in caplog.records)


def test_uri_checks_url_and_options_at_the_call() -> None:
    with pytest.raises(lsvfs.URLError):
        lsvfs.uri("ftp://nowhere/db")
    with pytest.raises(ValueError, match="cache_size"):
        lsvfs.uri("/tmp/x", cache_size="lots")
    u = lsvfs.uri("s3://bucket/db?region=x", poll_interval="2s")
    assert u.startswith("file:replica.db?") and "vfs=litestream" in u and "mode=ro" in u
    assert "replica=s3%3A%2F%2Fbucket%2Fdb%3Fregion%3Dx" in u and "poll_interval=2s" in u


@pytest.mark.s3
@pytest.mark.parametrize("driver", DRIVERS)
def test_replica_that_disappears_fails_reads_then_recovers(tmp_path: Path, driver: str, request: pytest.FixtureRequest,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """Files deleted from the bucket while a connection is open: an I/O error
    at the query, the cause in the log and in PRAGMA litestream_error; files
    back, the same connection works."""
    p = SyntheticPrimary(make_target("s3", tmp_path, request), page_size=4096)
    table(p, rows=400, size=400)
    names = {lvl: p.target.names(lvl) for lvl in (0,)}
    conn = drivers.connect(driver, p.url, poll_interval=0, cache_size=0, read_retries=0)
    try:
        drivers.script(conn, "PRAGMA cache_size = 0")
        want = conn.execute("SELECT sum(length(v)) FROM t").fetchall()
        for lo, hi in names[0]:
            p.delete(0, lo, hi)
        with caplog.at_level(logging.WARNING, logger="lsvfs"):
            with pytest.raises(IO_ERROR[driver], match="disk I/O error"):
                conn.execute("SELECT sum(length(v)) FROM t").fetchall()
        (err,), = conn.execute("PRAGMA litestream_error").fetchall()
        assert err and any(err in r.getMessage() for r in caplog.records if r.name.startswith("lsvfs"))
        for lo, hi in names[0]:
            p.write(0, lo, hi)
        assert conn.execute("SELECT sum(length(v)) FROM t").fetchall() == want
    finally:
        conn.close()


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_frame_that_fails_its_checks_is_corruption(tmp_path: Path, driver: str) -> None:
    """A damaged frame in a file too big to be read whole at open: the query
    gets SQLITE_CORRUPT, and PRAGMA litestream_error names the file."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=4096)
    table(p, rows=600, size=1000)  # the snapshot file is far over 64 KiB
    snap_files = sorted((tmp_path / "r" / "ltx" / "0").iterdir())
    big = max(snap_files, key=lambda f: f.stat().st_size)
    assert big.stat().st_size > 64 << 10
    conn = drivers.connect(driver, p.url, poll_interval=0, cache_size=0, read_retries=0)
    try:
        drivers.script(conn, "PRAGMA cache_size = 0")
        data = bytearray(big.read_bytes())
        entries = lsvfs.ltx.decode(bytes(data), big.name).entries
        for _, offset, _ in entries[1:]:  # every frame's flags but page 1's (each connection keeps that one)
            data[offset + 4] ^= 0xFF
        big.write_bytes(bytes(data))
        with pytest.raises(CORRUPT[driver], match="malformed"):
            conn.execute("SELECT sum(length(v)) FROM t").fetchall()
        (err,), = conn.execute("PRAGMA litestream_error").fetchall()
        assert big.name in err
    finally:
        conn.close()


@pytest.mark.parametrize("driver", DRIVERS)
def test_ctrl_c_inside_a_fetch_interrupts_the_statement(tmp_path: Path, driver: str, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A KeyboardInterrupt while SQLite waits in a Python callback (a page fetch from
    remote storage) fails the statement with SQLite's "interrupted", as interrupt()
    does: not a disk I/O error with a logged traceback. The connection goes on working."""
    from wrappers import WrappedStorage

    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=4096)
    table(p, rows=300, size=400)
    remote = WrappedStorage(lsvfs.storage.open_storage(p.url))  # not `local`: misses go through Python
    keep = lsvfs.connect(p.url, storage=remote, poll_interval=0, cache_size=0)  # the Replica both drivers share
    conn = drivers.connect(driver, p.url, poll_interval=0, cache_size=0)
    try:
        drivers.script(conn, "PRAGMA cache_size = 0")
        want = conn.execute("SELECT sum(length(v)) FROM t").fetchall()
        real = lsvfs.replica.Replica.read_page

        def ctrl_c(self: Any, *args: Any, **kwargs: Any) -> bytes:
            raise KeyboardInterrupt

        monkeypatch.setattr(lsvfs.replica.Replica, "read_page", ctrl_c)
        with caplog.at_level(logging.DEBUG, logger="lsvfs"):
            with pytest.raises((apsw.InterruptError, sqlite3.OperationalError), match="interrupted"):
                conn.execute("SELECT sum(length(v)) FROM t").fetchall()
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
        monkeypatch.setattr(lsvfs.replica.Replica, "read_page", real)
        assert conn.execute("SELECT sum(length(v)) FROM t").fetchall() == want
    finally:
        conn.close()
        keep.close()


@pytest.mark.parametrize("driver", DRIVERS)
def test_threads_on_their_own_connections_see_whole_transactions(tmp_path: Path, driver: str) -> None:
    """Many threads, each its own connection, reading while the replica
    advances: every read transaction sees one TXID's rows, exactly."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    p.commit("CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)")
    p.commit("INSERT INTO t(v) VALUES (0)", many=[()] * 50)
    errors: list[BaseException] = []
    stop = threading.Event()
    seen: set[int] = set()

    def reader() -> None:
        conn = drivers.connect(driver, p.url, poll_interval=0.01)
        try:
            while not stop.is_set():
                conn.execute("BEGIN")
                (total, n), = conn.execute("SELECT sum(v), count(*) FROM t").fetchall()
                (txid,), = conn.execute("PRAGMA litestream_txid").fetchall()
                conn.execute("COMMIT")
                # every commit adds 1 to each of 50 rows
                if total != 50 * (int(txid, 16) - 2) or n != 50:
                    errors.append(AssertionError(f"TXID {txid}: sum {total}, rows {n}"))
                seen.add(int(txid, 16))
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    for _ in range(40):
        p.commit("UPDATE t SET v = v + 1")
        stop.wait(0.01)  # a pace the 10 ms poller can follow
    stop.wait(0.3)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors[:3]
    assert len(seen) > 3


@pytest.mark.parametrize("driver", DRIVERS)
def test_go_vfs_sql_functions(tmp_path: Path, driver: str) -> None:
    """litestream_txid(), litestream_lag(), litestream_time() and
    litestream_set_time(x) answer like their PRAGMAs on replica connections,
    and do not exist on other connections of the same SQLite."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    table(p, rows=5)
    first = p.txid
    time.sleep(0.01)  # commit times are in milliseconds: keep the two apart
    p.commit("INSERT INTO t(v) VALUES (1)")
    with closing(drivers.connect(driver, p.url, poll_interval=0)) as conn:
        (txid, lag, when), = conn.execute("SELECT litestream_txid(), litestream_lag(), litestream_time()").fetchall()
        assert txid == f"{p.txid:016x}" and isinstance(lag, int) and lag >= 0
        assert when == conn.execute("PRAGMA litestream_time").fetchall()[0][0]
        earlier = lsvfs.timeutil.format_time(p.timestamps[first])
        assert conn.execute("SELECT litestream_set_time(?)", (earlier,)).fetchall()[0][0] == earlier
        assert conn.execute("SELECT litestream_txid(), count(*) FROM t").fetchall() == [(f"{first:016x}", 5)]
        with pytest.raises((apsw.SQLError, sqlite3.OperationalError), match="not a time|time"):
            conn.execute("SELECT litestream_set_time('next tuesday-ish')").fetchall()
        conn.execute("SELECT litestream_set_time('LATEST')").fetchall()
        assert conn.execute("SELECT count(*) FROM t").fetchall() == [(6,)]
    plain = apsw.Connection(":memory:") if driver == "apsw" else sqlite3.connect(":memory:")
    with pytest.raises((apsw.SQLError, sqlite3.OperationalError), match="no such function"):
        plain.execute("SELECT litestream_txid()").fetchall()
    plain.close()


def test_go_vfs_names_for_the_replica(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Go VFS's way to name a replica works unchanged: the `replica_url` URI
    parameter, LITESTREAM_REPLICA_URL, and its LITESTREAM_S3_* variables."""
    from lsvfs.options import replica_url

    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    table(p, rows=3)
    monkeypatch.delenv("LITESTREAM_REPLICA_URL", raising=False)
    register()
    conn = sqlite3.connect(f"file:x.db?vfs=litestream&mode=ro&replica_url={p.url}", uri=True)
    assert conn.execute("SELECT count(*) FROM t").fetchall() == [(3,)]
    conn.close()
    env = {"LITESTREAM_S3_BUCKET": "backups", "LITESTREAM_S3_PATH": "/prod.db", "LITESTREAM_S3_REGION": "eu-west-1",
           "LITESTREAM_S3_ENDPOINT": "http://127.0.0.1:9000", "LITESTREAM_S3_FORCE_PATH_STYLE": "true"}
    assert replica_url({}, env) == ("s3://backups/prod.db?endpoint=http%3A%2F%2F127.0.0.1%3A9000&region=eu-west-1"
                                    "&force-path-style=true")
    assert replica_url({}, {**env, "LITESTREAM_REPLICA_URL": "file:///x"}) == "file:///x"
    assert replica_url({"replica_url": "file:///y"}, env) == "file:///y"
    assert replica_url({}, {}) is None
    lsvfs.storage.parse_url(replica_url({}, env) or "")  # a URL our S3 client takes


def test_directory_misses_are_read_in_c_and_faults_still_go_through_python(tmp_path: Path) -> None:
    """A plain directory replica's misses are read by C (no Python call, no
    GIL); a replica behind a storage wrapper (faults, counting) is read by
    Python, so the wrapper sees every read."""
    from faults import FaultyStorage

    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=4096)
    table(p, rows=300, size=3000)
    with closing(lsvfs.connect(p.url, poll_interval=0, cache_size=0)) as conn:
        rep = lsvfs.open_replicas()[p.url]
        want = conn.execute("SELECT sum(length(v)) FROM t").fetchall()
        local = rep.stats()["storage"]["local_read"]
        assert local["requests"] > 0 and local["bytes"] > 300 * 3000
    wrapped = FaultyStorage(lsvfs.storage.open_storage(p.url), rate=0.0)
    with closing(lsvfs.connect(p.url, poll_interval=0, cache_size=0, storage=wrapped)) as conn:
        rep = lsvfs.open_replicas()[p.url]
        assert conn.execute("SELECT sum(length(v)) FROM t").fetchall() == want
        assert rep.stats()["storage"]["local_read"]["requests"] == 0 and wrapped.calls["read"] > 0


@pytest.mark.parametrize("driver", DRIVERS)
def test_scans_larger_than_the_cache_keep_hitting_and_leave_the_hot_pages(tmp_path: Path, driver: str) -> None:
    """A full scan of a table 1.5x the frame cache, repeated: the pages the
    first scan kept are hit by the next (plain LRU would evict each one just
    before it is wanted: every scan missing as much as the first), and pages
    point lookups keep using stay cached through the scans."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=4096)
    table(p, rows=300, size=3000)  # one row per page: ~300 pages
    scan = "SELECT count(*), sum(length(v)) FROM t"
    with closing(drivers.connect(driver, p.url, poll_interval=0, cache_size=200 * 4096)) as conn:
        rep = lsvfs.open_replicas()[p.url]
        drivers.script(conn, "PRAGMA cache_size = 0")  # every page read crosses the VFS
        want = p.rows(scan)

        def misses_of(sql: str, *args: Any) -> int:
            before = rep.cache.misses
            conn.execute(sql, args).fetchall()
            return rep.cache.misses - before

        def bytes_read_by(sql: str) -> int:
            before = rep.stats()["storage"]["local_read"]["bytes"]
            assert conn.execute(sql).fetchall() == want
            return rep.stats()["storage"]["local_read"]["bytes"] - before

        hot = [7, 150, 290]
        for _ in range(2):
            for i in hot:
                misses_of("SELECT v FROM t WHERE id = ?", i)
        first = bytes_read_by(scan)
        assert first >= 300 * 3000
        later = [bytes_read_by(scan) for _ in range(3)]
        # Kept: about the cache less a 64-page read-ahead run at either end.
        assert all(b <= first * 0.7 for b in later), (first, later)
        assert rep.stats()["cache"]["evictions"] > 0
        assert sum(misses_of("SELECT v FROM t WHERE id = ?", i) for i in hot) == 0, "the scans evicted hot pages"


def test_closing_the_last_connection_frees_the_cached_pages_at_once(tmp_path: Path) -> None:
    """The frame cache's pages go when the replica closes, not when the
    garbage collector later finds the Replica (in the middle of whatever runs
    then, with two caches' memory held meanwhile); the counters stay."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=4096)
    table(p, rows=100, size=3000)
    conn = lsvfs.connect(p.url, poll_interval=0)
    rep = lsvfs.open_replicas()[p.url]
    assert conn.execute("SELECT sum(length(v)) FROM t").fetchall() == p.rows("SELECT sum(length(v)) FROM t")
    assert rep.cache.bytes >= 100 * 4096 and rep.cache.misses > 0
    misses = rep.cache.misses
    conn.close()
    assert p.url not in lsvfs.open_replicas()
    assert (rep.cache.bytes, len(rep.cache), rep.cache.misses) == (0, 0, misses)
