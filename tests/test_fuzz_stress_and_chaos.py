"""Test plan, bug-finding scenarios 32-34: races, fuzzing, chaos.

- 32: Go's race detector has no Python equivalent; instead every entry point
  of one shared Replica is hammered from threads at once (with invariants
  checked on every read), and the C core's threaded use runs under
  AddressSanitizer + UBSan through csrc/sanitize.sh.
- 33: hypothesis drives SQL read patterns against a live replica and compares
  with the primary at the same TXID (a stateful machine interleaving writes,
  polls and reads), and feeds mutated real Litestream files to the LTX parser.
  The C entry points have their own fuzzing in tests/test_core_fuzz.py.
- 34: a seeded chaos mix of faults on storage under real Litestream.
"""

from __future__ import annotations

import contextlib
import logging
import random
import shutil
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import apsw
import pytest
from faults import chaos
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from ledger import LITESTREAM, Ledger, restored_state, state_of
from longrun import LongRun
from replication import ReplicatedPrimary, ReplicationError, wait_until
from synthetic import (
    CHAOS_SECONDS,
    FUZZ_EXAMPLES,
    STRESS_SECONDS,
    DirTarget,
    RawPrimary,
    SyntheticPrimary,
    open_replica,
)

import lsvfs
from lsvfs import ltx, pagetable
from lsvfs.options import resolve
from lsvfs.replica import Replica
from lsvfs.storage import open_storage

log = logging.getLogger("lsvfs.tests")
ROOT = Path(__file__).resolve().parent.parent
CORPUS = sorted((ROOT / "tests" / "corpus").glob("*.ltx"))


# ---- 32: races -------------------------------------------------------------------------

@pytest.mark.stress
def test_s32_shared_replica_hammered_from_every_side(tmp_path: Path, long_run: LongRun) -> None:
    """Scenario 32 (asan_target): one Replica, for LSVFS_STRESS_SECONDS, from
    threads at once: readers checking every page against its TXID, extra
    threads calling poll() beside the background poller, time travel to
    older TXIDs, connections opened and closed through the registry, and a
    cache small enough to evict constantly. No exception, every page exact,
    and the published TXID never goes backwards."""
    raw = RawPrimary(DirTarget(tmp_path / "r"), page_size=1024)
    raw.write(range(1, 2001))
    stop = threading.Event()
    errors: list[str] = []
    counts: dict[str, int] = {}

    def run(name: str, fn: Any) -> threading.Thread:
        def loop() -> None:
            n = 0
            try:
                while not stop.is_set():
                    fn()
                    n += 1
            except Exception as exc:  # noqa: BLE001 - asserted below
                errors.append(f"{name}: {exc!r}")
            counts[name] = counts.get(name, 0) + n
        return threading.Thread(target=loop, name=name)

    with open_replica(raw.url, poll_interval=0.005, cache_size="256KiB") as rep:
        rnd_lock = threading.Lock()
        rnd = random.Random(1)

        def pick(lo: int, hi: int) -> int:
            with rnd_lock:
                return rnd.randrange(lo, hi)

        def writer() -> None:
            t = raw.write([pick(1, 2001) for _ in range(10)])
            if t % 1000 == 0:
                raw.forget(t - 5000)  # time travel goes back 20: the truth a long run keeps is bounded
            time.sleep(0.002)

        def reader() -> None:
            snap = rep.current()
            pgno = pick(1, snap.commit + 1)
            if rep.read_page(snap, pgno, pick(1, 9)) != raw.expected(pgno, snap.txid):
                errors.append(f"page {pgno} at {snap.txid:x}")

        def poller() -> None:
            rep.poll()

        def time_traveller() -> None:
            cur = rep.current().txid
            txid = pick(max(1, cur - 20), cur + 1)
            snap = rep.snapshot_at(txid=txid)
            pgno = pick(1, snap.commit + 1)
            if snap.txid != txid or rep.read_page(snap, pgno) != raw.expected(pgno, txid):
                errors.append(f"time travel to {txid:x}")

        def opener() -> None:
            with closing(lsvfs.connect(raw.url)) as c:
                c.execute("PRAGMA litestream_txid").fetchall()

        seen = [0]

        def observer() -> None:
            t = rep.current().txid
            if t < seen[0]:
                errors.append(f"TXID went back from {seen[0]:x} to {t:x}")
            seen[0] = max(seen[0], t)

        threads = [run("writer", writer), run("observer", observer)]
        threads += [run(f"reader{i}", reader) for i in range(8)]
        threads += [run(f"poller{i}", poller) for i in range(3)]
        threads += [run(f"traveller{i}", time_traveller) for i in range(2)]
        threads += [run(f"opener{i}", opener) for i in range(2)]
        for t in threads:
            t.start()
        time.sleep(STRESS_SECONDS)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        final = raw.txid
        wait_until(lambda: rep.current().txid == final, 10, interval=0.01, what="caught up")
    long_run.count(commits=raw.txid, reads_checked=sum(v for k, v in counts.items()
                                                      if k.startswith(("reader", "traveller"))))
    assert not errors, errors[:5]
    assert all(counts.get(t.name, 0) > 0 for t in threads), counts
    log.info("hammer: %s", counts)


