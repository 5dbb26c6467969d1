"""Test plan, priority 1 (critical safety & correctness): scenarios 1-5.

See tests/TEST_PLAN.md for the scenario -> test map and what each proves.
"""

from __future__ import annotations

import gc
import logging
import random
import re
import threading
import time
import tracemalloc
from contextlib import closing
from pathlib import Path
from typing import Any

import apsw
import pytest
from faults import FaultyStorage, server_error
from synthetic import (
    SOAK_SECONDS,
    STRESS_SECONDS,
    DirTarget,
    RawPrimary,
    SyntheticPrimary,
    fast_zero_snapshot,
    in_txn,
    make_target,
    open_replica,
)
from wrappers import WrappedStorage

import lsvfs
from lsvfs import ltx
from lsvfs.storage import open_storage
from lsvfs.vfs import ReplicaFile, register

LTX_NAME = re.compile(r"[0-9a-f]{16}-[0-9a-f]{16}\.ltx")


def txid_rows(conn: apsw.Connection, sql: str) -> tuple[int, list[tuple[Any, ...]]]:
    """(TXID, rows) read in one read transaction."""
    txid, (rows,) = in_txn(conn, sql)
    return txid, rows


def seeded_table(p: SyntheticPrimary, rows: int = 400, size: int = 300, seed: int = 1) -> None:
    """t(id, k, v): incompressible blobs, so the snapshot file is well over 64 KiB (ranged reads)."""
    rnd = random.Random(seed)
    p.commit("CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v BLOB)")
    p.commit("INSERT INTO t(k, v) VALUES (?, ?)",
             many=[(rnd.randrange(1 << 30), rnd.randbytes(size)) for _ in range(rows)])


# ---- 1: concurrent index access ---------------------------------------------------

@pytest.mark.stress
def test_s01_hundred_threads_read_while_poller_publishes(tmp_path: Path) -> None:
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
            prim.write(rnd.sample(range(1, 10_001), 20))
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
    assert not errors, errors[:5]
    assert all(n > 0 for n in reads), "every reader made progress"
    assert len(seen) >= 3, "readers saw the replica advance"


# ---- 2: storage failure injection ----------------------------------------------------

def _query_loop(p: SyntheticPrimary, rep: Any, url: str, n: int, *, commit_every: int = 0) -> dict[str, Any]:
    """`n` queries, each on a fresh connection (cold SQLite cache); every
    `commit_every` the primary commits and the replica polls once.
    Returns counts and the first few error messages; raises on a wrong row."""
    sql = "SELECT id, k, v FROM t ORDER BY id"
    out: dict[str, Any] = {"ok": 0, "io": 0, "corrupt": 0, "messages": []}
    for i in range(n):
        if commit_every and i % commit_every == commit_every - 1:
            p.commit("UPDATE t SET k = k + 1 WHERE id % 10 = ?", (i % 10,))
            rep.poll()
        with closing(lsvfs.connect(url)) as conn:
            try:
                txid, got = txid_rows(conn, sql)
            except (apsw.IOError, apsw.CorruptError) as exc:
                out["io" if isinstance(exc, apsw.IOError) else "corrupt"] += 1
                out["messages"].append(conn.execute("PRAGMA litestream_error").fetchall()[0][0])
                continue
        assert got == p.rows(sql, txid), f"query {i}: wrong rows at TXID {txid:x}"
        out["ok"] += 1
    return out


