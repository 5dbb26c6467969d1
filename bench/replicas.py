"""Benchmark replicas: a primary written through the real `litestream replicate`.

`build_replica()` makes a WAL-mode primary, starts `litestream replicate`
(sync every 100 ms, L1 compaction, frequent L9 snapshots), bulk-inserts rows
of 1 KiB random blobs plus an indexed text column in big transactions, writes
a marker row, waits until a new L9 snapshot file appears (so L9 exists and
L0 files follow it), stops Litestream (which syncs on shutdown) and restores
with `litestream restore` to prove the replica holds the marker. That restored file doubles as the "plain local
SQLite" copy the benchmarks compare against.

A built replica is cached in its directory (a `replica.json` written last), so
`LSVFS_BENCH_DIR=/some/dir` reuses it across runs; by default each run builds
into a fresh temp directory that is removed at the end of the session.

Fixtures here are imported by the benchmark modules (`from replicas import ...`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import apsw
import pytest

from lsvfs.demo import find_litestream as litestream_binary

log = logging.getLogger("lsvfs.bench.replicas")

LAYOUT_VERSION = 2
"""Bump when the schema or contents change, so cached replicas are rebuilt."""
ROW_BYTES = 1024
ROW_FOOTPRINT = 1400
"""Database bytes per row: 3 rows of ~1.1 KB fit a 4 KiB page, plus the name index."""
ROWS_PER_TXN = 8000
"""~9 MB per transaction: few, big transactions keep the build fast."""
PAGE_SIZE = 4096

CONFIG = """\
logging:
  level: INFO
shutdown-sync-timeout: 10s
snapshot:
  interval: 2s
levels:
  - interval: 1s
dbs:
  - path: {db}
    monitor-interval: 50ms
    replica:
      url: {url}
      sync-interval: 100ms
"""


def name_of(row_id: int) -> str:
    """The indexed text value of row `row_id` (deterministic, scattered order)."""
    return f"name-{(row_id * 2654435761) % (1 << 32):010d}"


@dataclass(frozen=True)
class BenchReplica:
    """A replicated database ready for benchmarks (Litestream is stopped: it is static)."""

    label: str
    replica_dir: str
    local_path: str
    rows: int
    mb: int
    marker: str
    build_seconds: float

    @property
    def url(self) -> str:
        """The canonical replica URL (`file:///...`)."""
        return Path(self.replica_dir).as_uri()

    def linked_copy(self, dest: Path) -> str:
        """A hard-linked copy of the replica at `dest` (instant: LTX files are
        immutable); returns its URL. A different directory is a different
        replica to lsvfs, so a connection to it starts from a fresh Replica
        whatever else is open on the original."""
        if not (dest / "ltx").is_dir():
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(self.replica_dir, dest, copy_function=os.link)
        return dest.absolute().as_uri()



def litestream_env() -> dict[str, str]:
    """os.environ without AWS_*/LITESTREAM_* (nothing leaks into the subprocess)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LITESTREAM_"))}


def litestream_restore(url: str, out: str | os.PathLike[str], timeout: float = 300.0) -> None:
    """`litestream restore -o out url` (out must not exist)."""
    proc = subprocess.run([litestream_binary(), "restore", "-o", os.fspath(out), url],
                          env=litestream_env(), capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"litestream restore failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")


def _l9_files(replica_dir: Path) -> set[str]:
    d = replica_dir / "ltx" / "9"
    try:
        return {n for n in os.listdir(d) if n.endswith(".ltx")}
    except FileNotFoundError:
        return set()


def _stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _log_tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return ""