@pytest.mark.stress
def test_s32_page_tables_shared_across_threads(record_property: Any, long_run: LongRun) -> None:
    """Scenario 32 (asan_target): page tables sharing copy-on-write chunks are
    cloned, written, read and freed from 8 threads at once, each checking its
    own table's contents; chunk reference counts must keep every table
    intact (under ASan, a use-after-free or double free aborts the run)."""
    base = pagetable.PageTable()
    base.apply(1, [(p, 100 + p * 10, 10) for p in range(1, 5001)])
    base.truncate(5000)
    alone = base.unique_memory
    errors: list[str] = []
    deadline = time.monotonic() + STRESS_SECONDS
    rounds = [0] * 8

    def worker(i: int) -> None:
        rnd = random.Random(i)
        try:
            while time.monotonic() < deadline:
                t = base.clone()
                mine = {rnd.randrange(1, 5001) for _ in range(50)}
                t.apply(2 + i, [(p, 7 * p, 10) for p in sorted(mine)])
                if rnd.random() < 0.3:
                    t.truncate(4000)
                for p in rnd.sample(range(1, 4001), 100):
                    want = (2 + i, 7 * p, 10) if p in mine else (1, 100 + p * 10, 10)
                    if t.get(p) != want:
                        errors.append(f"thread {i}: page {p} {t.get(p)} != {want}")
                        return
                if base.get(1) != (1, 110, 10):
                    errors.append("base table changed")
                del t
                rounds[i] += 1
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:  # they run until the deadline, however long the run (LSVFS_STRESS_SECONDS)
        t.join(timeout=max(0.0, deadline - time.monotonic()) + 30)
    assert not any(t.is_alive() for t in threads), "a worker did not finish within 30 s of the deadline"
    assert not errors, errors[:5]
    assert min(rounds) > 0
    assert base.count == 5000 and base.unique_memory == alone, "every clone freed: no chunk shared any more"
    record_property("clone_rounds", sum(rounds))
    long_run.count(commits=sum(rounds), reads_checked=100 * sum(rounds))


# ---- 33: fuzzing SQL read patterns ---------------------------------------------------------

QUERIES = {
    "point": ("SELECT id, k, s, hex(v) FROM t WHERE id = ?", 1),
    "range": ("SELECT id, k FROM t WHERE id BETWEEN ? AND ? ORDER BY id", 2),
    "index_range": ("SELECT count(*), sum(k) FROM t WHERE k BETWEEN ? AND ?", 2),
    "like": ("SELECT count(*) FROM t WHERE s LIKE ?", "like"),
    "group": ("SELECT k % ?, count(*), max(id) FROM t GROUP BY 1 ORDER BY 1", 1),
    "top": ("SELECT id, k FROM t ORDER BY k DESC, id LIMIT ?", 1),
    "join": ("SELECT count(*) FROM t a JOIN t b ON a.k = b.k WHERE a.id < ?", 1),
    "scan": ("SELECT hex(v) FROM t WHERE id % ? = 0 ORDER BY id", 1),
    "integrity": ("PRAGMA quick_check", 0),
}
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]