@pytest.mark.parametrize("kind", ["timeout", "5xx", "partial", "corrupt"])
@pytest.mark.parametrize("storage", ["file", "s3"])
def test_s02_storage_failures_fail_cleanly_then_recover(tmp_path: Path, request: pytest.FixtureRequest,
                                                        storage: str, kind: str) -> None:
    """Scenario 2: 20% of storage reads time out / return 500 / come back short /
    come back with a flipped bit, over the directory and the S3 client.

    Without retries some queries fail, always with apsw.IOError or
    apsw.CorruptError, and PRAGMA litestream_error names the LTX file; every query that succeeds returns
    exactly the primary's rows at the TXID it saw (for `corrupt` with
    verify="files": corrupt bytes never reach SQLite). With the default retries
    (bounded backoff) the same fault rate is invisible. When faults stop, the
    replica catches up by itself, no reconnect.
    """
    p = SyntheticPrimary(make_target(storage, tmp_path, request), page_size=1024)
    seeded_table(p, rows=90)  # ~30 pages: a cache of 12 pages makes every scan read by ranges
    # Only polls reach storage in "files" mode (pages come from verified local copies).
    verify, rate = ("files", 0.3) if kind == "corrupt" else ("frames", 0.04)
    opts = {"poll_interval": 0, "cache_size": "12KiB", "verify": verify}  # smaller than the table
    faulty = FaultyStorage(open_storage(p.url), rate=rate, kinds=(kind,), seed=11)
    faulty.enabled = False
    with open_replica(p.url, faulty, read_retries=0, **opts) as rep:
        faulty.enabled = True
        no_retry = _query_loop(p, rep, p.url, 20, commit_every=3)
        assert faulty.injected[kind] > 0
        assert no_retry["io"] + no_retry["corrupt"] + rep.poll_errors > 0, no_retry
        assert no_retry["ok"] > 0, no_retry
        for msg in no_retry["messages"]:
            assert LTX_NAME.search(msg), f"error does not name the file: {msg}"
        if kind in ("timeout", "5xx"):
            assert no_retry["corrupt"] == 0, no_retry["messages"]
    faulty = FaultyStorage(open_storage(p.url), rate=rate, kinds=(kind,), seed=12)
    faulty.enabled = False
    with open_replica(p.url, faulty, read_retries=4, **opts) as rep:
        faulty.enabled = True
        retried = _query_loop(p, rep, p.url, 6, commit_every=2)
        assert retried["ok"] == 6, retried
        assert rep.poll_errors == 0
        assert sum(faulty.injected.values()) > 0, "faults were injected and retried away"
        faulty.enabled = False
        p.commit("DELETE FROM t WHERE id % 3 = 0")
        rep.poll()
        assert rep.current().txid == p.txid
        assert _query_loop(p, rep, p.url, 2)["ok"] == 2


class _Stamped(WrappedStorage):
    """Fails the first `fail` calls of `op` with a 500 and records when every call came."""

    def __init__(self, inner: Any, op: str, fail: int) -> None:
        super().__init__(inner)
        self.op, self.fail, self.times = op, fail, []

    def _maybe(self, op: str, info: Any) -> None:
        if op != self.op:
            return
        self.times.append(time.monotonic())
        if len(self.times) <= self.fail:
            raise server_error(self.inner, info, op)

    def list_files(self, level: int, min_txid: int = 0) -> list[Any]:
        if level == 0:
            self._maybe("list", None)
        return super().list_files(level, min_txid)

    def read(self, info: Any, offset: int, length: int) -> bytes:
        self._maybe("read", info)
        return super().read(info, offset, length)


def test_s02_retries_back_off_boundedly_and_give_up(tmp_path: Path) -> None:
    """Scenario 2 (the plan's TODO "add retries"): a failing read is retried
    read_retries times with exponential backoff (20 ms doubling, capped at
    1 s); a fault that clears within the retries is invisible, one that
    does not fails after exactly read_retries + 1 attempts. Listing at open
    is retried the same way, so a transient 500 does not fail connect()."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    seeded_table(p, rows=300)  # the snapshot is read by ranges
    sql = "SELECT count(*), sum(k) FROM t"
    flaky_list = _Stamped(open_storage(p.url), "list", fail=2)
    with closing(lsvfs.connect(p.url, storage=flaky_list, poll_interval=0, read_retries=3)) as conn:
        assert conn.execute(sql).fetchall() == p.rows(sql)
    gaps = [b - a for a, b in zip(flaky_list.times, flaky_list.times[1:])][:2]
    assert 0.018 <= gaps[0] and 0.038 <= gaps[1] < 0.5, gaps
    for retries, fail, ok in ((4, 4, True), (4, 5, False), (0, 1, False), (6, 99, False)):
        flaky = _Stamped(open_storage(p.url), "read", fail=0)
        with closing(lsvfs.connect(p.url, storage=flaky, poll_interval=0, read_retries=retries,
                                   cache_size=0)) as conn:
            flaky.fail, flaky.times = fail, []
            t0 = time.monotonic()
            if ok:
                assert conn.execute(sql).fetchall() == p.rows(sql)
            else:
                with pytest.raises(apsw.IOError):
                    conn.execute(sql).fetchall()
                (cause,), = conn.execute("PRAGMA litestream_error").fetchall()
                assert re.search("InternalError|Input/output error", cause), cause
                assert len(flaky.times) == retries + 1, (retries, len(flaky.times))
            took = time.monotonic() - t0
            waits = [b - a for a, b in zip(flaky.times, flaky.times[1:])][:min(fail, retries)]
            nominal = [min(0.02 * 2 ** i, 1.0) for i in range(len(waits))]
            assert all(w >= n * 0.9 for w, n in zip(waits, nominal)), (waits, nominal)
            assert took < sum(nominal) + 2.0, (took, nominal)


class _FlipAt:
    """Flips bit `bit` of absolute byte `pos` of one file, in whatever response covers it,
    or drops the last `cut` bytes of every ranged read of it. Never closes the real client."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.url = inner.url
        self.target: tuple[Any, int, int] | None = None  # (FileInfo, pos, bit)
        self.cut: tuple[Any, int] | None = None  # (FileInfo, bytes dropped from each ranged read)

    def _bend(self, info: Any, offset: int, data: bytes) -> bytes:
        if self.target is not None and self.target[0] == info:
            _, pos, bit = self.target
            if offset <= pos < offset + len(data):
                b = bytearray(data)
                b[pos - offset] ^= 1 << bit
                return bytes(b)
        if self.cut is not None and self.cut[0] == info and offset > 0:
            return data[:max(0, len(data) - self.cut[1])]
        return data

    def list_files(self, level: int, min_txid: int = 0) -> list[Any]:
        return self.inner.list_files(level, min_txid)

    def read(self, info: Any, offset: int, length: int) -> bytes:
        return self._bend(info, offset, self.inner.read(info, offset, length))

    def read_all(self, info: Any) -> bytes:
        return self._bend(info, 0, self.inner.read_all(info))

    def close(self) -> None:
        pass


