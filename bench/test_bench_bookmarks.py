"""Issue 20: commit-to-visible latency on S3, with a read-your-writes bookmark and without.

    python -m pytest bench/test_bench_bookmarks.py --benchmark-enable --benchmark-json /tmp/bm.json

A real `litestream replicate` (its control socket on, its default 1 s sync
interval) writes moto S3; the reader reaches moto through a LatencyProxy
adding `LSVFS_BENCH_RTT_MS` (20) per round trip, polling every second (the
default). Each of COMMITS commits inserts a row on the primary, then:

- `bookmark`: `lsvfs.bookmark()` (Litestream syncs and waits for the upload),
  `PRAGMA litestream_min_txid` with it, and the row read;
- `polls`: the row read every 5 ms until it is there, as a reader without
  bookmarks (and the Go VFS) must wait for Litestream's sync and its own poll.

Latency runs from the commit to the row read; extra_info holds p50 and p99,
the bookmark's own share, and the replica's LISTs per commit.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from latency_proxy import LatencyProxy
from replicas import benchmarks_enabled
from test_bench_remote import RTT_S

import lsvfs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import servers  # noqa: E402
from replication import (  # noqa: E402
    TEST_ACCESS_KEY_ID,
    TEST_REGION,
    TEST_SECRET_ACCESS_KEY,
    MotoS3,
    ReplicatedPrimary,
    s3_url,
)

POLL = 1.0


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ReplicatedPrimary, str]]:
    """moto in a process of its own (not the reader's GIL), Litestream writing to it
    directly, the reader through the proxy."""
    saved = dict(os.environ)
    os.environ.update(AWS_ACCESS_KEY_ID=TEST_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY=TEST_SECRET_ACCESS_KEY,
                      AWS_DEFAULT_REGION=TEST_REGION, AWS_EC2_METADATA_DISABLED="true")
    scratch = tmp_path_factory.mktemp("bookmarks")
    server = servers.ServerProcess("s3", scratch / "moto")
    moto = MotoS3()
    moto.endpoint = server.facts["endpoint"]
    p = ReplicatedPrimary(scratch / "primary", storage="s3", s3=moto, sync_interval="1s", control_socket=True)
    proxy = LatencyProxy(server.port, RTT_S / 2)
    try:
        p.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        p.wait_replicated()
        assert p.bucket is not None
        yield p, s3_url(p.bucket, p.s3_path, f"http://127.0.0.1:{proxy.port}")
    finally:
        proxy.close()
        p.close()
        server.stop()
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.parametrize("mode", ["bookmark", "polls"])
def test_commit_to_visible(benchmark: Any, request: pytest.FixtureRequest, setup: tuple[ReplicatedPrimary, str],
                           mode: str) -> None:
    p, url = setup
    commits = 200 if benchmarks_enabled(request.config) else 5
    conn = lsvfs.connect(url, poll_interval=POLL, wait_timeout=10)
    rep = lsvfs.open_replicas()[url]
    latencies: list[float] = []
    marks: list[float] = []
    floors: list[float] = []

    def run() -> None:
        first = int(p.execute("SELECT coalesce(max(id), 0) FROM t")[0][0]) + 1
        for row in range(first, first + commits):
            p.execute("INSERT INTO t(id, v) VALUES (?, 'x')", (row,))
            start = time.monotonic()
            if mode == "bookmark":
                mark = lsvfs.bookmark(p.db_path, socket=p.socket_path)
                marks.append(time.monotonic() - start)
                conn.execute(f"PRAGMA litestream_min_txid = '{mark}'").fetchall()
                floors.append(time.monotonic() - start)
                assert conn.execute("SELECT max(id) FROM t").fetchall() == [(row,)]
            else:
                while conn.execute("SELECT max(id) FROM t").fetchall() != [(row,)]:
                    time.sleep(0.005)
            latencies.append(time.monotonic() - start)

    before = rep.stats()["storage"]
    try:
        benchmark.pedantic(run, rounds=1, iterations=1)
        after = rep.stats()["storage"]
        lists = after["list"]["requests"] - before["list"]["requests"]
        reads = sum(after[k]["requests"] - before[k]["requests"] for k in ("ranged_read", "whole_read"))
    finally:
        conn.close()
    benchmark.extra_info.update({
        "mode": mode, "commits": commits, "poll_interval_s": POLL, "rtt_s": RTT_S,
        "p50_s": round(statistics.median(latencies), 4), "p99_s": round(_quantile(latencies, 0.99), 4),
        "max_s": round(max(latencies), 4),
        "bookmark_p50_s": round(statistics.median(marks), 4) if marks else None,
        "floor_set_p50_s": round(statistics.median(floors), 4) if floors else None,
        "lists_per_commit": round(lists / commits, 2), "reads_per_commit": round(reads / commits, 2),
    })
    print(f"\n{mode}: p50 {statistics.median(latencies) * 1000:.0f} ms, p99 {_quantile(latencies, 0.99) * 1000:.0f} ms"
          + (f" (bookmark itself p50 {statistics.median(marks) * 1000:.0f} ms)" if marks else "")
          + (f" (floor reached p50 {statistics.median(floors) * 1000:.0f} ms)" if floors else "")
          + f", {lists / commits:.2f} LISTs and {reads / commits:.2f} reads per commit")
