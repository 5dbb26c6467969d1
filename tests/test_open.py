"""Opening a replica on remote storage (issue 8, point 4): one LIST stage and
one read stage, whatever the chain's length.

Real moto S3 behind `GatedStorage` (tests/wrappers.py), which records every
request and lets reads through only once enough are in flight together, so a
test sees whether they were sent together without timing anything.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import pytest
from scenario_support import rows
from synthetic import DirTarget, SyntheticPrimary, file_infos, make_target
from wrappers import GatedStorage

import lsvfs
from lsvfs import ltx, replica
from lsvfs.replica import loader
from lsvfs.futures import Task
from lsvfs.options import resolve
from lsvfs.storage import open_storage
from lsvfs.storage.base import LEVELS, PARALLEL_REQUESTS
from lsvfs.storage.file import FileStorage

BIG_ROWS = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {}) " \
           "INSERT INTO t(v) SELECT randomblob(1000) FROM n"


def _big_snapshot(p: SyntheticPrimary, n_rows: int) -> None:
    """One commit, so one file from TXID 1 (a snapshot): random rows don't compress."""
    p.commit("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); " + BIG_ROWS.format(n_rows))


def test_one_snapshot_opens_in_one_stage_and_its_head_serves_the_schema(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A snapshot bigger than the whole-read threshold: its head and its index
    tail are read together, and the head (page 1, the schema) is cached, so the
    first query makes no request at all: open = LIST stage + one read stage."""
    p = SyntheticPrimary(make_target("s3", tmp_path, request))
    _big_snapshot(p, 200)
    (f,) = file_infos(p.target)
    assert f.size > loader.HEAD_READ + loader.TAIL_READ
    st = GatedStorage(open_storage(p.url), width=2)
    with closing(lsvfs.connect(p.url, storage=st, poll_interval=0, prefetch="off")) as c:
        opened = list(st.requests)
        assert rows(c, "SELECT name FROM sqlite_master") == [("t",)]
        assert st.requests == opened, "the first query needed no request"
        assert rows(c, "SELECT count(*) FROM t") == [(200,)]
    assert Counter(kind for kind, *_ in opened) == {"list": len(LEVELS), "read": 2}
    reads = sorted((offset, length) for kind, _, offset, length in opened if kind == "read")
    assert reads == [(0, loader.HEAD_READ), (f.size - loader.TAIL_READ, loader.TAIL_READ)]
    assert st.peak == 2, "head and tail were in flight together"


def test_a_chain_of_files_loads_in_one_stage_with_real_parallelism(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A big snapshot, 39 small L0 files and a big one among them: exactly one
    LIST per level, two ranged reads per big file, one whole read per small
    file, nothing read twice; those 43 reads are in flight together (far more
    than the 16 a smaller pool allowed). Only the snapshot's head is wide; a
    big file in the middle of the chain (which has the newest page 1: it grew
    the database) is read from its header and first frame, so connecting and
    the first query still need no further request."""
    p = SyntheticPrimary(make_target("s3", tmp_path, request))
    _big_snapshot(p, 100)
    for i in range(40):
        if i == 20:
            p.commit(BIG_ROWS.format(80))
        else:
            p.commit("INSERT INTO t(v) VALUES (?)", (f"row {i}",))
    files = file_infos(p.target)
    big = sorted(f for f in files if f.size > loader.TAIL_READ)
    assert len(files) == 41 and [f.min_txid for f in big] == [1, 22]
    st = GatedStorage(open_storage(p.url), width=32)
    with closing(lsvfs.connect(p.url, storage=st, poll_interval=0, prefetch="off")) as c:
        opened = list(st.requests)
        assert rows(c, "SELECT name FROM sqlite_master") == [("t",)]
        assert st.requests == opened
        assert rows(c, "SELECT count(*), sum(typeof(v) = 'text') FROM t") == [(219, 39)]
    assert Counter(kind for kind, *_ in opened) == {"list": len(LEVELS), "read": 4, "read_all": 39}
    heads = {f.min_txid: length for kind, f, offset, length in opened if kind == "read" and offset == 0}
    assert heads[1] == min(loader.HEAD_READ, big[0].size - loader.TAIL_READ)
    assert ltx.HEADER_SIZE + 4096 < heads[22] < ltx.HEADER_SIZE + 4096 + 64  # one 4 KiB page's frame
    assert sorted(f for kind, f, *_ in opened if kind == "read") == sorted(big * 2)
    assert sorted(f for kind, f, *_ in opened if kind == "read_all") == sorted(set(files) - set(big))
    assert st.peak >= 32


def test_reads_started_ahead_of_the_decoder_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long chain's reads run at most LOAD_AHEAD files ahead of the one being
    decoded, so its bytes are never all held at once; the result is the same."""
    p = SyntheticPrimary(DirTarget(tmp_path / "r"))
    p.commit("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(40):
        p.commit("INSERT INTO t(v) VALUES (?)", (f"row {i}",))
    monkeypatch.setattr(loader, "LOAD_AHEAD", 3)
    st = GatedStorage(FileStorage(p.target.root), width=4, patience=0.05)  # never 4: the gate just times out
    with closing(lsvfs.connect(p.url, storage=st, poll_interval=0, prefetch="off")) as c:
        assert rows(c, "SELECT count(*) FROM t") == [(40,)]
    assert st.kinds()["read_all"] == 41
    assert 1 < st.peak <= 3


def test_waiting_on_a_task_of_a_saturated_pool_does_not_deadlock() -> None:
    """A task that waits on another task of its own (full) pool runs it itself:
    index loads can never deadlock the replica's pool however busy it is."""
    pool = ThreadPoolExecutor(max_workers=1)
    started, finished = threading.Event(), threading.Event()
    result: list[int] = []

    def outer() -> None:
        started.set()
        result.append(Task(pool, lambda: 41).result() + 1)  # the only worker is this one
        finished.set()

    try:
        Task(pool, outer)
        assert started.wait(10)
        assert finished.wait(10), "the inner task never ran: deadlock"
        assert result == [42]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def test_remote_parallelism_is_one_number() -> None:
    """The replica's pool, S3's and the HTTP backends' connection pools are all
    as wide as PARALLEL_REQUESTS, and wider than a chain's old 16."""
    from lsvfs.storage import http, s3

    assert PARALLEL_REQUESTS >= 64
    assert s3.MAX_POOL_CONNECTIONS == http.POOL_SIZE == PARALLEL_REQUESTS
    rep = replica.Replica("file:///nowhere", resolve({}), FileStorage("/nowhere"))
    try:
        assert rep._pool._max_workers == PARALLEL_REQUESTS
    finally:
        rep.close()