HEADER_FIELDS = ((4, "header_magic"), (8, "header_flags"), (12, "header_page_size"), (16, "header_commit"),
                 (32, "header_txids"), (40, "header_timestamp"), (100, "header_inert"))


def _regions(frames: list[tuple[int, int, int]], idx: tuple[int, int],
             size: int) -> list[tuple[str, list[int], int]]:
    """(region name, byte positions in it, flips to make there) for one LTX file."""
    out: list[tuple[str, list[int], int]] = []
    start = 0
    for end, name in HEADER_FIELDS:
        out.append((name, list(range(start, end)), 8 if name != "header_inert" else 20))
        start = end
    out.append(("frame_pgno_flags", [off + i for _, off, _ in frames for i in range(6)], 40))
    out.append(("frame_size", [off + i for _, off, _ in frames for i in range(6, 10)], 30))
    out.append(("lz4_payload", [off + i for _, off, sz in frames for i in range(10, sz)], 120))
    out.append(("page_block_end", list(range(idx[0] - 6, idx[0])), 6))
    out.append(("index", list(range(idx[0], idx[1])), 80))
    out.append(("trailer", list(range(size - 16, size)), 10))
    return out


def _outcome(url: str, storage: Any, verify: str, ref: list[bytes], errors: list[str] | None = None) -> int:
    """Open a fresh Replica over `storage` and read every page: 0 = an lsvfs
    error was raised, 1 = the size or some page came back wrong, 2 = all exact."""
    from lsvfs.options import resolve
    from lsvfs.replica import Replica

    rep = Replica(url, resolve({"verify": verify, "read_retries": 0, "cache_size": 0, "poll_interval": 0}),
                  storage)
    try:
        rep.open()
        snap = rep.current()
        pages = [rep.read_page(snap, n, 1) for n in range(1, snap.commit + 1)]
        return 2 if pages == ref else 1
    except lsvfs.LsvfsError as exc:
        if errors is not None:
            errors.append(str(exc))
        return 0
    finally:
        rep.close()


