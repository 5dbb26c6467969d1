"""Remote replicas at real latency (issue 8): parallel read-ahead, prefetch
into the page cache, and hydration to a local file.

Real parts throughout: the replicas are written by a real `litestream
replicate` (tests/replication.py), the request-count tests read them from the
session's moto S3, and a directory replica stands in for remote storage only
behind `Remote` (a counting wrapper whose `local = False` sends it down the
remote path: Python reads, read-ahead windows, prefetch).

The oracle for pages is `litestream restore -txid`: every page a transaction
(or the hydration file) holds equals that TXID's restore, page 1 compared as
stored (scenario_support.unshim).

See tests/TEST_PLAN.md ("Prefetch and hydration") for what each test proves.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw
import drivers
import pytest
from replica_file import ReplicaFile
from drivers import DRIVERS
from faults import BlockingStorage, chaos
from replication import MotoS3, ReplicatedPrimary, wait_until
from scenario_support import txid_of, unshim
from wrappers import WrappedStorage

import lsvfs
import lsvfs.hydration
import lsvfs.replica
import lsvfs.replica.lifecycle
import lsvfs.replica.loader
import lsvfs.replica.reader
from lsvfs import ltx
from lsvfs.options import resolve
from lsvfs.registry import acquire, release
from lsvfs.storage import open_storage
from lsvfs.storage.base import FileInfo, StorageClient
from lsvfs.storage.redact import redact_url
from lsvfs.vfs import register

MiB = 1 << 20
ROWS = "SELECT id, k, v FROM t ORDER BY id"
SCANS = ("SELECT count(*), sum(k), sum(length(v)) FROM t",
         "SELECT count(*), sum(k) FROM t INDEXED BY t_k WHERE k >= 0")
BACKGROUND = ("lsvfs-fetch ", "lsvfs-hydrate ", "lsvfs-poll ")


# ---- helpers -----------------------------------------------------------------------------

class Remote(WrappedStorage):
    """A real storage client that lsvfs treats as remote (`local = False`, so a
    directory replica too goes through Python reads, read-ahead and prefetch);
    every request counted in `calls`, every ranged read recorded in `reads`
    as (thread name, file, offset, length)."""

    local = False

    def __init__(self, inner: StorageClient) -> None:
        super().__init__(inner)
        self.reads: list[tuple[str, str, int, int]] = []

    def read(self, info: FileInfo, offset: int, length: int) -> bytes:
        with self._lock:
            self.reads.append((threading.current_thread().name, info.name, offset, length))
        return super().read(info, offset, length)


class GatedReads(Remote):
    """Reads made on the replica's background workers (threads named
    `lsvfs-fetch ...`) wait for `gate`; a reader's own reads never do. At most
    `max_block` seconds each: `expired` counts waits that ran out (a test
    asserts none did)."""

    def __init__(self, inner: StorageClient, max_block: float = 60.0) -> None:
        super().__init__(inner)
        self.gate = threading.Event()
        self.max_block = max_block
        self.blocked = 0
        self.expired = 0

    def read(self, info: FileInfo, offset: int, length: int) -> bytes:
        if threading.current_thread().name.startswith("lsvfs-fetch ") and not self.gate.is_set():
            with self._lock:
                self.blocked += 1
            try:
                if not self.gate.wait(self.max_block):
                    with self._lock:
                        self.expired += 1
            finally:
                with self._lock:
                    self.blocked -= 1
        return super().read(info, offset, length)


class LateReplies(Remote):
    """Reads on the replica's background workers get their bytes at once but,
    while `gate` is shut, hand them back only when it opens (at most
    `max_block` seconds): a reply still in flight. The first `let_through`
    replies after it shuts pass. `waiting` counts the replies held now."""

    def __init__(self, inner: StorageClient, max_block: float = 60.0) -> None:
        super().__init__(inner)
        self.gate = threading.Event()
        self.gate.set()
        self.max_block = max_block
        self.let_through = 0
        self.waiting = 0

    def read(self, info: FileInfo, offset: int, length: int) -> bytes:
        data = super().read(info, offset, length)
        if threading.current_thread().name.startswith("lsvfs-fetch ") and not self.gate.is_set():
            with self._lock:
                self.let_through -= 1
                if self.let_through >= 0:
                    return data
                self.waiting += 1
            try:
                self.gate.wait(self.max_block)
            finally:
                with self._lock:
                    self.waiting -= 1
        return data


def gets(storage: WrappedStorage) -> int:
    """GET requests (ranged and whole reads) made through `storage`."""
    return storage.calls["read"] + storage.calls["read_all"]


def frames(rep: lsvfs.replica.Replica) -> list[tuple[int, int]]:
    """The (slot, offset) of every page of the replica's current snapshot."""
    snap = rep.current()
    return [(loc[0], loc[1]) for loc in snap.table.get_range(1, snap.commit) if loc is not None]


def background_threads(name: str) -> list[str]:
    """Live lsvfs-fetch / lsvfs-hydrate / lsvfs-poll threads of the replica named `name`."""
    return [t.name for t in threading.enumerate()
            if t.is_alive() and t.name.startswith(BACKGROUND) and t.name.split(" ", 1)[1] == name]


def hydrated_at(rep: lsvfs.replica.Replica, txid: int) -> bool:
    """The hydration file holds all of the current snapshot, synced at `txid`."""
    h = rep.stats()["hydration"]
    return bool(h is not None and h["progress"] == 100 and h["txid"] == f"{txid:016x}")


def replica_of(url: str) -> lsvfs.replica.Replica:
    return lsvfs.open_replicas()[url]


@contextmanager
def pinned(url: str) -> Iterator[ReplicaFile]:
    """The replica's main file opened on the VFS without SQLite, under a SHARED
    lock: one read transaction, pinned to one TXID until the block ends."""
    f = ReplicaFile(register(), url)
    try:
        f.xLock(apsw.SQLITE_LOCK_SHARED)
        yield f
    finally:
        with suppress(apsw.Error):
            f.xUnlock(apsw.SQLITE_LOCK_NONE)
        f.xClose()


def all_pages(f: ReplicaFile) -> tuple[int, bytes]:
    """(TXID, every page) as the pinned transaction of `f` sees them."""
    snap = f.pinned
    assert snap is not None, "not in a transaction"
    ps = snap.page_size
    return snap.txid, b"".join(f.xRead(ps, off) for off in range(0, f.xFileSize(), ps))


