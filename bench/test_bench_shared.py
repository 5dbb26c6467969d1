"""Issue 17: N reader processes on one S3 replica, with and without `shared_dir`.

    python -m pytest bench/test_bench_shared.py --benchmark-enable --benchmark-json /tmp/shared.json
    python bench/report_shared.py /tmp/shared.json

One S3 replica (moto, written by a real `litestream replicate`) behind a
LatencyProxy (`LSVFS_BENCH_SHARED_DELAY_MS`, 5 ms each way) that counts the
readers' requests on the wire (litestream writes to moto directly, so only the
readers are counted). `test_readers[N-shared]`, N = 1, 2, 4, 8 reader
processes (bench/shared_reader.py), all started at once, with `shared_dir`
(yes), with `shared_dir` and `hydration` (hydrated: the burst reads the
shared page file, once complete) or each on its own (no); each: open, full
scan, 60 s of polling (3 in
smoke mode) while the primary commits once a second, then, when
every reader has polled, the primary stops and every reader starts a burst of
point lookups at the same moment (the `go` file is the barrier).
Recorded: each process's storage requests and bytes (its own client's count;
a shared_dir follower has no client, so 0) and the requests on the wire (the
ground truth, all processes together), VmRSS after the burst with the page
table's bytes and the cache budget (the issue's RSS target is their sum plus
30 MiB), the aggregate lookups/s (every lookup over the span from the first
burst's start to the last one's end). Every reader must then reach the
primary's final TXID and read its rows; with `shared_dir` exactly one process
leads and no other ever made a request. The timed figure is the burst's span.

`test_local_readers[N]`: the baseline for the lookups/s ratio: N processes
of local SQLite (apsw, read-only) on a copy of the primary's database make the
same burst, so the table shows what this machine gives N processes at all.

`test_failover`: three shared readers; SIGKILL the leader (pid from
status.json), time until another process publishes a good poll, in poll
intervals; a new reader replaces the killed one each round.

Readers stay open until every one has reported (no leader hands over while
others measure). Smoke mode (no --benchmark-enable): a 4 MB database, 3 s of
polling, 100,000 lookups a process, one failover; LSVFS_BENCH_SHARED_JSON=PATH
keeps its figures for report_shared.py. Full: LSVFS_BENCH_SHARED_MB (16) MB,
60 s, 1,000,000 lookups a process, 5 failovers (~13 minutes on 2 cores).
LSVFS_BENCH_SHARED_POLL is the readers' poll_interval (0.5 s).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw
import pytest
from latency_proxy import LatencyProxy
from replicas import benchmarks_enabled
from request_count import RequestCounts
from test_bench_remote import bench_runs, worker_env

from lsvfs.shared.directory import read_status

TESTS = Path(__file__).resolve().parent.parent / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from replication import MotoS3, ReplicatedPrimary, s3_url  # noqa: E402

READER = Path(__file__).resolve().with_name("shared_reader.py")
READERS = (1, 2, 4, 8)
POLL = float(os.environ.get("LSVFS_BENCH_SHARED_POLL", "0.5"))
"""The readers' poll_interval, seconds."""
DELAY_S = float(os.environ.get("LSVFS_BENCH_SHARED_DELAY_MS", "5")) / 1000
COMMIT_EVERY = 1.0
MIB = 1 << 20
RSS_SLACK = 30 * MIB
"""The issue's RSS target: page table + cache budget + this, for each process after the first."""
TARGETS = {"requests_ratio": 1.2, "bytes_ratio": 1.2, "lookups_ratio": 1.7, "failover_intervals": 2.0}
FAILOVER_READERS = 3
READER_TIMEOUT = 300.0
RESULTS: list[dict[str, Any]] = []


def _sizes(config: pytest.Config) -> dict[str, Any]:
    """Database MB, polling seconds, lookups per burst, failover rounds: full or smoke."""
    if benchmarks_enabled(config):
        return {"mb": int(os.environ.get("LSVFS_BENCH_SHARED_MB", "16")), "poll_seconds": 60.0,
                "lookups": 1_000_000, "failover_rounds": 5}
    return {"mb": 4, "poll_seconds": 3.0, "lookups": 100_000, "failover_rounds": 1}