def test_s02_corrupt_bytes_detection_rate(replicated_primary: Any, record_property: Any) -> None:
    """Scenario 2 (corrupt checksums), beyond the plan: how much corruption is *detected*.

    On real Litestream 0.5.17 files, one seeded bit flip at a time anywhere in
    the replica's largest LTX file (a third aimed at frame headers so every
    region gets samples), then a fresh Replica with no retries reads every page:
    - verify="files": 100% of flips are detected (whole-file CRC-64);
    - verify="frames": every flip in the structure the format lets us check
      is an error, and so is every truncated read; flips inside LZ4 payloads
      (and in fields no check covers) can decode to wrong bytes, which LTX v3
      cannot catch without the file CRC-64.
    The detection rate per region is recorded as a property and logged.
    """
    p = replicated_primary("file", page_size=1024)
    p.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b BLOB)")
    rnd = random.Random(5)
    words = ["alpha", "beta", "gamma", "delta", "litestream", "sqlite", "replica"]
    p.executemany("INSERT INTO t(a, b) VALUES (?, ?)",
                  [(" ".join(rnd.choices(words, k=20)), rnd.randbytes(rnd.choice((0, 40, 200))))
                   for _ in range(600)])
    p.wait_replicated()
    p.stop()  # a fixed set of files from here on
    st = open_storage(p.replica_url)
    flip = _FlipAt(st)
    try:
        from lsvfs.plan import plan_for

        big = max(plan_for(st), key=lambda f: f.size)  # the largest file the replica will use
        assert big.size > 64 << 10, "need a file read by ranges, not whole"
        data = st.read_all(big)
        frames = list(ltx.decode(data, big.name).entries)
        idx_off, idx_len = lsvfs.core.locate_index(data, len(data))
        from lsvfs.options import resolve
        from lsvfs.replica import Replica

        clean = Replica(p.replica_url, resolve({"poll_interval": 0}), flip)
        clean.open()
        ref = [clean.read_page(clean.current(), n) for n in range(1, clean.current().commit + 1)]
        clean.close()
        results: dict[str, dict[str, list[int]]] = {}
        samples: dict[str, list[str]] = {}
        regions = _regions(frames, (idx_off, idx_off + idx_len + 8), len(data))
        for verify in ("files", "frames"):
            stats: dict[str, list[int]] = {}
            prnd = random.Random(99)
            for region, positions, n in regions:
                for _ in range(n):
                    flip.target = (big, prnd.choice(positions), prnd.randrange(8))
                    errs: list[str] = []
                    stats.setdefault(region, [0, 0, 0])[_outcome(p.replica_url, flip, verify, ref, errs)] += 1
                    samples.setdefault(f"{verify} {region}", errs)
            flip.target = None
            for cut in (1, 5, 11, 200):
                flip.cut = (big, cut)
                stats.setdefault("truncated_read", [0, 0, 0])[_outcome(p.replica_url, flip, verify, ref)] += 1
            flip.cut = None
            results[verify] = stats
    finally:
        st.close()
    lines = []
    for verify, stats in results.items():
        for region, (det, wrong, same) in sorted(stats.items()):
            rate = f"{det / (det + wrong):.0%}" if det + wrong else "n/a (no flip changed a page)"
            lines.append(f"{verify:6} {region:17} flips={det + wrong + same:3} detected={det:3} wrong={wrong:3} "
                         f"harmless={same:3} detection={rate}")
            record_property(f"detect_{verify}_{region}", f"{det}/{det + wrong}")
    lines += [f"  e.g. {k}: {v[0]}" for k, v in sorted(samples.items()) if v]
    logging.getLogger("lsvfs.tests").warning("corruption detection:\n%s", "\n".join(lines))
    for region, (det, wrong, same) in results["files"].items():
        assert wrong == 0, f"files mode served wrong bytes after a flip in {region}"
    frames_stats = results["frames"]
    for region in STRUCTURAL:
        det, wrong, same = frames_stats.get(region, [0, 0, 0])
        assert wrong == 0, f"frames mode missed structural corruption in {region}: {frames_stats[region]}"
    det, wrong, _ = frames_stats["lz4_payload"]
    assert det > 0, "LZ4 structure checks catch some payload flips"
    record_property("frames_payload_detection", f"{det / max(1, det + wrong):.3f}")


STRUCTURAL = ("header_magic", "header_flags", "header_page_size", "header_commit", "header_txids",
              "frame_pgno_flags", "frame_size", "truncated_read", "trailer", "index")
"""Regions where a flip must always be an error, in either mode."""