def assert_same_db(got: bytes, expected: bytes, ps: int, what: str) -> None:
    """`got` is the database `expected`, page 1 compared as stored."""
    assert len(got) == len(expected), f"{what}: {len(got)} bytes, restore has {len(expected)}"
    assert got[:ps] == expected[:ps] or unshim(got[:ps], expected) == expected[:ps], f"{what}: page 1 differs"
    bad = [n // ps + 1 for n in range(ps, len(got), ps) if got[n:n + ps] != expected[n:n + ps]]
    assert not bad, f"{what}: pages {bad[:10]} differ from the restore ({len(bad)} in all)"


def restored(p: ReplicatedPrimary, tmp: Path, txid: int) -> bytes:
    """`litestream restore -txid` as bytes (restored once per TXID)."""
    out = tmp / f"restore-{txid:x}.db"
    if not out.exists():
        p.litestream_restore(out, txid=txid)
    return out.read_bytes()


def query_restore(p: ReplicatedPrimary, tmp: Path, txid: int, sql: str) -> list[tuple[Any, ...]]:
    """`sql` on the restore of `txid`, opened immutable (nothing written beside it)."""
    restored(p, tmp, txid)
    conn = apsw.Connection(f"file:{tmp / f'restore-{txid:x}.db'}?immutable=1",
                           flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def in_txn(conn: Any, sql: str) -> tuple[int, list[tuple[Any, ...]]]:
    """(TXID, rows of `sql`) read in one transaction."""
    conn.execute("BEGIN")
    try:
        rows = conn.execute(sql).fetchall()
        return txid_of(conn), rows
    finally:
        conn.execute("COMMIT")


def lsvfs_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("lsvfs") and r.levelno >= logging.WARNING]


# ---- shared replicas ---------------------------------------------------------------------

@dataclass(frozen=True)
class Frozen:
    """A primary whose replica stopped changing: litestream wrote it, then stopped."""

    p: ReplicatedPrimary
    txid: int
    image: bytes

    @property
    def url(self) -> str:
        return str(self.p.replica_url)

    @property
    def size(self) -> int:
        return len(self.image)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return self.p.execute(sql)


def _frozen(workdir: Path, batches: int, **config: Any) -> Iterator[Frozen]:
    """`batches` x 1,000 rows of 1,000 random bytes (index on k), written
    before litestream starts (so its first sync holds them all), replicated,
    and litestream stopped."""
    p = ReplicatedPrimary(workdir, start=False, **config)
    try:
        for i in range(batches):
            p.insert_rows(1000, 1000, seed=i)
        p.start()
        txid = p.wait_replicated()
        p.stop()
        yield Frozen(p, txid, p.image())
    finally:
        p.close()


@pytest.fixture(scope="module")
def s3_db(moto_s3: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Frozen]:
    """~4 MB on the session's moto S3."""
    yield from _frozen(tmp_path_factory.mktemp("s3db"), 4, storage="s3", s3=moto_s3)


@pytest.fixture(scope="module")
def dir_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Frozen]:
    """~16 MB in a directory (read through `Remote` where remote behaviour is wanted)."""
    yield from _frozen(tmp_path_factory.mktemp("dirdb"), 16, storage="file")


@contextmanager
def on_storage(driver: str, url: str, storage: StorageClient, **options: Any) -> Iterator[tuple[Any, Any]]:
    """A `driver` connection to the replica at `url` read through `storage`:
    an apsw connection opens the shared Replica on it (with `options`), and
    the `driver` connection shares that Replica. Yields (connection, Replica)."""
    holder = lsvfs.connect(url, storage=storage, **options)
    try:
        conn = holder if driver == "apsw" else drivers.connect(driver, url)
        try:
            yield conn, replica_of(url)
        finally:
            if conn is not holder:
                conn.close()
    finally:
        holder.close()


# ---- 1: read-ahead -----------------------------------------------------------------------

@pytest.mark.parametrize("driver", DRIVERS)
def test_cold_full_scan_on_s3_makes_about_one_get_per_mib(s3_db: Frozen, driver: str) -> None:
    """A cold scan of every table and index page of a ~4 MB database on S3,
    prefetch off, makes at most (db bytes / 1 MiB) + 10 GETs, open included
    (counted on a wrapper around the real S3 client): sequential misses grow
    into parallel 2 MiB read-ahead windows. The scan really fetched the
    database (bytes read >= 90% of it) and its results equal the primary's."""
    s3 = Remote(s3_db.p.open_storage())
    with on_storage(driver, s3_db.url, s3, prefetch="off", poll_interval=0) as (conn, rep):
        got = [conn.execute(q).fetchall() for q in SCANS]
        fetched = rep.stats()["storage"]["ranged_read"]["bytes"] + rep.stats()["storage"]["whole_read"]["bytes"]
        assert rep.stats()["prefetch"]["requests"] == 0
    assert got == [s3_db.rows(q) for q in SCANS]
    assert fetched >= s3_db.size * 9 // 10, f"the scan read {fetched} bytes of a {s3_db.size}-byte database"
    assert gets(s3) <= s3_db.size // MiB + 10, f"{gets(s3)} GETs for {s3_db.size / MiB:.1f} MiB ({s3.calls})"


# ---- 2: prefetch -------------------------------------------------------------------------

@pytest.mark.parametrize("driver", DRIVERS)
def test_prefetch_auto_caches_the_snapshot_then_lookups_read_nothing(s3_db: Frozen, driver: str) -> None:
    """Default options on S3 and a database smaller than cache_size: right
    after open the whole snapshot is fetched into the cache (every page, in
    a few 2 MiB requests), after which 200 random lookups through SQL make
    no storage read and no cache miss, and return the primary's rows."""
    s3 = Remote(s3_db.p.open_storage())
    with on_storage(driver, s3_db.url, s3) as (conn, rep):
        assert rep.options.prefetch == "auto" and s3_db.size < rep.options.cache_size
        snap = rep.current()
        wait_until(lambda: rep.stats()["cache"]["entries"] == snap.table.count, 30, interval=0.02,
                   what="the whole snapshot in the cache")
        assert all(f in rep.cache for f in frames(rep))
        pre = rep.stats()["prefetch"]
        assert pre["requests"] == pre["done"] and pre["pending"] == 0
        assert 1 <= pre["requests"] <= s3_db.size // (2 * MiB) + 2, pre
        assert gets(s3) <= s3_db.size // (2 * MiB) + 6, f"few large requests expected: {s3.calls}"
        reads, misses = gets(s3), rep.stats()["cache"]["misses"]
        want = {row[0]: row for row in s3_db.rows(ROWS)}
        rnd = random.Random(2)
        for _ in range(200):
            i = rnd.choice(list(want))
            assert conn.execute("SELECT id, k, v FROM t WHERE id = ?", (i,)).fetchall() == [want[i]]
        assert gets(s3) == reads, f"lookups after prefetch read storage: {s3.calls}"
        assert rep.stats()["cache"]["misses"] == misses