@dataclass
class Remote:
    """The primary on moto, the counting proxy in front, and the commits made meanwhile."""

    primary: ReplicatedPrimary
    proxy: LatencyProxy
    counts: RequestCounts
    url: str
    rows: int
    db_bytes: int
    env: dict[str, str]
    _stop: threading.Event = field(default_factory=threading.Event)
    _writer: threading.Thread | None = None

    def commits(self) -> None:
        """Start committing once a second, one row changed each time (v + 1 keeps `sum(v)` a witness)."""
        self._stop.clear()
        rng = random.Random(17)

        def write() -> None:
            while not self._stop.wait(COMMIT_EVERY):
                self.primary.execute("UPDATE t SET v = v + 1, payload = randomblob(1000) WHERE id = ?",
                                     (rng.randint(1, self.rows),))

        self._writer = threading.Thread(target=write, name="commits", daemon=True)
        self._writer.start()

    def halt(self) -> None:
        self._stop.set()
        if self._writer is not None:
            self._writer.join(10)
            assert not self._writer.is_alive(), "the commits thread did not stop"
            self._writer = None

    def stop_commits(self) -> dict[str, Any]:
        """Stop committing; the final TXID once replicated, and the rows every reader must then read."""
        self.halt()
        txid = self.primary.wait_replicated()
        count, total = self.primary.execute("SELECT count(*), sum(v) FROM t")[0]
        return {"txid": txid, "rows": [count, total]}


@pytest.fixture(scope="module", autouse=True)
def results_file() -> Iterator[None]:
    """With LSVFS_BENCH_SHARED_JSON=PATH, every benchmark's extra_info is written there too, as
    report_shared.py reads it: smoke mode writes no --benchmark-json."""
    yield
    path = os.environ.get("LSVFS_BENCH_SHARED_JSON")
    if path:
        Path(path).write_text(json.dumps({"benchmarks": [{"extra_info": info} for info in RESULTS]}, indent=1))


@pytest.fixture(scope="module")
def shared_remote(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[Remote]:
    mb = _sizes(pytestconfig)["mb"]
    moto = MotoS3().start()
    p = ReplicatedPrimary(tmp_path_factory.mktemp("shared-primary"), storage="s3", s3=moto)
    counts = RequestCounts()
    proxy = LatencyProxy(int(moto.endpoint.rsplit(":", 1)[1]), DELAY_S, tap=lambda: counts.parser().feed)
    try:
        rows = mb * 1000
        p.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER NOT NULL DEFAULT 0, payload BLOB)")
        p.executemany("INSERT INTO t(payload) VALUES (randomblob(1000))", [()] * rows)
        p.wait_replicated()
        assert p.bucket is not None
        url = s3_url(p.bucket, p.s3_path, f"http://127.0.0.1:{proxy.port}")
        yield Remote(p, proxy, counts, url, rows, os.path.getsize(p.db_path), worker_env())
    finally:
        proxy.close()
        p.close()
        moto.stop()


def _spawn(remote: Remote, cfg: dict[str, Any]) -> subprocess.Popen[str]:
    cfg = {"url": remote.url, "poll": POLL, **cfg}
    return subprocess.Popen([sys.executable, str(READER), json.dumps(cfg)], stdin=subprocess.PIPE, text=True,
                            env=remote.env)