@pytest.mark.parametrize("verify", ["files", "frames"])
def test_s02_corrupt_bytes_through_sql(tmp_path: Path, verify: str, record_property: Any) -> None:
    """Scenario 2 (the plan's corrupt-data injection, through SQL): storage
    responses come back with one flipped bit (20% of whole-file reads in
    "files" mode, 2% of ranged reads in "frames" mode), no retries, caches
    smaller than the table. verify="files": every query returns exactly the primary's rows
    or raises an error, never a wrong row. verify="frames": some flips are
    caught (by frame checks or by SQLite's own page checks) and some pass as
    wrong rows, which LTX v3 cannot prevent without the file CRC; the counts
    are recorded."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    seeded_table(p, rows=300)
    sql = "SELECT id, k, v FROM t ORDER BY id"
    # "files" mode reads storage only in polls (whole files), "frames" mode on every cache miss
    faulty = FaultyStorage(open_storage(p.url), rate=0.2 if verify == "files" else 0.02, kinds=("corrupt",), seed=21)
    faulty.enabled = False
    counts = {"right": 0, "wrong": 0, "error": 0}
    kinds: set[str] = set()
    with open_replica(p.url, faulty, verify=verify, read_retries=0, poll_interval=0, cache_size="8KiB") as rep:
        faulty.enabled = True
        for i in range(40):
            if i % 2:  # in "files" mode only these polls' whole-file reads reach storage
                p.commit("UPDATE t SET k = k + 1 WHERE id % 9 = ?", (i % 9,))
                rep.poll()
            try:
                with closing(lsvfs.connect(p.url)) as conn:
                    txid, got = txid_rows(conn, sql)
            except apsw.Error as exc:  # ours (IOError/CorruptError) or SQLite's own checks (e.g. NotADBError)
                counts["error"] += 1
                kinds.add(type(exc).__name__)
                continue
            except UnicodeDecodeError:  # a flipped serial type turned a BLOB into bad TEXT: a wrong row
                counts["wrong"] += 1
                continue
            counts["right" if got == p.rows(sql, txid) else "wrong"] += 1
    for k, v in counts.items():
        record_property(f"sql_{verify}_{k}", v)
    logging.getLogger("lsvfs.tests").warning("corrupt bytes through SQL, verify=%s: %s (%d flips injected)",
                                             verify, counts, faulty.injected["corrupt"])
    assert faulty.injected["corrupt"] > 0
    if verify == "files":
        assert counts["wrong"] == 0, counts
        assert counts["right"] > 0 and rep.poll_errors > 0 and kinds <= {"IOError", "CorruptError"}, kinds
    else:
        assert counts["error"] > 0, counts


# ---- 3: TXID gaps -----------------------------------------------------------------------

@pytest.mark.parametrize("storage", ["file", "s3"])
def test_s03_gap_at_open_is_an_error_naming_the_txids(tmp_path: Path, request: pytest.FixtureRequest,
                                                      storage: str) -> None:
    """Scenario 3 (missing middle file): opening a replica whose L0 chain lacks
    TXID 4 fails with GapError naming both sides of the gap; nothing is served."""
    p = SyntheticPrimary(make_target(storage, tmp_path, request), page_size=1024)
    p.commit("CREATE TABLE t(v)")
    for i in range(5):
        p.commit("INSERT INTO t VALUES (?)", (i,))
    p.delete(0, 4, 4)
    with pytest.raises(lsvfs.GapError, match="0000000000000003.*0000000000000005"):
        lsvfs.connect(p.url)
    assert lsvfs.open_replicas() == {}


@pytest.mark.parametrize("storage", ["file", "s3"])
def test_s03_gap_while_live_holds_last_good_state(tmp_path: Path, request: pytest.FixtureRequest,
                                                  storage: str, caplog: pytest.LogCaptureFixture) -> None:
    """Scenario 3 (gap appears live / file listed late): the replica stays on the
    last TXID it can prove, queries keep answering from it without error, the
    gap is logged once, and the poll that finds the missing file catches up."""
    p = SyntheticPrimary(make_target(storage, tmp_path, request), page_size=1024)
    p.commit("CREATE TABLE t(v)")
    p.commit("INSERT INTO t VALUES (1)")
    with closing(lsvfs.connect(p.url, poll_interval=0)) as conn:
        rep = lsvfs.open_replicas()[p.url]
        held = p.commit("INSERT INTO t VALUES (2)", publish=False)
        for i in range(3, 6):
            p.commit("INSERT INTO t VALUES (?)", (i,))
        with caplog.at_level(logging.WARNING, logger="lsvfs"):
            for _ in range(12):  # enough polls to force full scans
                assert rep.poll() is False
        assert rep.poll_errors == 0
        assert txid_rows(conn, "SELECT v FROM t") == (2, [(1,)])
        gap_logs = [r for r in caplog.records if "gap in replica" in r.getMessage()]
        assert len(gap_logs) == 1, [r.getMessage() for r in caplog.records]
        p.write_l0(held)
        assert rep.poll() is True
        assert txid_rows(conn, "SELECT v FROM t ORDER BY v") == (p.txid, [(1,), (2,), (3,), (4,), (5,)])


@pytest.mark.parametrize("storage", ["file", "s3"])
def test_s03_compaction_covers_deleted_l0_files(tmp_path: Path, request: pytest.FixtureRequest,
                                                storage: str) -> None:
    """Scenario 3 (compaction gap): L0 files deleted by retention are covered by
    an L1 compaction and an L9 snapshot, at open and while live; no error, and
    the data at every step equals the primary's."""
    p = SyntheticPrimary(make_target(storage, tmp_path, request), page_size=1024)
    seeded_table(p, rows=60)
    for i in range(6):
        p.commit("UPDATE t SET k = ? WHERE id % 6 = ?", (i, i))
    p.snapshot()  # L9 [1, 8]
    p.compact(1, 1, 8, delete_l0=True)
    for i in range(3):
        p.commit("INSERT INTO t(k) VALUES (?)", (100 + i,))
    p.compact(1, 9, 10, delete_l0=True)  # L0 now holds only TXID 11
    sql = "SELECT id, k, v FROM t ORDER BY id"
    with closing(lsvfs.connect(p.url, poll_interval=0)) as conn:
        rep = lsvfs.open_replicas()[p.url]
        assert txid_rows(conn, sql) == (11, p.rows(sql, 11))
        first = p.txid + 1
        for i in range(4):
            p.commit("DELETE FROM t WHERE id = ?", (i + 1,))
        p.compact(1, first, first + 2, delete_l0=True)  # L0 keeps only the newest file
        assert rep.poll() is True
        assert txid_rows(conn, sql) == (p.txid, p.rows(sql))
        assert rep.poll_errors == 0