_SQL_STATS: dict[str, int] = {}


class ReplicaReads(RuleBasedStateMachine):
    """Writes to a synthetic primary, polls of the replica, and random reads,
    interleaved; every read equals the primary at the TXID the read saw."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="lsvfs-fuzz-")
        self.p: SyntheticPrimary | None = None
        self.conn: apsw.Connection | None = None
        self.rep: Any = None
        self.rnd = random.Random(0)

    @initialize(page_size=st.sampled_from([512, 1024, 4096]), cache=st.sampled_from(["0", "16KiB", "4MiB"]),
                readahead=st.sampled_from([1, 8, 64]), verify=st.sampled_from(["frames", "files"]),
                rows=st.integers(1, 300))
    def setup(self, page_size: int, cache: str, readahead: int, verify: str, rows: int) -> None:
        self.p = SyntheticPrimary(DirTarget(Path(self.dir) / "r"), page_size=page_size)
        self.p.commit("CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, s TEXT, v BLOB)")
        self.p.commit("CREATE INDEX t_k ON t(k)")
        self._insert(rows)
        self.conn = lsvfs.connect(self.p.url, poll_interval=0, cache_size=cache, readahead=readahead,
                                  verify=verify)
        self.rep = lsvfs.open_replicas()[self.p.url]

    def _insert(self, n: int) -> None:
        assert self.p is not None
        rnd = self.rnd
        self.p.commit("INSERT INTO t(k, s, v) VALUES (?, ?, ?)",
                      many=[(rnd.randrange(100), " ".join(rnd.choices(WORDS, k=5)),
                             rnd.randbytes(rnd.choice((0, 10, 100, 700)))) for _ in range(n)])

    @rule(kind=st.sampled_from(["insert", "insert", "update", "delete", "vacuum"]), n=st.integers(1, 200),
          mod=st.integers(2, 7), rem=st.integers(0, 6))
    def write(self, kind: str, n: int, mod: int, rem: int) -> None:
        """One transaction on the primary (one L0 file)."""
        assert self.p is not None
        if kind == "insert":
            self._insert(n)
        elif kind == "update":
            self.p.commit("UPDATE t SET k = k + 1, v = randomblob(length(v)) WHERE id % ? = ?", (mod, rem % mod))
        elif kind == "delete":
            self.p.commit("DELETE FROM t WHERE id % ? = ?", (mod, rem % mod))
        else:
            self.p.commit("VACUUM", transaction=False)

    @rule()
    def poll(self) -> None:
        self.rep.poll()

    @rule(name=st.sampled_from(sorted(QUERIES)), a=st.integers(-5, 400), b=st.integers(-5, 400),
          word=st.sampled_from(WORDS))
    def read(self, name: str, a: int, b: int, word: str) -> None:
        assert self.p is not None and self.conn is not None
        sql, arity = QUERIES[name]
        params: tuple[Any, ...] = ()
        if arity == "like":
            params = (f"%{word}%",)
        elif arity == 1:
            params = (max(a, 1) if name in ("group", "scan") else a,)
        elif arity == 2:
            params = (min(a, b), max(a, b))
        self.conn.execute("BEGIN")
        got = self.conn.execute(sql, params).fetchall()
        txid = int(self.conn.execute("PRAGMA litestream_txid").fetchall()[0][0], 16)
        self.conn.execute("COMMIT")
        assert got == self.p.rows(sql, txid, params), (name, params, txid)
        _SQL_STATS[name] = _SQL_STATS.get(name, 0) + 1

    @invariant()
    def never_ahead(self) -> None:
        if self.rep is not None and self.p is not None:
            assert self.rep.current().txid <= self.p.txid

    def teardown(self) -> None:
        if self.conn is not None:
            self.conn.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.mark.fuzz
def test_s33_sql_read_patterns_match_the_primary() -> None:
    """Scenario 33: hypothesis runs LSVFS_FUZZ_EXAMPLES random programs of
    writes (insert/update/delete/VACUUM), polls and reads (point, range,
    index range, LIKE, GROUP BY, ORDER BY ... LIMIT, self-join, scans,
    quick_check) with random page size, cache size, read-ahead and
    verification mode; every read equals the primary's at the read's TXID."""
    import hypothesis.stateful

    _SQL_STATS.clear()
    hypothesis.stateful.run_state_machine_as_test(ReplicaReads, settings=settings(
        max_examples=FUZZ_EXAMPLES, stateful_step_count=30, deadline=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    log.info("SQL fuzz: reads checked per pattern %s", _SQL_STATS)
    assert sum(_SQL_STATS.values()) >= FUZZ_EXAMPLES and len(_SQL_STATS) == len(QUERIES), _SQL_STATS


# ---- 33: fuzzing the LTX parser with mutated real files ------------------------------------

def _corpus_case(path: Path) -> tuple[int, int, int]:
    """(level, min, max) from a corpus name like p4096-L9-<min>-<max>.ltx."""
    _, lvl, lo, hi = path.stem.split("-")
    return int(lvl[1:]), int(lo, 16), int(hi, 16)


def _corpus_cases() -> list[tuple[Path, list[Path]]]:
    """(file to mutate, unmutated files that make a restore chain using it)."""
    out = []
    for f in CORPUS:
        ps = f.name.split("-")[0]
        level, lo, hi = _corpus_case(f)
        if lo == 1:
            out.append((f, []))
            continue
        before = [g for g in CORPUS if g.name.startswith(ps + "-") and _corpus_case(g)[1] == 1
                  and _corpus_case(g)[2] == lo - 1]
        if before:
            out.append((f, before[:1]))
    return out


CASES = _corpus_cases()


def _mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    b = bytearray(data)
    for kind, pos, val in ops:
        if not b:
            break
        i = pos % len(b)
        if kind == 0:
            b[i] ^= 1 << (val % 8)
        elif kind == 1:
            b[i] = val & 0xFF
        elif kind == 2:
            del b[i:]
        elif kind == 3:
            b[i:i] = bytes([val & 0xFF]) * (1 + val % 7)
        else:
            del b[i:i + 1 + val % 7]
    return bytes(b)


def _read_replica(url: str, verify: str) -> tuple[int, list[bytes]]:
    rep = Replica(url, resolve({"verify": verify, "read_retries": 0, "poll_interval": 0, "cache_size": 0}))
    try:
        rep.open()
        snap = rep.current()
        return snap.commit, [rep.read_page(snap, n, 4) for n in range(1, snap.commit + 1)]
    finally:
        rep.close()


_PARSER_STATS: dict[str, int] = {}


@pytest.mark.fuzz
@settings(max_examples=FUZZ_EXAMPLES * 2, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, len(CASES) - 1),
       ops=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1,
                    max_size=4),
       ranged=st.booleans())
def test_s33_ltx_parser_on_mutated_real_files(tmp_path_factory: pytest.TempPathFactory, which: int,
                                              ops: list[tuple[int, int, int]], ranged: bool) -> None:
    """Scenario 33 (parser): real Litestream 0.5.17 files (tests/corpus),
    mutated (bit flips, byte sets, truncation, insertion, deletion), are
    decoded whole and served through a Replica in both verification modes,
    with small files read whole or (ranged) by ranges as large ones are.
    Never a crash or a non-lsvfs exception; a whole-file decode and
    verify="files" give a typed error or exactly the original pages;
    verify="frames" on ranged reads gives a typed error or pages (payload
    damage is invisible there by the format; the rate is logged)."""
    src, companions = CASES[which]
    data = src.read_bytes()
    level, lo, hi = _corpus_case(src)
    original = ltx.decode(data, src.name)
    bad = _mutate(data, ops)
    try:
        got = ltx.decode(bad, "mutated")
        assert got.header == original.header and bytes(got.pages) == bytes(original.pages)
    except lsvfs.LsvfsError:
        pass
    target = DirTarget(tmp_path_factory.mktemp("mut"))
    good_dir = DirTarget(tmp_path_factory.mktemp("orig"))
    for c in companions:
        target.put(*_corpus_case(c), c.read_bytes())
        good_dir.put(*_corpus_case(c), c.read_bytes())
    target.put(level, lo, hi, bad)
    good_dir.put(level, lo, hi, data)
    with pytest.MonkeyPatch.context() as mp:  # per example: hypothesis reuses function fixtures
        if ranged:
            mp.setattr("lsvfs.replica.loader.TAIL_READ", 64)  # read small files by ranges, as large ones are
        want = _read_replica(good_dir.url, "frames")
        for verify in ("files", "frames"):
            try:
                out = _read_replica(target.url, verify)
            except lsvfs.LsvfsError:
                _PARSER_STATS[f"{verify}_error"] = _PARSER_STATS.get(f"{verify}_error", 0) + 1
                continue
            same = out == want
            key = f"{verify}{'_ranged' if ranged else ''}_{'same' if same else 'different'}"
            _PARSER_STATS[key] = _PARSER_STATS.get(key, 0) + 1
            if verify == "files" or not ranged:
                assert same, f"{verify}: mutated file served different pages without an error"
    log.info("parser fuzz outcomes so far: %s", _PARSER_STATS)


# ---- 34: chaos -------------------------------------------------------------------------------

AUDIT_EVERY = 1.0
"""Seconds between audits: a restore of the TXID lsvfs is at, against lsvfs pinned there."""
SEEK_BY_EXACT_NAME = {"gcs": {"monitor_interval": "1s", "sync_interval": "1s", "levels": ["500ms", "5s"]},
                      "azure": {"monitor_interval": "1s", "sync_interval": "1s", "levels": ["500ms", "5s"]}}
"""Litestream on GCS and Azure (their listings match only a file starting exactly at the TXID
asked, Litestream #1456) compacts one L0 file per L1 interval: at a 50 ms sync L0 piles up
without end (thousands of files after two minutes, every listing and restore slower). A new
TXID at most every second (Litestream's default intervals) with an L1 twice as often keeps L0
bounded there too. Runs shorter than PILE_UP_AFTER keep the 50 ms TXIDs (more TXIDs to check)."""
PILE_UP_AFTER = 30.0
CATCH_UP_STALL = 60.0
"""Seconds the catch-up after the chaos may go without progress: neither lsvfs's TXID nor the
newest TXID in the replica moving. Litestream may still be shipping a backlog of minutes then
(moto shares this process with the readers, and Litestream uploads one L0 file at a time), so a
budget fixed in seconds, or grown with the files, fails long runs; a guard on progress holds at
any length and still fails a reader that stops following a replica that moves."""
RESTORE_BUDGET = 120.0
"""A hang guard on one audit restore, not a speed check: with ledger.LITESTREAM the chain a
restore reads is bounded, so this holds at any run length."""


def _ledger_read(c: apsw.Connection) -> tuple[int, int, str]:
    """(TXID, n, digest) of one read transaction on a replica connection."""
    c.execute("BEGIN")
    try:
        n, digest = state_of(c)
        txid = int(c.execute("PRAGMA litestream_txid").fetchall()[0][0], 16)
        c.execute("COMMIT")
    except BaseException:
        if not c.getautocommit():
            with contextlib.suppress(apsw.Error):
                c.execute("ROLLBACK")
        raise
    return txid, n, digest


def _audit(p: ReplicatedPrimary, ledger: Ledger, c: apsw.Connection, txid: int, out: Path,
           tries: int) -> str:
    """Tie `txid` to its state without lsvfs: `litestream restore -txid` it, check the restored
    ledger is the primary's state at its n, then read lsvfs pinned at `txid` (up to `tries`
    times through the faults) and check it is that same state. Returns "ok" or "skipped:
    why" (Litestream compacted the TXID away, or every try hit a fault); raises on a wrong state."""
    try:
        res = p.restore(out, txid=txid, timeout=RESTORE_BUDGET)
    except ReplicationError as exc:
        return f"skipped: {exc}"
    if res.txid != txid:
        return f"skipped: restore gave TXID {res.txid:x} for {txid:x}"
    n, digest = restored_state(out)
    problem = ledger.check("litestream restore", txid, n, digest)
    assert problem is None, problem
    for _ in range(tries):
        try:
            c.execute(f"PRAGMA litestream_txid = '{txid:016x}'").fetchall()
            got = _ledger_read(c)
        except (apsw.IOError, apsw.CorruptError, apsw.SQLError):
            continue
        assert got == (txid, n, digest), f"lsvfs pinned at TXID {txid:x} read {got[:2]}, restore {(txid, n)}"
        return "ok"
    return "skipped: every try hit a fault"


@pytest.mark.chaos
@pytest.mark.parametrize(("storage", "verify", "kinds"), [
    ("file", "frames", ("timeout", "5xx", "partial")),
    ("s3", "files", ("timeout", "5xx", "partial", "corrupt")),
    ("gcs", "frames", ("timeout", "5xx", "partial")),
    ("azure", "files", ("timeout", "5xx", "partial", "corrupt")),
])
def test_s34_chaos(replicated_primary: Any, record_property: Any, long_run: LongRun, tmp_path: Path,
                   storage: str, verify: str, kinds: tuple[str, ...]) -> None:
    """Scenario 34: real Litestream replicates a ledger while the replica's
    storage suffers a seeded mix of latency, timeouts, 500s, short reads
    (and, with verify="files", flipped bits) and late listings, for
    LSVFS_CHAOS_SECONDS. 6 reader threads read every table in each
    transaction, and each must equal the primary's state at the transfer it
    shows (recorded per commit as the run goes), with one state per TXID
    and never an older state under a newer TXID; every second an audit
    restores the TXID lsvfs is at with `litestream restore` and reads lsvfs
    pinned there: the same state. Errors may reach SQL only as
    apsw.IOError/CorruptError; faults were really injected; when they stop,
    the replica catches up to the primary by itself, row for row, and a
    last audit ties that TXID to the primary's final state. Litestream runs
    with ledger.LITESTREAM and the ledger keeps its size, so nothing here
    costs more at minute ten than at second one."""
    slow = SEEK_BY_EXACT_NAME.get(storage, {}) if CHAOS_SECONDS >= PILE_UP_AFTER else {}
    p: ReplicatedPrimary = replicated_primary(storage, **{**LITESTREAM, **slow})
    ledger = Ledger(p)
    p.wait_replicated()
    long_run.baseline()  # the storage server and the primary are up: the end returns to this
    long_run.server_in_process = storage in ("s3", "gcs")  # moto and the GCS emulator keep what they serve
    mix = chaos(open_storage(p.replica_url), seed=34, kinds=kinds)
    mix.faulty.enabled = mix.late.enabled = False  # open cleanly; the chaos starts with the readers
    stop = threading.Event()
    errors: list[str] = []
    stats = {"ok": 0, "io": 0, "corrupt": 0, "audits": 0, "audits_skipped": 0}
    skips: dict[str, int] = {}  # why audits were skipped, the first 160 characters, and how often
    lock = threading.Lock()

    def reader() -> None:
        with closing(lsvfs.connect(p.replica_url)) as c:
            c.execute("PRAGMA cache_size=2")
            while not stop.is_set():
                try:
                    problem = ledger.check("reader", *_ledger_read(c))
                    if problem:
                        errors.append(problem)
                    with lock:
                        stats["ok"] += 1
                except (apsw.IOError, apsw.CorruptError) as exc:
                    with lock:
                        stats["io" if isinstance(exc, apsw.IOError) else "corrupt"] += 1
                except Exception as exc:  # noqa: BLE001 - asserted below
                    errors.append(repr(exc))
                    return

    def auditor() -> None:
        with closing(lsvfs.connect(p.replica_url)) as c:
            while not stop.wait(AUDIT_EVERY):
                try:
                    got = _audit(p, ledger, c, rep.current().txid, tmp_path / "audit.db", tries=5)
                except Exception as exc:  # noqa: BLE001 - asserted below
                    errors.append(f"audit: {exc}")
                    return
                with lock:
                    stats["audits" if got == "ok" else "audits_skipped"] += 1
                if got != "ok":
                    skips[got[:160]] = skips.get(got[:160], 0) + 1
                    log.info("chaos audit %s", got)

    with closing(lsvfs.connect(p.replica_url, storage=mix.storage, poll_interval=0.03, verify=verify,
                               cache_size=0, read_retries=2)) as conn:
        rep = lsvfs.open_replicas()[p.replica_url]
        mix.faulty.enabled = mix.late.enabled = True
        threads = [threading.Thread(target=reader) for _ in range(6)] + [threading.Thread(target=auditor)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + CHAOS_SECONDS
        while time.monotonic() < deadline and not errors:
            ledger.transfer()
            time.sleep(0.01)
        stop.set()
        for t in threads:
            t.join(timeout=RESTORE_BUDGET + 30)
        long_run.end_of_load()
        mix.stop()
        final = ledger.n

        files = sum(len(fs) for fs in p.replica_files().values())
        started = moved = looked = time.monotonic()
        progress = (-1, -1)  # (lsvfs's TXID, the newest listed) when last seen moving
        while (got := _ledger_read(conn))[1] != final:
            now = time.monotonic()
            if now - looked >= 1.0:
                looked = now
                if (seen := (got[0], p.newest_listed())) != progress:
                    progress, moved = seen, now
            assert now - moved < CATCH_UP_STALL and now - started < CHAOS_SECONDS + CATCH_UP_STALL, (
                f"replica did not catch up after the chaos: no progress for {now - moved:.0f}s (of "
                f"{now - started:.0f}s) at TXID {got[0]:x}, transfer {got[1]} of {final}, the newest TXID "
                f"listed {progress[1]:x}; {rep.stats()}")
            time.sleep(0.05)
        long_run.figures["catch_up_seconds"] = round(time.monotonic() - started, 1)
        txid, n, digest = got
        assert ledger.check("caught up", txid, n, digest) is None
        for table_ in ("acct", "meta", "log"):
            sql = f"SELECT * FROM {table_} ORDER BY rowid"
            assert conn.execute(sql).fetchall() == p.execute(sql), table_
        assert _audit(p, ledger, conn, txid, tmp_path / "final.db", tries=1) == "ok", "the last audit"
        stats["audits"] += 1
        summary = {**mix.summary(), **stats, "transfers": ledger.n, "txids_read": ledger.txids_seen(),
                   "replica_files": files,
                   "poll_errors": rep.poll_errors}
    for k, v in summary.items():
        record_property(k, v)
    long_run.count(commits=ledger.n, reads_checked=stats["ok"] + stats["audits"],
                   faults=sum(mix.faulty.injected.values()) + summary["late_listings"],
                   audits=stats["audits"], audits_skipped=stats["audits_skipped"], io_errors=stats["io"],
                   replica_files_at_end=files,
                   corrupt_errors=stats["corrupt"])
    long_run.figures["audit_skips"] = dict(sorted(skips.items(), key=lambda kv: -kv[1])[:3])
    log.info("chaos %s/%s: %s", storage, verify, summary)
    assert not errors, errors[:5]
    assert not ledger.order_problems(), ledger.order_problems()
    assert stats["ok"] > 0
    assert sum(mix.faulty.injected.values()) > 0 and len(mix.faulty.injected) >= 2, summary