def test_prefetch_off_fetches_nothing_ahead(s3_db: Frozen) -> None:
    """prefetch=off: no background fetch is ever started (no lsvfs-fetch
    thread: with `auto` one starts inside connect()), and a lookup caches
    only the few pages it needed."""
    s3 = Remote(s3_db.p.open_storage())
    with closing(lsvfs.connect(s3_db.url, storage=s3, prefetch="off", poll_interval=0)) as conn:
        rep = replica_of(s3_db.url)
        assert not [t for t in background_threads(rep.name) if t.startswith("lsvfs-fetch ")]
        assert conn.execute("SELECT id, k, v FROM t WHERE id = 2000").fetchall() == \
            s3_db.rows("SELECT id, k, v FROM t WHERE id = 2000")
        st = rep.stats()
        assert st["prefetch"] == {"requests": 0, "done": 0, "pending": 0}
        assert 0 < st["cache"]["entries"] < rep.current().table.count // 20, st["cache"]
        assert not [t for t in background_threads(rep.name) if t.startswith("lsvfs-fetch ")]
    with closing(lsvfs.connect(s3_db.url, storage=Remote(s3_db.p.open_storage()), poll_interval=0)):
        # The control: with the default, connect() has started the fetcher already.
        assert [t for t in background_threads(replica_of(s3_db.url).name) if t.startswith("lsvfs-fetch ")]


def test_prefetch_on_stops_at_the_cache_budget(s3_db: Frozen) -> None:
    """prefetch=on with a 1 MiB cache and a ~4 MB database: the prefetch
    fetches pages 1..budget and stops (one request of about 1 MiB), and
    the cache's bytes never pass max_bytes, sampled throughout."""
    s3 = Remote(s3_db.p.open_storage())
    samples: list[dict[str, int]] = []
    with closing(lsvfs.connect(s3_db.url, storage=s3, prefetch="on", cache_size="1MiB", poll_interval=0)):
        rep = replica_of(s3_db.url)

        def done() -> bool:
            st = rep.stats()
            samples.append(st["cache"])
            pre = st["prefetch"]
            return bool(pre["requests"] and pre["done"] == pre["requests"] and pre["pending"] == 0)

        wait_until(done, 30, interval=0.002, what="prefetch done")
        snap = rep.current()
        budget = MiB // snap.page_size
        assert rep.stats()["prefetch"]["requests"] == 1
        # The prefetch's request, whichever thread ran it (connect() reads page 1 and may take it over);
        # the open's index reads are the other, smaller ones.
        big = [r[3] for r in s3.reads if r[3] > lsvfs.replica.loader.TAIL_READ]
        assert len(big) == 1 and MiB * 9 // 10 <= big[0] <= MiB + 256 * 1024, big  # LZ4 frames: a little under
        held = {n: loc[0] for n, loc in enumerate(snap.table.get_range(1, snap.commit), start=1)
                if loc is not None and (loc[0], loc[1]) in rep.cache}  # pgno -> slot
        assert set(range(1, budget + 1)) - {ltx.lock_pgno(snap.page_size)} <= set(held)
        # Beyond the budget only pages of the small files open read whole may be cached.
        past = [n for n, slot in held.items() if n > budget and rep.file(slot).size > lsvfs.replica.loader.TAIL_READ]
        assert not past, f"prefetch went past the budget of {budget} pages: {past[:10]}"
        samples.append(rep.stats()["cache"])
    assert samples and all(s["bytes"] <= s["max_bytes"] == MiB for s in samples), max(s["bytes"] for s in samples)


def test_a_page_a_reader_waits_for_jumps_the_prefetch_queue(dir_db: Frozen, monkeypatch: pytest.MonkeyPatch) -> None:
    """While every fetcher worker is stuck in a prefetch read (GatedReads
    holds them) and most prefetch jobs are queued, a read of the last page
    on the VFS (as SQLite reads it) takes the queued job that covers it and
    runs it itself: it returns the right bytes while the gate is still
    shut, no other prefetch job has finished, and most are still pending.
    The request for it was made on the reader's own thread.

    The Replica is opened without a SQLite connection: opening one reads
    page 1, which would wait (rightly) for the stuck job that covers it."""
    monkeypatch.setattr(lsvfs.replica.reader, "CHUNK_BYTES", 256 * 1024)  # 64 prefetch jobs for 8 workers
    gated = GatedReads(open_storage(dir_db.url))
    workers = lsvfs.replica.lifecycle.FETCH_WORKERS
    rep = acquire(dir_db.url, resolve({"prefetch": "on", "poll_interval": 0}), gated)
    try:
        try:
            wait_until(lambda: gated.blocked == workers, 30, interval=0.01,
                       what="every fetch worker blocked in a prefetch read")
            jobs = rep.stats()["prefetch"]["requests"]
            assert jobs >= 60 and rep.prefetch_done == 0, rep.stats()["prefetch"]
            snap = rep.current()
            pgno = snap.commit
            loc = snap.table.get(pgno)
            assert loc is not None
            job = rep.fetcher.find(loc[0], loc[1])
            assert job is not None and not job.started, "the last page's prefetch job is queued"
            with pinned(dir_db.url) as f:
                page = f.xRead(snap.page_size, (pgno - 1) * snap.page_size)
            assert page == dir_db.image[(pgno - 1) * snap.page_size:pgno * snap.page_size]
            assert job.started and job.future.done() and job.future.exception() is None
            assert not gated.gate.is_set() and gated.blocked == workers
            assert rep.prefetch_done == 1, "only the job the reader took over has finished"
            assert rep.fetcher.pending() == jobs - workers - 1 > jobs // 2
            mine = [r for r in gated.reads if r[2] <= loc[1] < r[2] + r[3] and r[0] == threading.current_thread().name]
            assert mine, "the reader made the request for its page itself"
        finally:
            gated.gate.set()
        wait_until(lambda: rep.stats()["prefetch"]["done"] == jobs, 30, interval=0.02, what="prefetch finishes")
        assert all(f in rep.cache for f in frames(rep))
    finally:
        release(rep)
    assert gated.expired == 0


# ---- 3, 4: hydration is isolated ---------------------------------------------------------

def _writer(p: ReplicatedPrimary, stop: threading.Event, errors: list[str]) -> None:
    """Commits to the primary (its own connection) until `stop`, at most 400 times."""
    conn = apsw.Connection(str(p.db_path))
    conn.set_busy_timeout(5000)
    rnd = random.Random(3)
    try:
        for i in range(400):
            if stop.wait(0.01):
                return
            with conn:
                conn.execute("INSERT INTO t(k, v) VALUES (?, randomblob(?))", (rnd.randrange(1 << 30), 900))
                conn.execute("UPDATE t SET v = randomblob(900) WHERE id % 53 = ?", (i % 53,))
    except Exception as exc:  # noqa: BLE001 - asserted by the test
        errors.append(repr(exc))
    finally:
        conn.close()