def build_replica(workdir: Path, mb: int, label: str, seed: int = 1, timeout: float = 120.0) -> BenchReplica:
    """Build (or reuse from `workdir`) a ~`mb` MB replica; see the module docstring."""
    workdir = workdir.absolute()
    meta_path = workdir / "replica.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.pop("layout", None) == LAYOUT_VERSION and meta.get("mb") == mb:
            log.info("reusing %s replica in %s", label, workdir)
            return BenchReplica(**meta)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    t0 = time.monotonic()
    db = workdir / "primary.db"
    replica_dir = workdir / "replica"
    local = workdir / "local.db"
    logfile = workdir / "litestream.log"
    (workdir / "litestream.yml").write_text(CONFIG.format(db=json.dumps(str(db)),
                                                          url=json.dumps(replica_dir.as_uri())))
    conn = apsw.Connection(str(db))
    conn.set_busy_timeout(30_000)  # litestream takes brief locks to checkpoint
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}; PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, grp INTEGER NOT NULL, "
                 "payload BLOB NOT NULL); CREATE INDEX items_name ON items(name);"
                 "CREATE TABLE bench_meta(k TEXT PRIMARY KEY, v TEXT)")
    rows = max(1000, mb * 1_000_000 // ROW_FOOTPRINT)
    marker = uuid.uuid4().hex
    with open(logfile, "ab") as logfh:
        proc = subprocess.Popen([litestream_binary(), "replicate", "-config", str(workdir / "litestream.yml")],
                                stdin=subprocess.DEVNULL, stdout=logfh, stderr=subprocess.STDOUT,
                                env=litestream_env(), cwd=workdir)
    try:
        rnd = random.Random(seed)
        done = 0
        while done < rows:
            n = min(ROWS_PER_TXN, rows - done)
            with conn:
                conn.executemany("INSERT INTO items(id, name, grp, payload) VALUES (?, ?, ?, ?)",
                                 [(i, name_of(i), i % 97, rnd.randbytes(ROW_BYTES))
                                  for i in range(done + 1, done + n + 1)])
            done += n
            if proc.poll() is not None:
                raise RuntimeError(f"litestream exited ({proc.returncode}):\n{_log_tail(logfile)}")
        before = _l9_files(replica_dir)
        with conn:
            conn.execute("INSERT INTO bench_meta VALUES ('marker', ?)", (marker,))
        log.info("%s: wrote %d rows (%.1f MB) in %.1fs; waiting for an L9 snapshot", label, rows,
                 db.stat().st_size / 1e6, time.monotonic() - t0)
        deadline = time.monotonic() + timeout
        while not (_l9_files(replica_dir) - before):
            if proc.poll() is not None:
                raise RuntimeError(f"litestream exited ({proc.returncode}):\n{_log_tail(logfile)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no L9 snapshot after {timeout}s:\n{_log_tail(logfile)}")
            time.sleep(0.1)
        time.sleep(0.3)  # one more sync interval past the snapshot
    finally:
        _stop(proc)  # litestream syncs on shutdown
        conn.close()
    litestream_restore(replica_dir.as_uri(), local)
    check = apsw.Connection(str(local))
    try:
        got = check.execute("SELECT v FROM bench_meta WHERE k = 'marker'").fetchall()
        count = check.execute("SELECT count(*) FROM items").fetchone()[0]  # type: ignore[index]
        # Plain rollback-journal file, like the database lsvfs presents: no -wal/-shm.
        check.execute("PRAGMA journal_mode=DELETE").fetchall()
    finally:
        check.close()
    if got != [(marker,)] or count != rows:
        raise RuntimeError(f"replica incomplete: marker {got}, {count}/{rows} rows:\n{_log_tail(logfile)}")
    rep = BenchReplica(label, str(replica_dir), str(local), rows, mb, marker, time.monotonic() - t0)
    levels = {p.name: len(list(p.iterdir())) for p in sorted((replica_dir / "ltx").iterdir())}
    log.info("%s replica ready in %.1fs: %d rows, %.1f MB local, files per level %s", label,
             rep.build_seconds, rows, local.stat().st_size / 1e6, levels)
    meta_path.write_text(json.dumps({**asdict(rep), "layout": LAYOUT_VERSION}))
    return rep


# ---------------------------------------------------------------------------
# fixtures


def benchmarks_enabled(config: pytest.Config) -> bool:
    """True under --benchmark-enable; False in smoke mode (each benchmark runs once)."""
    session = getattr(config, "_benchmarksession", None)
    return bool(session is not None and not session.disabled)


def replica_mb(config: pytest.Config, which: str) -> int:
    """Size of the big/small replica: LSVFS_BENCH_MB / LSVFS_BENCH_SMALL_MB, else
    100 / 5 when benchmarking and 8 / 2 in smoke mode."""
    env = "LSVFS_BENCH_MB" if which == "big" else "LSVFS_BENCH_SMALL_MB"
    if os.environ.get(env):
        return int(os.environ[env])
    enabled = benchmarks_enabled(config)
    return (100 if enabled else 8) if which == "big" else (5 if enabled else 2)


@pytest.fixture(scope="session")
def bench_dir() -> Iterator[Path]:
    """LSVFS_BENCH_DIR (kept, replicas reused) or a temp dir removed at the end."""
    keep = os.environ.get("LSVFS_BENCH_DIR")
    if keep:
        path = Path(keep).absolute()
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="lsvfs-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def big_replica(bench_dir: Path, pytestconfig: pytest.Config) -> BenchReplica:
    """The ~100 MB replica (LSVFS_BENCH_MB)."""
    mb = replica_mb(pytestconfig, "big")
    return build_replica(bench_dir / f"big-{mb}mb", mb, "big")


@pytest.fixture(scope="session")
def small_replica(bench_dir: Path, pytestconfig: pytest.Config) -> BenchReplica:
    """The ~5 MB replica (LSVFS_BENCH_SMALL_MB) for quick query benchmarks."""
    mb = replica_mb(pytestconfig, "small")
    return build_replica(bench_dir / f"small-{mb}mb", mb, "small", seed=2)


# ---------------------------------------------------------------------------
# a replica of many L0 files

L0_CONFIG = """\
logging:
  level: INFO
shutdown-sync-timeout: 10s
snapshot:
  interval: 24h
l0-retention: 24h
levels:
  - interval: 24h
dbs:
  - path: {db}
    monitor-interval: 10ms
    replica:
      url: {url}
      sync-interval: 10ms
"""
"""Compaction and snapshots effectively off (Litestream still compacts and
snapshots once, at start-up), L0 files kept, a sync every 10 ms."""
L0_ROWS = 2000
"""Rows of the base table (~3 MB) that the many small transactions then update."""


def l0_after_snapshot(replica_dir: Path) -> int:
    """L0 files past the highest TXID any other level covers: the files a reader must apply."""
    root = replica_dir / "ltx"
    higher = [int(f.name.split("-")[1][:16], 16) for d in root.glob("[1-9]") for f in d.glob("*.ltx")]
    top = max(higher, default=0)
    return sum(1 for f in (root / "0").glob("*.ltx") if int(f.name[:16], 16) > top)


def build_l0_replica(workdir: Path, files: int, label: str = "l0", seed: int = 3,
                     timeout: float = 300.0) -> BenchReplica:
    """Build (or reuse) a replica whose newest snapshot is followed by `files` L0 files.

    Written by the real `litestream replicate` (L0_CONFIG): a ~3 MB base table,
    then one small transaction at a time (a `ledger` row and one `items` row
    updated), each waited on until Litestream has uploaded it as its own L0
    file, until `files` L0 files follow the start-up snapshot. `rows` is the
    items count; `marker` is the ledger aggregate (count, max seq, sum v) as
    JSON, the check that every L0 file was applied.
    """
    workdir = workdir.absolute()
    meta_path = workdir / "replica.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.pop("layout", None) == LAYOUT_VERSION and meta.pop("l0_files", None) == files:
            log.info("reusing %s replica in %s", label, workdir)
            return BenchReplica(**meta)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    t0 = time.monotonic()
    db, replica_dir, local = workdir / "primary.db", workdir / "replica", workdir / "local.db"
    logfile = workdir / "litestream.log"
    (workdir / "litestream.yml").write_text(L0_CONFIG.format(db=json.dumps(str(db)),
                                                             url=json.dumps(replica_dir.as_uri())))
    conn = apsw.Connection(str(db))
    conn.set_busy_timeout(30_000)
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}; PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, grp INTEGER NOT NULL, "
                 "payload BLOB NOT NULL); CREATE INDEX items_name ON items(name);"
                 "CREATE TABLE ledger(seq INTEGER PRIMARY KEY, item INTEGER NOT NULL, v INTEGER NOT NULL)")
    rnd = random.Random(seed)
    with conn:
        conn.executemany("INSERT INTO items(id, name, grp, payload) VALUES (?, ?, ?, ?)",
                         [(i, name_of(i), i % 97, rnd.randbytes(ROW_BYTES)) for i in range(1, L0_ROWS + 1)])
    l0 = replica_dir / "ltx" / "0"
    with open(logfile, "ab") as logfh:
        proc = subprocess.Popen([litestream_binary(), "replicate", "-config", str(workdir / "litestream.yml")],
                                stdin=subprocess.DEVNULL, stdout=logfh, stderr=subprocess.STDOUT,
                                env=litestream_env(), cwd=workdir)
    deadline = time.monotonic() + timeout

    def wait_for(cond: Callable[[], bool], what: str) -> None:
        while not cond():
            if proc.poll() is not None:
                raise RuntimeError(f"litestream exited ({proc.returncode}):\n{_log_tail(logfile)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} after {timeout}s:\n{_log_tail(logfile)}")
            time.sleep(0.005)

    try:
        wait_for(lambda: bool(_l9_files(replica_dir)), "no start-up snapshot")
        seq = 0
        while l0_after_snapshot(replica_dir) < files:
            before = len(os.listdir(l0))
            seq += 1
            with conn:
                conn.execute("INSERT INTO ledger VALUES (?, ?, ?)",
                             (seq, rnd.randint(1, L0_ROWS), rnd.randint(0, 1 << 40)))
                conn.execute("UPDATE items SET grp = grp + 1, payload = ? WHERE id = "
                             "(SELECT item FROM ledger WHERE seq = ?)", (rnd.randbytes(ROW_BYTES), seq))
            wait_for(lambda: len(os.listdir(l0)) > before, "no L0 file for a transaction")  # noqa: B023
    finally:
        _stop(proc)
        conn.close()
    litestream_restore(replica_dir.as_uri(), local)
    check = apsw.Connection(str(local))
    try:
        ledger = check.execute("SELECT count(*), max(seq), sum(v) FROM ledger").fetchall()
        count = check.execute("SELECT count(*) FROM items").fetchone()[0]  # type: ignore[index]
        check.execute("PRAGMA journal_mode=DELETE").fetchall()
    finally:
        check.close()
    if ledger[0][0] != seq or count != L0_ROWS:
        raise RuntimeError(f"replica incomplete: ledger {ledger} for {seq} transactions, {count} rows")
    mb = max(1, round(local.stat().st_size / 1e6))
    rep = BenchReplica(label, str(replica_dir), str(local), L0_ROWS, mb, json.dumps(ledger[0]),
                       time.monotonic() - t0)
    log.info("%s replica ready in %.1fs: %d transactions, %d L0 files after the snapshot", label,
             rep.build_seconds, seq, l0_after_snapshot(replica_dir))
    meta_path.write_text(json.dumps({**asdict(rep), "layout": LAYOUT_VERSION, "l0_files": files}))
    return rep


@pytest.fixture(scope="session")
def l0_replica(bench_dir: Path, pytestconfig: pytest.Config) -> BenchReplica:
    """A replica whose snapshot is followed by 500 L0 files (50 in smoke mode; LSVFS_BENCH_L0_FILES)."""
    files = int(os.environ.get("LSVFS_BENCH_L0_FILES") or (500 if benchmarks_enabled(pytestconfig) else 50))
    return build_l0_replica(bench_dir / f"l0-{files}", files)