def _wait_files(paths: list[Path], procs: list[subprocess.Popen[str]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        dead = [p.args for p in procs if p.poll() is not None]
        assert not dead, f"a reader exited early: {dead}"
        assert time.monotonic() < deadline, f"readers not there after {timeout:g}s: {paths}"
        time.sleep(0.05)


def _kill(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def _span(readers: list[dict[str, Any]]) -> float:
    """Seconds from the first burst's start to the last one's end: the aggregate's denominator."""
    return float(max(r["burst_end"] for r in readers) - min(r["burst_start"] for r in readers))


def _go(control: Path, procs: list[subprocess.Popen[str]], want: dict[str, Any]) -> list[dict[str, Any]]:
    """Start every reader's burst at once (the `go` file, renamed into place so a reader never
    parses it half-written) and return their records once all are written."""
    tmp = control / "go.tmp"
    tmp.write_text(json.dumps(want))
    os.replace(tmp, control / "go")
    done = [control / f"r{i}.json" for i in range(len(procs))]
    _wait_files(done, procs, READER_TIMEOUT)
    return [json.loads(path.read_text()) for path in done]


def _finish(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        proc.communicate(timeout=READER_TIMEOUT)  # closes its stdin: it closes its connection and exits
        assert proc.returncode == 0, f"reader exited {proc.returncode}"


def _run_readers(remote: Remote, n: int, shared_dir: str, hydration: bool, control: Path,
                 sizes: dict[str, Any]) -> dict[str, Any]:
    """One round: N readers through open, scan, polling and the burst; their records and the wire's count."""
    control.mkdir(parents=True)
    started = time.monotonic()
    before = remote.counts.snapshot()
    remote.commits()
    procs = [_spawn(remote, {"shared_dir": shared_dir, "hydration": hydration, "mode": "bench",
                             "control": str(control), "name": f"r{i}",
                             "poll_seconds": sizes["poll_seconds"], "lookups": sizes["lookups"],
                             "rows": remote.rows}) for i in range(n)]
    try:
        _wait_files([control / f"r{i}.polled" for i in range(n)], procs, READER_TIMEOUT)
        want = remote.stop_commits()
        out = _go(control, procs, want)
        wire = RequestCounts.diff(remote.counts.snapshot(), before)
        _finish(procs)
    finally:
        remote.halt()
        _kill(procs)
    return {"readers": out, "want": want, "wire": wire, "burst_s": _span(out), "wall_s": time.monotonic() - started}


@pytest.mark.parametrize("shared", ["no", "yes", "hydrated"])
@pytest.mark.parametrize("n", READERS)
def test_readers(benchmark: Any, shared_remote: Remote, n: int, shared: str, tmp_path: Path,
                 pytestconfig: pytest.Config) -> None:
    sizes = _sizes(pytestconfig)
    shared_dir = str(tmp_path / "shared") if shared != "no" else ""

    def one() -> tuple[float, dict[str, Any]]:
        run = _run_readers(shared_remote, n, shared_dir, shared == "hydrated", tmp_path / "control", sizes)
        return run["burst_s"], run

    run = bench_runs(benchmark, 1, one)[0]
    readers, want = run["readers"], run["want"]
    for r in readers:
        assert r["scan"][0] == shared_remote.rows, r
        assert r["txid"] >= want["txid"] and r["rows"] == want["rows"], (r["name"], r["txid"], r["rows"], want)
    if shared != "no":
        leaders = [r for r in readers if r["final"]["leader"]]
        assert len(leaders) == 1, [r["final"] for r in readers]
        for r in readers:
            if r is not leaders[0]:  # never led: no storage client, no request, in any phase
                assert all(r[phase]["remote_none"] for phase in ("scanned", "polled", "final")), r
    else:
        assert all(r["final"]["requests"] > 0 for r in readers)
    wire_requests = sum(v for k, v in run["wire"].items() if not k.endswith("_RANGE"))
    assert wire_requests >= sum(r["final"]["requests"] for r in readers) > 0
    lookups = sum(r["lookups"] for r in readers)
    benchmark.extra_info.update({
        "bench": "readers", "n": n, "mode": shared, "poll_interval_s": POLL,
        "poll_seconds": sizes["poll_seconds"], "lookups_per_process": sizes["lookups"],
        "db_bytes": shared_remote.db_bytes, "delay_ms": DELAY_S * 1000, "final_txid": want["txid"],
        "requests": [r["final"]["requests"] for r in readers], "bytes": [r["final"]["bytes"] for r in readers],
        "steady_requests": [r["polled"]["requests"] - r["scanned"]["requests"] for r in readers],
        "leader": [r["final"]["leader"] for r in readers], "open_scan_s": [r["open_scan_s"] for r in readers],
        "rss_bytes": [r["rss_bytes"] for r in readers], "page_table_bytes": [r["page_table_bytes"] for r in readers],
        "cache_max_bytes": [r["cache_max_bytes"] for r in readers], "rss_slack_bytes": RSS_SLACK,
        "wire": run["wire"], "wire_requests": wire_requests, "burst_s": run["burst_s"],
        "wall_s": run["wall_s"], "lookups_per_s": lookups / run["burst_s"], "targets": TARGETS,
    })
    RESULTS.append(benchmark.extra_info)


@pytest.fixture(scope="module")
def local_copy(shared_remote: Remote, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The primary's database as a local file in rollback mode (read-only readers need no -shm)."""
    path = tmp_path_factory.mktemp("local") / "copy.db"
    src, dst = apsw.Connection(str(shared_remote.primary.db_path)), apsw.Connection(str(path))
    with dst.backup("main", src, "main") as b:
        b.step()
    dst.execute("PRAGMA journal_mode=DELETE")
    dst.close()
    src.close()
    return path


@pytest.mark.parametrize("n", READERS)
def test_local_readers(benchmark: Any, shared_remote: Remote, local_copy: Path, n: int, tmp_path: Path,
                       pytestconfig: pytest.Config) -> None:
    sizes = _sizes(pytestconfig)

    def one() -> tuple[float, list[dict[str, Any]]]:
        control = tmp_path / "control"
        control.mkdir()
        procs = [_spawn(shared_remote, {"shared_dir": "", "mode": "local", "path": str(local_copy),
                                        "control": str(control), "name": f"r{i}", "lookups": sizes["lookups"],
                                        "rows": shared_remote.rows}) for i in range(n)]
        try:
            _wait_files([control / f"r{i}.polled" for i in range(n)], procs, READER_TIMEOUT)
            out = _go(control, procs, {})
            _finish(procs)
        finally:
            _kill(procs)
        return _span(out), out

    readers = bench_runs(benchmark, 1, one)[0]
    assert all(r["scan"][0] == shared_remote.rows for r in readers)
    span = _span(readers)
    benchmark.extra_info.update({"bench": "local", "n": n, "burst_s": span,
                                 "lookups_per_s": sum(r["lookups"] for r in readers) / span})
    RESULTS.append(benchmark.extra_info)


def _leader_pid(root: Path) -> int:
    status = read_status(root)
    assert status is not None, f"no status.json in {root}"
    return int(status["pid"])


def test_failover(benchmark: Any, shared_remote: Remote, tmp_path: Path, pytestconfig: pytest.Config) -> None:
    """SIGKILL the leader of three shared readers: seconds until another publishes a good poll."""
    rounds = _sizes(pytestconfig)["failover_rounds"]
    root, control = tmp_path / "shared", tmp_path / "control"
    control.mkdir()
    procs: dict[int, subprocess.Popen[str]] = {}
    started = 0

    def start() -> None:
        nonlocal started
        name = f"f{started}"
        started += 1
        proc = _spawn(shared_remote, {"shared_dir": str(root), "mode": "idle", "control": str(control),
                                      "name": name})
        procs[proc.pid] = proc
        _wait_files([control / f"{name}.json"], [proc], READER_TIMEOUT)

    def one() -> tuple[float, float]:
        for _ in range(FAILOVER_READERS - len(procs)):
            start()
        leader = _leader_pid(root)
        assert leader in procs, (leader, list(procs))
        os.kill(leader, signal.SIGKILL)
        killed = time.time()
        procs.pop(leader).wait(timeout=10)
        deadline = time.monotonic() + 30
        while True:
            status = read_status(root) or {}
            if status.get("pid") != leader and float(status.get("last_poll_ok", 0)) > killed:
                assert status["pid"] in procs, (status, list(procs))
                took = float(status["last_poll_ok"]) - killed
                return took, took / POLL
            assert time.monotonic() < deadline, f"no process took over within 30 s of killing {leader}"
            time.sleep(0.01)

    shared_remote.commits()
    try:
        intervals = bench_runs(benchmark, rounds, one)
    finally:
        shared_remote.halt()
        _kill(list(procs.values()))
    benchmark.extra_info.update({"bench": "failover", "poll_interval_s": POLL, "failover_intervals": intervals,
                                 "failover_s": [i * POLL for i in intervals], "targets": TARGETS})
    RESULTS.append(benchmark.extra_info)