# ---- 4: page table memory -----------------------------------------------------------------

@pytest.fixture(scope="module")
def million_page_replica(tmp_path_factory: pytest.TempPathFactory) -> DirTarget:
    """A replica whose snapshot holds 1,000,000 pages of 512 bytes."""
    target = DirTarget(tmp_path_factory.mktemp("million"))
    target.put(0, 1, 1, fast_zero_snapshot(1_000_000, 512))
    return target


@pytest.mark.soak
def test_s04_page_table_memory_bounded_and_flat_under_rewrites(million_page_replica: DirTarget,
                                                                record_property: Any) -> None:
    """Scenario 4: the page table of a 1M-page database costs <= 20 MB (the C
    table's own accounting), and rewriting the same 64 pages for thousands of
    polls (each poll one new L0 file, old ones deleted as retention would)
    grows neither the table nor lsvfs's Python heap (tracemalloc, filtered to
    lsvfs's own code) nor the process RSS.

    LSVFS_SOAK_SECONDS runs the polls for that long instead of 2,000 polls.
    """
    target = million_page_replica
    ps = 512
    pgnos = [1 + k * 15_601 for k in range(64)]  # 64 different 1024-page chunks

    def l0(txid: int) -> None:
        hdr = ltx.Header(ltx.FLAG_NO_CHECKSUM, ps, 1_000_000, txid, txid, 1_700_000_000_000 + txid)
        page = txid.to_bytes(8, "big") * (ps // 8)
        target.put(0, txid, txid, ltx.encode(hdr, [(n, page) for n in pgnos]))
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
            while polls < 2000 or time.monotonic() < deadline:
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
        record_property("lsvfs_heap_growth_bytes", growth)
        record_property("rss_growth_bytes", rss_growth)
        assert end_table == base_table, f"page table grew: {base_table} -> {end_table}"
        assert rep.open_slots() <= 4, "only the files the current snapshot uses stay registered"
        assert growth < 64 * 1024, (f"lsvfs heap grew {growth} bytes over {polls} polls:\n" + "\n".join(
            str(s) for s in end_trace.filter_traces(flt).compare_to(base_trace.filter_traces(flt), "lineno")[:8]))
        assert rss_growth < 32 << 20, f"RSS grew {rss_growth >> 20} MiB over {polls} polls"


# ---- 5: page sizes ------------------------------------------------------------------------

def _unshim(page1: bytes, stored: bytes) -> bytes:
    b = bytearray(page1)
    for lo, hi in ((18, 20), (24, 32), (92, 96)):
        b[lo:hi] = stored[lo:hi]
    return bytes(b)


@pytest.mark.parametrize("page_size", [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536])
def test_s05_page_arithmetic_at_every_page_size(tmp_path: Path, page_size: int) -> None:
    """Scenario 5 (complements test_vfs.py::test_every_page_size, which runs SQL
    over real Litestream at every size): the VFS file turns byte offsets into
    page numbers correctly at every page size, for reads inside one page,
    straddling page boundaries, spanning many pages, and running past the end."""
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
            assert _unshim(whole[:ps], image) + whole[ps:] == image
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
