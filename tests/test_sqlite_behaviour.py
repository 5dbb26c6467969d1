"""SQLite's behaviour on the read-only VFS: page sizes, the lock page, the
page 1 header, empty replicas, auto-vacuum and PRAGMAs (scenarios 5, 18-22).

See tests/TEST_PLAN.md for the scenario -> test map and what each proves.
"""

from __future__ import annotations

import struct
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import apsw
import pytest
import ltx_writer
from replica_file import ReplicaFile
from scenario_support import FAST, big_table, rows, unshim, workload
from synthetic import (
    DirTarget,
    RawPrimary,
    SyntheticPrimary,
    make_target,
    open_replica,
)

import lsvfs
from lsvfs import ltx
from lsvfs.vfs import register

# ---- 5: page sizes -----------------------------------------------------------------------

@pytest.mark.parametrize("page_size", [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536])
def test_s05_page_arithmetic_at_every_page_size(tmp_path: Path, replicated_primary: Any,
                                               page_size: int) -> None:
    """Scenario 5: the VFS file turns byte offsets into page numbers correctly
    at every page size, for reads inside one page, straddling page boundaries,
    spanning many pages, and running past the end; and SQL over real
    Litestream at every size reads the primary's rows with integrity_check ok
    (merged from test_vfs.py::test_every_page_size)."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=page_size)
    p.commit("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    p.commit("INSERT INTO t(v) VALUES (randomblob(?))", many=[(page_size // 3,)] * 40)
    image = p.image()
    ps = page_size
    with open_replica(p.url, poll_interval=0) as rep:
        f = ReplicaFile(register(), rep.url)
        try:
            f.xLock(apsw.SQLITE_LOCK_SHARED)
            size = f.xFileSize()
            assert size == len(image) and size % ps == 0 and size // ps > 10
            whole = b"".join(f.xRead(ps, off) for off in range(0, size, ps))
            assert unshim(whole[:ps], image) + whole[ps:] == image
            cases = [(0, 100), (ps - 10, 20), (ps // 2, 3 * ps), (5 * ps - 1, 2), (size - 7, 7),
                     (ps, size - ps), (size - ps // 2, ps)]
            for off, amount in cases:
                got = f.xRead(amount, off)
                want = whole[off:off + amount]
                assert got == want, (off, amount)
            assert f.xRead(ps, size) == b""
        finally:
            f.xUnlock(apsw.SQLITE_LOCK_NONE)
            f.xClose()
    with closing(lsvfs.connect(p.url)) as conn:
        assert conn.execute("PRAGMA page_size").fetchall() == [(ps,)]
        assert conn.execute("SELECT id, v FROM t ORDER BY id").fetchall() == p.rows("SELECT id, v FROM t ORDER BY id")
    p = replicated_primary("file", page_size=page_size)
    workload(p, rounds=2)
    p.wait_replicated()
    with closing(lsvfs.connect(p.replica_url)) as conn:
        assert rows(conn, "PRAGMA page_size") == [(page_size,)]
        assert rows(conn) == p.execute("SELECT * FROM t ORDER BY id")
        assert rows(conn, "PRAGMA integrity_check") == [("ok",)]


# ---- 18: lock page -----------------------------------------------------------------------

@pytest.mark.parametrize("page_size", [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536])
def test_s18_reads_across_the_lock_page(tmp_path: Path, page_size: int) -> None:
    """Scenario 18: at every page size, a database reaching past the lock page
    (the page holding byte 2**30, never stored): pages on both sides of it are
    served exactly, the lock page itself reads as zeros, one xRead spanning
    all three is stitched correctly, and xFileSize counts the lock page."""
    raw = RawPrimary(DirTarget(tmp_path / "r"), page_size=page_size)
    lock = ltx.lock_pgno(page_size)
    raw.write([1], commit=1)  # a complete one-page snapshot
    raw.write([2, lock - 1, lock + 1], commit=lock + 1)  # then a sparse growth past the lock page
    with open_replica(raw.url, poll_interval=0) as rep:
        snap = rep.current()
        assert snap.commit == lock + 1 and snap.size == (lock + 1) * page_size
        assert rep.read_page(snap, lock) == bytes(page_size)
        f = ReplicaFile(register(), rep.url)
        try:
            f.xLock(apsw.SQLITE_LOCK_SHARED)
            assert f.xFileSize() == (lock + 1) * page_size
            got = f.xRead(3 * page_size, (lock - 2) * page_size)
            want = raw.content(lock - 1, 2) + bytes(page_size) + raw.content(lock + 1, 2)
            assert got == want
            mid = f.xRead(page_size, (lock - 1) * page_size - page_size // 2)  # straddles into the lock page
            assert mid == want[page_size // 2:page_size // 2 + page_size]
            with pytest.raises(apsw.CorruptError):
                f.xRead(page_size, (lock - 3) * page_size)  # never written: an error, not zeros
            assert f"page {lock - 2} " in f.last_error
        finally:
            f.xUnlock(apsw.SQLITE_LOCK_NONE)
            f.xClose()


# ---- 19: page 1 header -------------------------------------------------------------------

def test_s19_page1_header_is_rewritten_exactly(tmp_path: Path) -> None:
    """Scenario 19: page 1 of a WAL-mode database is served with bytes 18-19 =
    1 (rollback journal), the change counter (24-27) and version-valid-for
    (92-95) = the TXID's low 32 bits, the in-header size (28-31) = the
    snapshot's page count; every other byte is as stored, also for partial
    reads of the header. Connections at one TXID see identical headers; a
    connection pinned to an older TXID sees that TXID's counter."""
    p = SyntheticPrimary(DirTarget(tmp_path / "src"), page_size=1024)
    big_table(p, rows=200)
    target = DirTarget(tmp_path / "r")
    ps = 1024
    images = {}
    for txid in (1, 2):
        img = bytearray(p.image(p.txid))
        img[18] = img[19] = 2  # as a WAL-mode primary stores it
        img[24:28] = struct.pack(">I", 0xAB00 + txid)
        images[txid] = bytes(img)
        pages = [(n // ps + 1, bytes(img[n:n + ps])) for n in range(0, len(img), ps)]
        if txid == 2:
            pages = pages[:1]
        hdr = ltx.Header(ltx.FLAG_NO_CHECKSUM, ps, len(img) // ps, 1 if txid == 1 else 2, txid,
                         1_700_000_000_000 + txid)
        target.put(0, hdr.min_txid, txid, ltx_writer.encode(hdr, pages))
    with open_replica(target.url, poll_interval=0) as rep:
        files = [ReplicaFile(register(), rep.url) for _ in range(2)]
        try:
            heads = []
            for f in files:
                f.xLock(apsw.SQLITE_LOCK_SHARED)
                heads.append(f.xRead(ps, 0))
            h = heads[0]
            stored = images[2][:ps]
            assert heads[0] == heads[1]
            assert h[18:20] == b"\x01\x01"
            assert h[24:28] == h[92:96] == struct.pack(">I", 2)
            assert h[28:32] == struct.pack(">I", len(images[2]) // ps)
            for lo, hi in ((0, 18), (20, 24), (32, 92), (96, ps)):
                assert h[lo:hi] == stored[lo:hi]
            assert files[0].xRead(100, 0) == h[:100] and files[0].xRead(8, 20) == h[20:28]
            for f in files:
                f.xUnlock(apsw.SQLITE_LOCK_NONE)
            assert files[1].pragma("litestream_txid", "1") == "0000000000000001"
            files[1].xLock(apsw.SQLITE_LOCK_SHARED)
            old = files[1].xRead(ps, 0)
            assert old[24:28] == old[92:96] == struct.pack(">I", 1)
            assert old[18:20] == b"\x01\x01"
        finally:
            for f in files:
                f.xUnlock(apsw.SQLITE_LOCK_NONE)
                f.xClose()
    with closing(lsvfs.connect(target.url)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchall() == [("delete",)]
        assert conn.execute("SELECT count(*) FROM t").fetchall() == [(200,)]


def test_s19_data_version_moves_exactly_with_the_txid(tmp_path: Path) -> None:
    """Scenario 19 (the change counter's purpose): PRAGMA data_version, which
    SQLite derives from the change counter, stays put across transactions
    while nothing changes and moves when the connection sees a new TXID."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    big_table(p, rows=10)
    with closing(lsvfs.connect(p.url, poll_interval=0)) as conn, closing(lsvfs.connect(p.url)) as other:
        rep = lsvfs.open_replicas()[p.url]

        def version() -> int:
            conn.execute("SELECT count(*) FROM t").fetchall()
            return int(conn.execute("PRAGMA data_version").fetchall()[0][0])

        v0 = version()
        assert version() == v0 == version()
        p.commit("INSERT INTO t(k) VALUES (1)")
        assert rep.poll()
        v1 = version()
        assert v1 != v0 and version() == v1
        assert other.execute("SELECT count(*) FROM t").fetchall() == [(11,)]
        assert version() == v1


# ---- 20: empty and edge-case replicas ----------------------------------------------------

@pytest.mark.parametrize("storage", ["file", "s3"])
@pytest.mark.parametrize("case", ["nothing", "junk_only", "no_snapshot", "empty_database", "emptied"])
def test_s20_empty_and_edge_case_replicas(tmp_path: Path, request: pytest.FixtureRequest, storage: str,
                                          case: str) -> None:
    """Scenario 20: an empty replica (nothing, or only non-LTX names such as
    Litestream's temp files) is a ReplicaError saying so; L0 files with no
    snapshot are a GapError; the snapshot of a database with no tables, and a
    database whose tables were all dropped and vacuumed, open and answer."""
    target = make_target(storage, tmp_path, request)
    p = SyntheticPrimary(target, page_size=1024)
    if case == "nothing":
        with pytest.raises(lsvfs.ReplicaError, match="empty"):
            lsvfs.connect(p.url)
    elif case == "junk_only":
        hdr = ltx.Header(ltx.FLAG_NO_CHECKSUM, 1024, 1, 1, 1, 0)
        data = ltx_writer.encode(hdr, [(1, bytes(1024))])
        if isinstance(target, DirTarget):
            d = target.root / "ltx" / "0"
            d.mkdir(parents=True)
            (d / "0000000000000001-0000000000000001.ltx.tmp").write_bytes(data)
            (d / "README").write_text("not a file of ours")
        else:
            target.moto.bulk_put(target.bucket, [(f"{target.path}/0000/0000000000000001-0000000000000001.ltx.tmp",
                                                  data), (f"{target.path}/0000/README", b"x")])
        with pytest.raises(lsvfs.ReplicaError, match="empty"):
            lsvfs.connect(p.url)
    elif case == "no_snapshot":
        p.commit("CREATE TABLE t(v)", publish=False)
        for i in range(3):
            p.commit("INSERT INTO t VALUES (?)", (i,))
        with pytest.raises(lsvfs.GapError, match="no snapshot"):
            lsvfs.connect(p.url)
    elif case == "empty_database":
        p.commit("PRAGMA user_version = 5", transaction=False)  # one page, no tables
        with closing(lsvfs.connect(p.url)) as conn:
            assert conn.execute("SELECT count(*) FROM sqlite_master").fetchall() == [(0,)]
            assert conn.execute("PRAGMA page_count").fetchall() == [(1,)]
            assert conn.execute("PRAGMA user_version").fetchall() == [(5,)]
    else:
        big_table(p, rows=100)
        p.commit("DROP TABLE t")
        p.commit("VACUUM", transaction=False)
        with closing(lsvfs.connect(p.url)) as conn:
            assert conn.execute("SELECT count(*) FROM sqlite_master").fetchall() == [(0,)]
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert lsvfs.open_replicas() == {}


@pytest.mark.parametrize("storage", ["file", "s3"])
def test_s20_open_waits_for_the_first_file(tmp_path: Path, request: pytest.FixtureRequest, storage: str,
                                           replicated_primary: Any) -> None:
    """Scenario 20 (the plan's TODO "open even when no files are available"):
    with open_timeout, connect() waits for the replica's first file, over
    both backends, and fails only when the timeout passes. Over a directory
    also: an empty directory times out, and a real Litestream started after
    connect() began is waited for (merged from
    test_vfs.py::test_empty_replica_times_out_then_files_appear)."""
    p = SyntheticPrimary(make_target(storage, tmp_path, request), page_size=1024)
    t0 = time.monotonic()
    with pytest.raises(lsvfs.ReplicaError, match="empty"):
        lsvfs.connect(p.url, open_timeout=0.2)
    assert time.monotonic() - t0 >= 0.2
    timer = threading.Timer(0.3, lambda: p.commit("CREATE TABLE late(v)"))
    timer.start()
    try:
        with closing(lsvfs.connect(p.url, open_timeout=10, poll_interval=0.05)) as conn:
            assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("late",)]
    finally:
        timer.cancel()
    if storage == "file":
        empty = tmp_path / "empty"
        empty.mkdir()
        t0 = time.monotonic()
        with pytest.raises(lsvfs.ReplicaError, match="empty"):
            lsvfs.connect(str(empty), open_timeout=0.3)
        assert time.monotonic() - t0 >= 0.3
        p = replicated_primary("file", start=False)
        p.execute("CREATE TABLE t(v)")
        p.execute("INSERT INTO t VALUES ('late')")
        result: list[Any] = []
        opener = threading.Thread(target=lambda: result.append(
            lsvfs.connect(p.replica_url, open_timeout=30, **FAST)))
        opener.start()
        time.sleep(0.3)
        p.start()
        opener.join(timeout=40)
        assert result, "connect did not return"
        conn = result[0]
        assert rows(conn, "SELECT v FROM t") == [("late",)]
        conn.close()


# ---- 21: auto-vacuum ---------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["FULL", "INCREMENTAL"])
def test_s21_auto_vacuum_shrinks_and_regrows(tmp_path: Path, mode: str) -> None:
    """Scenario 21: with auto_vacuum FULL (shrinks at commit) and INCREMENTAL
    (shrinks at PRAGMA incremental_vacuum) the replica's size follows the
    primary down and back up; pages past the shrink point never come back
    stale; integrity_check passes at every step; a transaction pinned before
    the shrink still reads its rows."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024, auto_vacuum=mode)
    big_table(p, rows=1000)
    sql = "SELECT id, k, v FROM t ORDER BY id"
    with closing(lsvfs.connect(p.url, poll_interval=0)) as conn, closing(lsvfs.connect(p.url)) as pinned:
        rep = lsvfs.open_replicas()[p.url]
        big = conn.execute("PRAGMA page_count").fetchall()[0][0]
        pinned.execute("BEGIN")
        before = pinned.execute(sql).fetchall()
        p.commit("DELETE FROM t WHERE id > 100")
        if mode == "INCREMENTAL":
            p.commit("PRAGMA incremental_vacuum", transaction=False)
        assert rep.poll()
        small = conn.execute("PRAGMA page_count").fetchall()[0][0]
        assert small < big / 3 and small == p.commits[p.txid]
        assert conn.execute(sql).fetchall() == p.rows(sql)
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert pinned.execute(sql).fetchall() == before
        pinned.execute("COMMIT")
        p.commit("INSERT INTO t(k, v) SELECT k + 1, randomblob(150) FROM t")
        p.commit("INSERT INTO t(k, v) SELECT k + 2, randomblob(150) FROM t")
        assert rep.poll()
        assert conn.execute("PRAGMA page_count").fetchall()[0][0] == p.commits[p.txid] > small
        assert conn.execute(sql).fetchall() == p.rows(sql)
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        snap = rep.current()
        for pgno in range(small + 1, snap.commit + 1):
            assert rep.read_page(snap, pgno) == p.page(p.txid, pgno)


# ---- 22: PRAGMAs -------------------------------------------------------------------------

def test_s22_pragmas_on_a_replica_connection(tmp_path: Path) -> None:
    """Scenario 22: journal_mode reads 'delete' and cannot be switched to WAL;
    per-connection PRAGMAs (cache_size, temp_store, mmap_size) round-trip;
    database PRAGMAs read the replica's values (page_size, page_count,
    user_version, schema_version, freelist_count, quick_check) and writing
    ones fail read-only; the litestream_* PRAGMAs work in any case and with a
    schema prefix; unknown PRAGMAs are ignored, as SQLite does."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=2048)
    big_table(p, rows=100)
    p.commit("PRAGMA user_version = 42", transaction=False)
    with closing(lsvfs.connect(p.url, poll_interval=0)) as conn:
        def one(sql: str) -> Any:
            rows = conn.execute(sql).fetchall()
            return rows[0][0] if rows else None

        assert one("PRAGMA journal_mode") == "delete"
        assert one("PRAGMA journal_mode=WAL") == "delete"
        assert one("PRAGMA journal_mode") == "delete"
        conn.execute("PRAGMA cache_size=-1234")
        assert one("PRAGMA cache_size") == -1234
        conn.execute("PRAGMA temp_store=MEMORY")
        assert one("PRAGMA temp_store") == 2
        conn.execute("PRAGMA page_size=4096")
        assert one("PRAGMA page_size") == 2048
        assert one("PRAGMA page_count") == p.commits[p.txid]
        assert one("PRAGMA user_version") == 42
        assert one("PRAGMA schema_version") == p.rows("PRAGMA schema_version")[0][0]
        assert one("PRAGMA freelist_count") == p.rows("PRAGMA freelist_count")[0][0]
        assert one("PRAGMA quick_check") == "ok"
        for sql in ("PRAGMA user_version=1", "PRAGMA incremental_vacuum", "VACUUM", "ANALYZE"):
            with pytest.raises(apsw.ReadOnlyError):
                conn.execute(sql).fetchall()
        txid = f"{p.txid:016x}"
        assert one("PRAGMA litestream_txid") == txid == one("PRAGMA LITESTREAM_TXID") == one(
            "PRAGMA main.litestream_txid")
        assert int(one("PRAGMA litestream_lag")) >= 0
        assert one("PRAGMA litestream_time").endswith("Z")
        assert conn.execute("PRAGMA no_such_pragma").fetchall() == []
        assert conn.execute("SELECT count(*) FROM t").fetchall() == [(100,)]
