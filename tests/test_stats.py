"""Observability: Replica.stats() through lsvfs.stats(), PRAGMA litestream_stats
(both drivers) and `lsvfs stats`, each number checked against what happened."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from faults import FaultyStorage
from synthetic import DirTarget, SyntheticPrimary, open_replica

import drivers
import lsvfs
from drivers import DRIVERS
from lsvfs.storage import open_storage


def primary(tmp_path: Path) -> SyntheticPrimary:
    p = SyntheticPrimary(DirTarget(tmp_path / "r"), page_size=4096)
    p.commit("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    p.commit("INSERT INTO t(v) VALUES (randomblob(3000))", many=[()] * 200)  # a file well over 64 KiB
    return p


@pytest.mark.parametrize("driver", DRIVERS)
def test_pragma_litestream_stats_counts_what_happened(tmp_path: Path, driver: str) -> None:
    p = primary(tmp_path)
    a = drivers.connect(driver, p.url, poll_interval=0)
    b = drivers.connect(driver, p.url)
    try:
        rep = lsvfs.open_replicas()[p.url]
        drivers.script(a, "PRAGMA cache_size = 0")  # SQLite's own cache off: every page read is the VFS's
        s0 = json.loads(a.execute("PRAGMA litestream_stats").fetchall()[0][0])
        assert s0["txid"] == f"{p.txid:016x}" and s0["pages"] == len(p.image()) // 4096
        assert s0["connections"] == 2 and s0["snapshots_alive"] == 1
        assert s0["storage"]["list"]["requests"] >= 1
        assert s0["storage"]["ranged_read"]["requests"] >= 2, "header and index of the big file"
        assert a.execute("SELECT count(*), sum(length(v)) FROM t").fetchall() == [(200, 600_000)]
        s1 = json.loads(a.execute("PRAGMA litestream_stats").fetchall()[0][0])
        assert s1["cache"]["misses"] > s0["cache"]["misses"]
        assert s1["cache"]["bytes"] > s0["cache"]["bytes"]
        # A directory replica's misses are read by C itself: local reads, not Python's ranged reads.
        reads = s1["storage"]["local_read"]
        assert reads["requests"] > s0["storage"]["local_read"]["requests"] and reads["bytes"] > 300_000
        assert s1["storage"]["ranged_read"] == s0["storage"]["ranged_read"]
        a.execute("SELECT count(*), sum(length(v)) FROM t").fetchall()
        s2 = lsvfs.stats(p.url)
        assert s2["cache"]["hits"] > s1["cache"]["hits"] and s2["storage"]["local_read"] == reads
        p.commit("INSERT INTO t(v) VALUES (1)")
        assert rep.poll()
        s3 = lsvfs.stats(p.url)
        assert s3["txid"] == f"{p.txid:016x}" and s3["polls"] == s2["polls"] + 1 and s3["poll_errors"] == 0
        with pytest.raises(Exception, match="read-only"):
            a.execute("PRAGMA litestream_stats = 1").fetchall()
    finally:
        a.close()
        b.close()


def test_retries_and_poll_errors_are_counted(tmp_path: Path) -> None:
    p = primary(tmp_path)
    faulty = FaultyStorage(open_storage(p.url), rate=1.0, ops=("read", "list"))
    faulty.enabled = False
    with open_replica(p.url, faulty, poll_interval=0, read_retries=2, cache_size=0) as rep:
        with closing(lsvfs.connect(p.url)) as conn:
            faulty.enabled = True
            with pytest.raises(Exception):
                conn.execute("SELECT sum(length(v)) FROM t").fetchall()
        assert not rep.poll()
        s = rep.stats()
        assert s["retries"] >= 2 and s["poll_errors"] == 1


def test_stats_command_prints_json_and_watches(tmp_path: Path) -> None:
    p = primary(tmp_path)
    out = subprocess.run([sys.executable, "-m", "lsvfs", "stats", p.url], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    s = json.loads(out)
    assert s["txid"] == f"{p.txid:016x}" and s["connections"] == 0
    out = subprocess.run([sys.executable, "-m", "lsvfs", "stats", p.url, "--watch", "0.1", "--count", "3",
                          "-o", "poll_interval=50ms"], capture_output=True, text=True, timeout=60, check=True).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 3 and lines[2]["polls"] > lines[0]["polls"]