def test_hydration_under_live_writes_equals_the_restore_at_every_txid(
        replicated_primary: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Real Litestream replicates while a writer commits; the replica is
    opened with hydration on. At several moments every page is read in one
    transaction on the VFS, and the same TXID is queried through both
    drivers: each equals `litestream restore -txid` of its TXID. Once the
    writer stops and the file is complete (progress 100, recorded TXID =
    the primary's), the hydration file's bytes equal the restore of the
    recorded TXID, and a full read is served from it (no storage read, no
    page-cache lookup)."""
    caplog.set_level(logging.WARNING, logger="lsvfs")
    p: ReplicatedPrimary = replicated_primary("file")
    p.insert_rows(1500, 900, seed=1)
    p.wait_replicated()
    hp = tmp_path / "hydrated.db"
    stop = threading.Event()
    errors: list[str] = []
    seen: list[tuple[int, bytes]] = []
    sql_seen: list[tuple[str, int, list[tuple[Any, ...]]]] = []
    query = "SELECT count(*), sum(k), sum(length(v)), max(id) FROM t"
    writer = threading.Thread(target=_writer, args=(p, stop, errors))
    with closing(lsvfs.connect(p.replica_url, hydration_path=str(hp), poll_interval=0.05)) as holder:
        rep = replica_of(p.replica_url)
        conns = {"apsw": holder, "sqlite3": drivers.connect("sqlite3", p.replica_url)}
        try:
            writer.start()
            for _ in range(4):
                last = max((t for t, _ in seen), default=0)
                wait_until(lambda last=last: txid_of(holder) > last, 30, interval=0.02, what="the replica moves on")
                with pinned(p.replica_url) as f:
                    txid, data = all_pages(f)
                seen.append((txid, data))
                for driver, conn in conns.items():
                    sql_seen.append((driver, *in_txn(conn, query)))
            stop.set()
            writer.join(30)
            assert not writer.is_alive() and not errors, errors
            final = p.wait_replicated()
            wait_until(lambda: hydrated_at(rep, final), 30, interval=0.05, what="hydrated at the final TXID")
            with pinned(p.replica_url) as f:
                before = rep.stats()
                txid, data = all_pages(f)
                after = rep.stats()
            assert txid == final
            for kind in ("ranged_read", "whole_read", "local_read"):
                assert after["storage"][kind] == before["storage"][kind], "a complete hydration file serves every page"
            assert (after["cache"]["hits"], after["cache"]["misses"]) == \
                (before["cache"]["hits"], before["cache"]["misses"])
            seen.append((txid, data))
            for driver, conn in conns.items():
                sql_seen.append((driver, *in_txn(conn, query)))
        finally:
            stop.set()
            conns["sqlite3"].close()
    assert len({t for t, _ in seen}) >= 4, [t for t, _ in seen]
    for txid, data in seen:
        assert_same_db(data, restored(p, tmp_path, txid), p.page_size, f"pages at TXID {txid:x}")
    for driver, txid, rows in sql_seen:
        assert rows == query_restore(p, tmp_path, txid, query), f"{driver} at TXID {txid:x}"
    record = json.loads((tmp_path / "hydrated.db.lsvfs.json").read_text())
    assert record["txid"] == final and record["replica"] == p.replica_url
    assert_same_db(hp.read_bytes(), restored(p, tmp_path, record["txid"]), p.page_size, "hydration file")
    assert not lsvfs_warnings(caplog)


def test_long_read_transaction_keeps_its_txid_while_hydration_moves_on(
        replicated_primary: Any, tmp_path: Path) -> None:
    """A read transaction open (through each driver, and on the VFS) while the
    primary rewrites rows and the hydration file moves on to the new TXID
    (progress 100 there): the transaction still sees its old rows, its pages
    still equal the old restore though the file now holds the new bytes of
    the changed pages, and after COMMIT it sees the new rows."""
    p: ReplicatedPrimary = replicated_primary("file")
    p.insert_rows(1000, 900, seed=4)
    old = p.wait_replicated()
    old_rows = p.execute(ROWS)
    with closing(lsvfs.connect(p.replica_url, hydration=True, poll_interval=0.05)) as holder:
        rep = replica_of(p.replica_url)
        conns = {"apsw": holder, "sqlite3": drivers.connect("sqlite3", p.replica_url)}
        try:
            wait_until(lambda: hydrated_at(rep, old), 30, interval=0.05, what="hydrated")
            for conn in conns.values():
                conn.execute("PRAGMA cache_size=2")  # re-reads go back to the VFS
                conn.execute("BEGIN")
                assert conn.execute(ROWS).fetchall() == old_rows
                assert txid_of(conn) == old
            with pinned(p.replica_url) as f:
                assert all_pages(f)[0] == old
                p.update_rows("id % 4 = 0", size=900, seed=5)
                p.insert_rows(100, 900, seed=6)
                new = p.wait_replicated()
                wait_until(lambda: hydrated_at(rep, new), 30, interval=0.05, what="hydrated at the new TXID")
                for driver, conn in conns.items():
                    assert conn.execute(ROWS).fetchall() == old_rows, driver
                    assert txid_of(conn) == old, driver
                before = rep.stats()
                txid, data = all_pages(f)
                after = rep.stats()
                # The old bytes of every page the file moved past were kept in the
                # cache under their old frames as it advanced: no read for them.
                assert after["cache"]["hits"] - before["cache"]["hits"] > 50
                assert after["storage"]["local_read"] == before["storage"]["local_read"]
            assert txid == old
            then = restored(p, tmp_path, old)
            now = restored(p, tmp_path, new)
            assert_same_db(data, then, p.page_size, "the pinned transaction")
            ps = p.page_size
            changed = [n for n in range(ps, len(then), ps) if then[n:n + ps] != now[n:n + ps]]
            assert len(changed) > 50, "the rewrite changed many pages the file now holds anew"
            file = Path(rep.hydrator.path).read_bytes() if rep.hydrator else b""
            assert all(file[n:n + ps] == now[n:n + ps] for n in changed)
            for driver, conn in conns.items():
                conn.execute("COMMIT")
                assert conn.execute(ROWS).fetchall() == p.execute(ROWS), driver
                assert txid_of(conn) == new, driver
        finally:
            conns["sqlite3"].close()


# ---- 5: restart ----------------------------------------------------------------------------

def test_restart_resumes_with_few_requests_and_a_damaged_file_is_rebuilt(
        replicated_primary: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """On S3 (counted on a wrapper around the real client): hydrate to a
    persistent path and close; the primary changes a few rows; reopening
    resumes (INFO "resumed at TXID <old>", no WARNING, no rebuild), fetches
    only the new files' pages (hydration requests <= new files, bytes <= the
    new files' sizes, where the first hydration read all of the database)
    and the file equals the restore of the new TXID. Then bytes in the
    middle of the closed file are flipped: the next open says WARNING
    "rebuilding ... damaged", rebuilds it (rebuilds == 1, a full copy), and
    it equals the restore again."""
    caplog.set_level(logging.INFO, logger="lsvfs")
    p: ReplicatedPrimary = replicated_primary("s3")
    p.insert_rows(2000, 1000, seed=7)
    first = p.wait_replicated()
    size = len(p.image())
    hp = tmp_path / "h.db"

    def hydrate(storage: Remote, txid: int) -> dict[str, Any]:
        with closing(lsvfs.connect(p.replica_url, storage=storage, hydration_path=str(hp), poll_interval=0.05)):
            rep = replica_of(p.replica_url)
            wait_until(lambda: hydrated_at(rep, txid), 30, interval=0.05, what=f"hydrated at {txid:x}")
            st = rep.stats()
            return {**st["hydration"], "read_bytes": st["storage"]["ranged_read"]["bytes"]
                    + st["storage"]["whole_read"]["bytes"]}

    h1 = hydrate(Remote(p.open_storage()), first)
    assert h1["bytes"] >= size * 9 // 10 and h1["rebuilds"] == 0
    assert json.loads((tmp_path / "h.db.lsvfs.json").read_text())["txid"] == first

    p.update_rows("id % 200 = 0", size=1000, seed=8)
    second = p.wait_replicated()
    caplog.clear()
    s3 = Remote(p.open_storage())
    h2 = hydrate(s3, second)
    # Listed after the reopen, so it holds whatever the reopen saw. Files
    # written since the first hydration: L0 files, and perhaps a compaction or
    # snapshot from TXID 1 holding every page (Litestream's choice, by timing).
    files = [f for level in p.replica_files().values() for f in level]
    new_files = [f for f in files if first < f.max_txid <= second]
    assert any(f"resumed at TXID {first:016x}" in r.getMessage() for r in caplog.records), caplog.text
    assert not lsvfs_warnings(caplog)
    assert h2["rebuilds"] == 0
    assert 1 <= h2["requests"] <= len(new_files), (h2, new_files)
    # Whichever new file the open's plan reads the changed pages from, the
    # resume reads no more than the new files, plus each listed file's header
    # and index at the open.
    new_bytes = sum(f.size for f in new_files)
    assert h2["bytes"] <= new_bytes, (h2, new_files)
    assert h2["read_bytes"] <= new_bytes + len(files) * 2 * (64 << 10), (h2, new_files)
    assert gets(s3) <= 2 * len(files) + 2 * len(new_files) + 6, (s3.calls, files)
    assert_same_db(hp.read_bytes(), restored(p, tmp_path, second), p.page_size, "resumed file")

    with open(hp, "r+b") as fh:
        fh.seek(os.path.getsize(hp) // 2)
        chunk = fh.read(64)
        fh.seek(-len(chunk), os.SEEK_CUR)
        fh.write(bytes(b ^ 0xFF for b in chunk))
    caplog.clear()
    h3 = hydrate(Remote(p.open_storage()), second)
    warned = lsvfs_warnings(caplog)
    assert any("rebuilding hydration file" in w and "damaged" in w for w in warned), warned
    assert h3["rebuilds"] == 1 and h3["bytes"] >= size * 9 // 10, h3
    assert_same_db(hp.read_bytes(), restored(p, tmp_path, second), p.page_size, "rebuilt file")


def test_hydration_file_of_another_or_an_older_replica_is_rebuilt(
        replicated_primary: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The same hydration_path opened on another replica is rebuilt for it
    (WARNING "another replica"); and when a replica goes back (its directory
    restored from a copy taken at an earlier TXID, under the same URL), the
    file recorded at the later TXID is rebuilt (WARNING "went back"). Each
    time rebuilds == 1 and the file equals that replica's restore."""
    caplog.set_level(logging.WARNING, logger="lsvfs")
    a: ReplicatedPrimary = replicated_primary("file")
    b: ReplicatedPrimary = replicated_primary("file")
    a.insert_rows(300, 900, seed=9)
    early = a.wait_replicated()
    a.stop()
    assert a.replica_dir is not None
    backup = tmp_path / "backup"
    shutil.copytree(a.replica_dir, backup)
    a.start()
    a.insert_rows(300, 900, seed=10)
    late = a.wait_replicated()
    b.insert_rows(200, 700, seed=11)
    b_txid = b.wait_replicated()
    hp = tmp_path / "shared.db"

    def hydrate(p: ReplicatedPrimary, txid: int) -> tuple[int, list[str]]:
        caplog.clear()
        with closing(lsvfs.connect(p.replica_url, hydration_path=str(hp), poll_interval=0.05)):
            rep = replica_of(p.replica_url)
            wait_until(lambda: hydrated_at(rep, txid), 30, interval=0.05, what=f"{p.replica_url} hydrated")
            rebuilds = rep.stats()["hydration"]["rebuilds"]
        return rebuilds, lsvfs_warnings(caplog)

    assert hydrate(a, late) == (0, [])
    rebuilds, warned = hydrate(b, b_txid)
    assert rebuilds == 1 and any("rebuilding hydration file" in w and "another replica" in w for w in warned), warned
    assert_same_db(hp.read_bytes(), restored(b, tmp_path, b_txid), b.page_size, "file rebuilt for B")

    assert hydrate(a, late)[0] == 1  # back to A (another replica again), recorded at `late`
    a.stop()
    shutil.move(a.replica_dir, tmp_path / "newer")
    shutil.move(backup, a.replica_dir)
    rebuilds, warned = hydrate(a, early)
    assert rebuilds == 1 and any(f"went back from TXID {late:016x} to {early:016x}" in w for w in warned), warned
    assert_same_db(hp.read_bytes(), restored(a, tmp_path, early), a.page_size, "file rebuilt at the older TXID")


# ---- 6: faults and close ------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["prefetch", "hydration"])
def test_prefetch_and_hydration_under_storage_faults_then_stop_at_close(dir_db: Frozen, mode: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A seeded chaos mix (latency, timeouts, 500s, short reads, late
    listings) around the real client while prefetch or hydration runs (in
    128 KiB requests, so there are many): every query meanwhile equals the
    primary, some ran before the background work was done, the work
    completes anyway (every page cached / progress 100), reads met faults
    and were retried, and after close no lsvfs-fetch / -hydrate / -poll
    thread of the replica is left."""
    monkeypatch.setattr(lsvfs.replica.reader, "CHUNK_BYTES", 128 * 1024)
    monkeypatch.setattr(lsvfs.hydration, "REQUEST_BYTES", 128 * 1024)
    mix = chaos(open_storage(dir_db.url), seed=8, rate=0.2, max_latency=0.01)
    mix.storage.local = False
    mix.faulty.enabled = mix.late.enabled = False  # open cleanly; the faults start with the background work
    options: dict[str, Any] = {"prefetch": "on"} if mode == "prefetch" else {"hydration": True}
    lookup, ranged = "SELECT id, k, v FROM t WHERE id = ?", "SELECT count(*), sum(k) FROM t WHERE id BETWEEN ? AND ?"
    rnd = random.Random(6)
    with closing(lsvfs.connect(dir_db.url, storage=mix.storage, poll_interval=0.05, read_retries=8, **options)) \
            as conn:
        rep = replica_of(dir_db.url)
        mix.faulty.enabled = mix.late.enabled = True
        name = rep.name

        def complete() -> bool:
            if mode == "hydration":
                return hydrated_at(rep, dir_db.txid)
            pre = rep.stats()["prefetch"]
            return bool(pre["requests"] and pre["done"] == pre["requests"] and pre["pending"] == 0
                        and all(f in rep.cache for f in frames(rep)))

        during = 0
        for checked in range(1, 401):
            busy = not complete()
            if checked > 20 and not busy:
                break
            i = rnd.randrange(1, 16_000)
            if checked % 2:
                assert conn.execute(lookup, (i,)).fetchall() == dir_db.rows(f"SELECT id, k, v FROM t WHERE id = {i}")
            else:
                want = dir_db.rows(f"SELECT count(*), sum(k) FROM t WHERE id BETWEEN {i} AND {i + 300}")
                assert conn.execute(ranged, (i, i + 300)).fetchall() == want
            during += busy
        wait_until(complete, 30, interval=0.05, what=f"{mode} completes under faults")
        assert during >= 1, "no query ran while the background work did"
        assert sum(mix.faulty.injected.values()) > 0 and rep.retries > 0, "reads met no fault"
    wait_until(lambda: not background_threads(name), 10, interval=0.02, what="background threads end")


@pytest.mark.parametrize("mode", ["prefetch", "hydration"])
def test_close_does_not_wait_for_background_reads_stuck_in_storage(
        dir_db: Frozen, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every background read blocks in storage (GatedReads) and so does the
    poller's listing (BlockingStorage): releasing the last reference (what
    closing the last connection does) still returns (each stage waits at
    most CLOSE_WAIT, here 0.2 s) while the reads are stuck, and once storage
    lets go every lsvfs-fetch / -hydrate / -poll thread of the replica ends.

    The Replica is opened without a SQLite connection: opening one reads
    page 1, which would wait (rightly) for the stuck prefetch job covering it."""
    monkeypatch.setattr(lsvfs.replica.lifecycle, "CLOSE_WAIT", 0.2)
    listing = BlockingStorage(open_storage(dir_db.url), max_block=60)
    gated = GatedReads(listing)
    options = {"prefetch": "on"} if mode == "prefetch" else {"hydration": "on"}
    rep = acquire(dir_db.url, resolve({**options, "poll_interval": 0.01}), gated)
    name = rep.name
    closer = threading.Thread(target=release, args=(rep,), name="closer")
    try:
        listing.armed = True
        assert listing.blocked.wait(30), "the poller reached the blocking listing"
        wait_until(lambda: gated.blocked > 0, 30, interval=0.01, what="a background read blocked")
        closer.start()
        closer.join(30)
        assert not closer.is_alive(), "closing waited for storage"
        assert not gated.gate.is_set() and gated.blocked > 0, "the reads were still stuck when close returned"
        assert lsvfs.open_replicas() == {}
        assert background_threads(name), "the stuck threads are still in storage"
    finally:
        gated.gate.set()
        listing.gate.set()
        if closer.ident is not None:
            closer.join(30)
        else:
            release(rep)
    wait_until(lambda: not background_threads(name), 30, interval=0.02, what="background threads end")
    assert gated.expired == 0
    if mode == "hydration":
        assert rep.hydrator is not None and not Path(rep.hydrator.path).exists(), "the temp file is removed"


def test_a_hydration_reply_arriving_after_close_is_not_written(
        replicated_primary: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hydration read whose reply is still in flight when the last
    connection closes (LateReplies; close waits CLOSE_WAIT, here 0.2 s, and
    returns) must not write its pages once the file is released: here the
    file is reopened by a new Replica, which resumes it and moves it on two
    TXIDs; then the old reply arrives. The file still equals the restore of
    the new TXID and a fresh connection reads the primary's rows (the old
    reply's pages, one TXID behind, would otherwise be served as current:
    PRAGMA integrity_check cannot tell)."""
    monkeypatch.setattr(lsvfs.replica.lifecycle, "CLOSE_WAIT", 0.2)
    p: ReplicatedPrimary = replicated_primary("file")
    p.insert_rows(400, 1000, seed=12)
    first = p.wait_replicated()
    hp = str(tmp_path / "h.db")
    late = LateReplies(open_storage(p.replica_url))
    conn = lsvfs.connect(p.replica_url, storage=late, hydration_path=hp, poll_interval=0.05)
    rep = replica_of(p.replica_url)
    try:
        wait_until(lambda: hydrated_at(rep, first), 30, interval=0.05, what="hydrated")
        late.gate.clear()
        p.update_rows("id % 2 = 0", size=1000, seed=13)
        p.wait_replicated()
        wait_until(lambda: late.waiting > 0, 30, interval=0.01, what="a hydration reply in flight")
        old = [t for t in threading.enumerate() if t.name.startswith(BACKGROUND) and t.name.endswith(rep.name)]
        conn.close()
        assert late.waiting > 0 and lsvfs.open_replicas() == {}, "close() returned with the reply in flight"
        p.update_rows("id % 2 = 0", size=1000, seed=14)
        last = p.wait_replicated()
        with closing(lsvfs.connect(p.replica_url, hydration_path=hp, poll_interval=0.05)):
            now = replica_of(p.replica_url)
            wait_until(lambda: hydrated_at(now, last), 30, interval=0.05, what="the new Replica hydrated")
            late.gate.set()
            wait_until(lambda: not any(t.is_alive() for t in old), 30, interval=0.02,
                       what="the closed Replica's threads end")
            with closing(lsvfs.connect(p.replica_url)) as fresh:
                got, want = fresh.execute(ROWS).fetchall(), p.execute(ROWS)
            stale = [w[0] for g, w in zip(got, want) if g != w]
            assert len(got) == len(want) and not stale, f"{len(stale)} rows served stale (ids {stale[:5]})"
            assert_same_db(Path(hp).read_bytes(), restored(p, tmp_path, last), p.page_size, "hydration file")
    finally:
        late.gate.set()


def test_a_close_in_the_middle_of_applying_a_txid_leaves_a_file_served_right(
        replicated_primary: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last connection closes while the hydrator is applying a new TXID:
    one of its requests has written its pages, the others are still in
    flight. The file now matches neither TXID nor its record; the next open
    must not adopt it as recorded: the file ends equal to the restore of the
    newest TXID and a fresh connection reads the primary's rows. (Today that
    open rebuilds the whole file, WARNING "... damaged": rebuilds <= 1.)"""
    monkeypatch.setattr(lsvfs.replica.lifecycle, "CLOSE_WAIT", 0.2)
    p: ReplicatedPrimary = replicated_primary("file")
    p.insert_rows(400, 1000, seed=15)
    first = p.wait_replicated()
    hp = str(tmp_path / "h.db")
    late = LateReplies(open_storage(p.replica_url))
    conn = lsvfs.connect(p.replica_url, storage=late, hydration_path=hp, poll_interval=0)
    rep = replica_of(p.replica_url)
    try:
        wait_until(lambda: hydrated_at(rep, first), 30, interval=0.05, what="hydrated")
        late.let_through = 1
        late.gate.clear()
        p.update_rows("id <= 200", size=1000, seed=16)
        p.wait_replicated()
        p.update_rows("id > 200", size=1000, seed=17)
        last = p.wait_replicated()
        # Both files in one new snapshot, their pages apart: one apply, a request per file.
        assert rep.poll() and rep.current().txid == last
        wait_until(lambda: late.waiting > 0 and late.let_through < 0, 30, interval=0.01,
                   what="one reply written, one in flight")
        conn.close()
        assert json.loads(Path(hp + ".lsvfs.json").read_text())["txid"] == first
        late.gate.set()
        with closing(lsvfs.connect(p.replica_url, hydration_path=hp, poll_interval=0.05)) as again:
            now = replica_of(p.replica_url)
            wait_until(lambda: hydrated_at(now, last), 30, interval=0.05, what="hydrated at the newest TXID")
            assert now.stats()["hydration"]["rebuilds"] <= 1
            got, want = again.execute(ROWS).fetchall(), p.execute(ROWS)
            assert len(got) == len(want) and not [w[0] for g, w in zip(got, want) if g != w]
        assert_same_db(Path(hp).read_bytes(), restored(p, tmp_path, last), p.page_size, "hydration file")
    finally:
        late.gate.set()


# ---- 7: options ----------------------------------------------------------------------------

def _uri_connect(driver: str, uri: str) -> Any:
    if driver == "apsw":
        return apsw.Connection(uri, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI, vfs="litestream")
    return sqlite3.connect(uri, uri=True, check_same_thread=False)


def _pragma(conn: Any, name: str) -> str:
    return str(conn.execute(f"PRAGMA {name}").fetchall()[0][0])


@pytest.mark.parametrize("driver", DRIVERS)
def test_go_uri_parameter_turns_hydration_on_with_a_temp_file(dir_db: Frozen, driver: str) -> None:
    """The Go VFS's URI parameter `hydration_enabled=1` (added to a URI from
    lsvfs.uri()) turns hydration on: PRAGMA litestream_hydration_file names a
    private temp file, litestream_hydration_progress reaches 100, queries are
    right, and the file (and any record) is gone after close."""
    uri = lsvfs.uri(dir_db.url, poll_interval=0, hydration_enabled=1)  # passed on as the Go name
    conn = _uri_connect(driver, uri)
    try:
        path = _pragma(conn, "litestream_hydration_file")
        assert os.path.basename(path).startswith("lsvfs-hydration-") and os.path.exists(path)
        wait_until(lambda: _pragma(conn, "litestream_hydration_progress") == "100", 30, interval=0.05,
                   what="progress 100")
        q = "SELECT count(*), sum(k) FROM t"
        assert conn.execute(q).fetchall() == [tuple(r) for r in dir_db.rows(q)]
    finally:
        conn.close()
    assert not os.path.exists(path) and not os.path.exists(path + ".lsvfs.json")


@pytest.mark.parametrize("driver", DRIVERS)
def test_go_environment_variables_turn_hydration_on(dir_db: Frozen, driver: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """LITESTREAM_HYDRATION_PATH alone turns hydration on at that path (PRAGMA
    litestream_hydration_file shows it through the driver, progress reaches
    100, the file and its record stay after close); LITESTREAM_HYDRATION_ENABLED
    alone gives a temp file; LSVFS_HYDRATION=off wins over
    LITESTREAM_HYDRATION_ENABLED=1."""
    for var in ("LSVFS_HYDRATION", "LSVFS_HYDRATION_PATH", "LITESTREAM_HYDRATION_ENABLED"):
        monkeypatch.delenv(var, raising=False)
    hp = str(tmp_path / "env.db")
    monkeypatch.setenv("LITESTREAM_HYDRATION_PATH", hp)
    with closing(drivers.connect(driver, dir_db.url, poll_interval=0)) as conn:
        assert _pragma(conn, "litestream_hydration_file") == hp
        wait_until(lambda: _pragma(conn, "litestream_hydration_progress") == "100", 30, interval=0.05,
                   what="progress 100")
        wait_until(lambda: os.path.exists(hp + ".lsvfs.json"), 10, interval=0.05, what="record written")
    assert os.path.getsize(hp) == dir_db.size and json.loads(Path(hp + ".lsvfs.json").read_text())["txid"] == \
        dir_db.txid
    monkeypatch.delenv("LITESTREAM_HYDRATION_PATH")
    monkeypatch.setenv("LITESTREAM_HYDRATION_ENABLED", "true")
    with closing(drivers.connect(driver, dir_db.url, poll_interval=0)) as conn:
        temp = _pragma(conn, "litestream_hydration_file")
        assert os.path.basename(temp).startswith("lsvfs-hydration-")
    assert not os.path.exists(temp)
    monkeypatch.setenv("LSVFS_HYDRATION", "off")
    with closing(drivers.connect(driver, dir_db.url, poll_interval=0)) as conn:
        assert _pragma(conn, "litestream_hydration_file") == ""
        assert _pragma(conn, "litestream_hydration_progress") == "0"
        assert replica_of(dir_db.url).stats()["hydration"] is None


CLAIM_SCRIPT = textwrap.dedent("""
    import sys
    import lsvfs
    try:
        lsvfs.connect(sys.argv[1], hydration_path=sys.argv[2], poll_interval=0)
    except lsvfs.ReplicaError as exc:
        print("ReplicaError:", exc)
    else:
        print("opened")
""")


def test_a_hydration_file_in_use_is_refused_to_another_replica(dir_db: Frozen, s3_db: Frozen, tmp_path: Path,
                                                               s3_env: None) -> None:
    """While this process hydrates to a path, another process opening the same
    replica with that hydration_path gets ReplicaError "... is in use by
    another process"; so does another replica in this process, and that
    failed open leaves no thread of its own running. Once the first closes,
    the path can be taken."""
    hp = str(tmp_path / "claimed.db")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(Path(lsvfs.__file__).parent.parent),
                                                                   os.environ.get("PYTHONPATH")) if p)}
    with closing(lsvfs.connect(dir_db.url, hydration_path=hp, poll_interval=0)):
        out = subprocess.run([sys.executable, "-c", CLAIM_SCRIPT, dir_db.url, hp], env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("ReplicaError:") and f"hydration file {hp} is in use by another process" in \
            out.stdout, out.stdout + out.stderr
        with pytest.raises(lsvfs.ReplicaError, match="in use by another process"):
            lsvfs.connect(s3_db.url, storage=s3_db.p.open_storage(), hydration_path=hp, poll_interval=0.05)
        assert set(lsvfs.open_replicas()) == {dir_db.url}
        wait_until(lambda: not background_threads(redact_url(s3_db.url)), 5, interval=0.05,
                   what="the failed open's threads end")
    with closing(lsvfs.connect(s3_db.url, storage=s3_db.p.open_storage(), hydration_path=hp, poll_interval=0)):
        assert replica_of(s3_db.url).stats()["hydration"]["file"] == hp


@pytest.mark.parametrize(("options", "env", "named"), [
    ({"prefetch": "maybe"}, {}, "prefetch"),
    ({"hydration": "maybe"}, {}, "hydration"),
    ({}, {"LSVFS_PREFETCH": "maybe"}, "LSVFS_PREFETCH"),
    ({}, {"LITESTREAM_HYDRATION_ENABLED": "maybe"}, "LITESTREAM_HYDRATION_ENABLED"),
])
def test_bad_values_name_the_option(dir_db: Frozen, monkeypatch: pytest.MonkeyPatch, options: dict[str, Any],
                                    env: dict[str, str], named: str) -> None:
    """A bad prefetch or hydration value, as a keyword or in the environment
    (ours or the Go VFS's), is a ValueError naming where it came from, from
    connect() and from uri() alike; nothing is left open."""
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=rf"option {named}\b.*maybe"):
        lsvfs.connect(dir_db.url, **options)
    with pytest.raises(ValueError, match=rf"option {named}\b.*maybe"):
        lsvfs.uri(dir_db.url, **options)
    assert lsvfs.open_replicas() == {}


# ---- 8: memory -----------------------------------------------------------------------------

MEMORY_SCRIPT = textwrap.dedent("""
    import gc, json, sys, threading, time
    import lsvfs
    from lsvfs.storage import open_storage

    class Remote:
        local = False
        def __init__(self, inner):
            self.inner, self.url = inner, inner.url
        def __getattr__(self, name):
            return getattr(self.inner, name)

    def rss():
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096

    def scan(conn):
        conn.execute("PRAGMA cache_size=10")  # SQLite's own page cache stays small
        return conn.execute("SELECT count(*), sum(length(v)) FROM t").fetchall()

    url, cache = sys.argv[1], sys.argv[2]
    # A first connection, closed, makes every one-time allocation (SQLite, the VFS, threads).
    warm = lsvfs.connect(url, storage=Remote(open_storage(url)), prefetch="off", cache_size="64KiB",
                         poll_interval=0)
    scan(warm)
    warm.close()
    assert not lsvfs.open_replicas()
    gc.collect()
    base, peak, stop = rss(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    conn = lsvfs.connect(url, storage=Remote(open_storage(url)), prefetch="on", cache_size=cache, poll_interval=0)
    rep = lsvfs.open_replicas()[url]
    for _ in range(3000):
        pre = rep.stats()["prefetch"]
        if pre["requests"] and pre["done"] == pre["requests"] and not pre["pending"]:
            break
        time.sleep(0.005)
    rows = scan(conn)
    stats = rep.stats()
    stop.set()
    sampler.join()
    print(json.dumps({"growth": max(peak[0], rss()) - base, "rows": rows, "cache": stats["cache"],
                      "prefetch": stats["prefetch"]}))
    conn.close()
""")


def test_memory_stays_within_cache_size_with_prefetch_on_a_larger_database(dir_db: Frozen) -> None:
    """prefetch=on, a 2 MiB cache, a ~16 MB database read through the remote
    path: in-process, the cache's bytes never pass max_bytes during the
    prefetch and a full scan (sampled throughout; the scan evicts). In a
    fresh process (glibc told to return freed large blocks at once, so RSS
    follows live memory; a first connection, closed, has made the one-time
    allocations), the peak RSS growth from before connect to after the scan
    stays under cache_size + 8 MiB (2 MiB read-ahead and prefetch requests
    in flight, the page table, threads): well under the ~16 MB that caching
    the whole database takes (about 18 MiB of growth, measured)."""
    samples: list[dict[str, int]] = []
    stop = threading.Event()
    with closing(lsvfs.connect(dir_db.url, storage=Remote(open_storage(dir_db.url)), prefetch="on",
                               cache_size="2MiB", poll_interval=0)) as conn:
        rep = replica_of(dir_db.url)

        def sample() -> None:
            while not stop.is_set():
                samples.append(rep.stats()["cache"])
                stop.wait(0.002)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            wait_until(lambda: rep.stats()["prefetch"]["done"] == 1, 30, interval=0.01, what="prefetch done")
            assert conn.execute(SCANS[0]).fetchall() == dir_db.rows(SCANS[0])
        finally:
            stop.set()
            sampler.join()
        final, ps = rep.stats()["cache"], rep.current().page_size
    assert final["evictions"] > 0 and final["entries"] * ps <= 2 * MiB
    assert len(samples) > 5 and all(s["bytes"] <= s["max_bytes"] == 2 * MiB for s in samples), \
        max(s["bytes"] for s in samples)

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "2",
           "PYTHONPATH": os.pathsep.join(p for p in (str(Path(lsvfs.__file__).parent.parent),
                                                     os.environ.get("PYTHONPATH")) if p)}
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, dir_db.url, "2MiB"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["rows"] == [list(r) for r in dir_db.rows("SELECT count(*), sum(length(v)) FROM t")]
    assert got["cache"]["bytes"] <= 2 * MiB and got["prefetch"]["requests"] == 1
    assert dir_db.size >= 16 * 10**6
    assert got["growth"] < 2 * MiB + 8 * MiB < dir_db.size, f"RSS grew {got['growth'] / MiB:.1f} MiB"
